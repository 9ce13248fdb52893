import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// What the aarch64 device tree describes: the machine's size and its devices, checked against
/// `AArch64Layout`. Build one from a `MachineConfiguration` (the initrd's size is read from its
/// file) or from the values directly; `deviceTree()` gives the blob.
package struct AArch64MachineDescription: Equatable, Sendable {
    /// Guest RAM in bytes, from `AArch64Layout.ramStart`.
    package let memorySize: UInt64
    /// Number of vCPUs, with the MPIDRs `AArch64DeviceTree.mpidr(vcpu:)` gives.
    package let vcpuCount: Int
    /// The kernel command line (`/chosen/bootargs`).
    package let commandLine: String
    /// The initrd's size in bytes, or nil for none. It goes at `initrdAddress`.
    package let initrdSize: UInt64?
    /// Virtio-mmio devices, in slots 0 ..< this (`AArch64Layout.virtioMMIOSlot`).
    package let virtioDeviceCount: Int

    /// The command line when none is given: the x86 default without its i8042 and keyboard-
    /// reset options (`reboot=k`: an aarch64 guest resets through PSCI). The 16550 is `ttyS0`.
    package static let defaultCommandLine = "console=ttyS0 panic=1"
    /// arm64's COMMAND_LINE_SIZE is 2048 including the terminating NUL.
    package static let commandLineLimit = 2047

    /// Checks the values against `AArch64Layout` and the arm64 boot protocol (a nil `commandLine`
    /// means `defaultCommandLine`). Throws `AArch64MachineError` if the memory size is below
    /// `minimumMemorySize`, above `maximumMemorySize` or not a multiple of 4 KiB; if `vcpuCount` is
    /// outside 1...`maximumVCPUs` or `virtioDeviceCount` above `virtioMMIOSlotCount`; if the
    /// command line has a NUL or is longer than `commandLineLimit`; or if the initrd does not fit
    /// below the device tree.
    package init(
        memorySize: UInt64 = MachineConfiguration.defaultMemorySize, vcpuCount: Int = 1, commandLine: String? = nil,
        initrdSize: UInt64? = nil, virtioDeviceCount: Int = 0
    ) throws(AArch64MachineError) {
        guard memorySize >= AArch64Layout.minimumMemorySize else { throw .memoryTooSmall(memorySize) }
        guard memorySize <= AArch64Layout.maximumMemorySize else { throw .memoryTooLarge(memorySize) }
        guard memorySize % 4096 == 0 else { throw .memoryNotPageAligned(memorySize) }
        guard (1...AArch64Layout.maximumVCPUs).contains(vcpuCount) else { throw .vcpuCount(vcpuCount) }
        guard (0...AArch64Layout.virtioMMIOSlotCount).contains(virtioDeviceCount) else {
            throw .virtioDeviceCount(virtioDeviceCount)
        }
        let line = commandLine ?? Self.defaultCommandLine
        let length = line.utf8.count
        guard !line.utf8.contains(0) else { throw .commandLineContainsNUL }
        guard length <= Self.commandLineLimit else { throw .commandLineTooLong(length: length, limit: Self.commandLineLimit) }
        if let initrdSize, AArch64Layout.initrdAddress(size: initrdSize, memorySize: memorySize) == nil {
            throw .initrdDoesNotFit(size: initrdSize, memorySize: memorySize)
        }
        self.memorySize = memorySize
        self.vcpuCount = vcpuCount
        self.commandLine = line
        self.initrdSize = initrdSize
        self.virtioDeviceCount = virtioDeviceCount
    }

    /// The description of `configuration` with `virtioDeviceCount` virtio-mmio devices. The
    /// initrd file (if any) is opened for its size; the kernel path, format, console and CPUID
    /// mask play no part in the device tree (the CPUID mask is x86-only).
    package init(_ configuration: MachineConfiguration, virtioDeviceCount: Int = 0) throws(AArch64MachineError) {
        var initrdSize: UInt64?
        if let path = configuration.initrdPath {
            do { initrdSize = try ImageFile(path: path).size } catch {
                switch error {
                case .system(let error): throw .initrdUnreadable(error)
                case .unsupportedKind(_, let kind, _): throw .initrdNotARegularFile(path: path, kind: kind)
                }
            }
        }
        try self.init(
            memorySize: configuration.memorySize, vcpuCount: configuration.vcpuCount, commandLine: configuration.commandLine,
            initrdSize: initrdSize, virtioDeviceCount: virtioDeviceCount)
    }

    /// Where the device tree blob goes (the last 2 MiB of RAM).
    package var deviceTreeAddress: GuestAddress { AArch64Layout.deviceTreeAddress(memorySize: memorySize) }

    /// Where the initrd goes, or nil without one.
    package var initrdAddress: GuestAddress? {
        initrdSize.flatMap { AArch64Layout.initrdAddress(size: $0, memorySize: memorySize) }
    }

    /// The machine's device tree.
    package func deviceTree() throws(FDTError) -> DeviceTreeBlob { try AArch64DeviceTree.build(self) }
}

/// A configuration the aarch64 machine cannot describe.
package enum AArch64MachineError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The memory size (bytes) is below `AArch64Layout.minimumMemorySize`.
    case memoryTooSmall(UInt64)
    /// The memory size (bytes) is above `AArch64Layout.maximumMemorySize`.
    case memoryTooLarge(UInt64)
    /// The memory size (bytes) is not a multiple of 4 KiB.
    case memoryNotPageAligned(UInt64)
    /// The vCPU count is outside 1...`AArch64Layout.maximumVCPUs`.
    case vcpuCount(Int)
    /// The virtio device count is outside 0...`AArch64Layout.virtioMMIOSlotCount`.
    case virtioDeviceCount(Int)
    /// The command line contains a NUL byte.
    case commandLineContainsNUL
    /// The command line is `length` bytes, more than `limit` (2047).
    case commandLineTooLong(length: Int, limit: Int)
    /// The initrd file cannot be opened to read its size.
    case initrdUnreadable(SystemError)
    /// The initrd path names `kind` (a directory, FIFO, socket, device...), not a regular file.
    case initrdNotARegularFile(path: String, kind: HostFileKind)
    /// An initrd of `size` bytes does not fit between the kernel base and the device tree in
    /// `memorySize` bytes of RAM.
    case initrdDoesNotFit(size: UInt64, memorySize: UInt64)

    /// A one-line explanation for the user, with the accepted range where there is one.
    package var description: String {
        switch self {
        case .memoryTooSmall(let size):
            "guest memory of \(size) bytes is too small for aarch64 (at least \(AArch64Layout.minimumMemorySize >> 20) MiB)"
        case .memoryTooLarge(let size):
            "guest memory of \(size) bytes is too large for aarch64 (at most \(AArch64Layout.maximumMemorySize >> 30) GiB)"
        case .memoryNotPageAligned(let size): "guest memory of \(size) bytes is not a multiple of 4 KiB"
        case .vcpuCount(let count):
            "\(count) vCPUs requested; between 1 and \(AArch64Layout.maximumVCPUs) are supported on aarch64"
        case .virtioDeviceCount(let count):
            "\(count) virtio devices requested; between 0 and \(AArch64Layout.virtioMMIOSlotCount) are supported"
        case .commandLineContainsNUL: "the kernel command line contains a NUL character"
        case .commandLineTooLong(let length, let limit): "the kernel command line is \(length) bytes long; the limit is \(limit)"
        case .initrdUnreadable(let error): "cannot read the initrd: \(error)"
        case .initrdNotARegularFile(let path, let kind): "initrd \(path) is \(kind.rawValue), not a regular file"
        case .initrdDoesNotFit(let size, let memorySize):
            "an initrd of \(size) bytes does not fit in \(memorySize >> 20) MiB of guest memory below the device tree"
        }
    }
}
