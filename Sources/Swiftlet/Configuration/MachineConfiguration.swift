import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Everything needed to build a machine, as a plain value.
public struct MachineConfiguration: Sendable {
    /// Path of the kernel image.
    public var kernelPath: String
    /// How to interpret the kernel image.
    public var kernelFormat: KernelFormat
    /// Guest RAM in bytes (a multiple of 4 KiB).
    public var memorySize: UInt64
    /// Number of vCPUs.
    public var vcpuCount: Int
    /// Where the serial console goes.
    public var console: ConsoleConfiguration
    /// The kernel command line; nil means `LinuxBoot.defaultCommandLine`.
    public var commandLine: String?
    /// Path of an initrd / initramfs image, if any.
    public var initrdPath: String?
    /// CPUID features hidden from the guest (see `CPUIDFeature.parseMask`).
    public var cpuidMask: [CPUIDFeature]
    /// Virtio-blk disks. Virtio devices share one sequence of virtio-mmio slots
    /// (`X86Layout.virtioMMIOBase`): disks first, then network interfaces, then the rng, then vsock.
    public var disks: [DiskConfiguration]
    /// Virtio-net interfaces, each over a host tap, in slot order after the disks.
    public var networks: [NetworkConfiguration]
    /// A virtio-rng device (entropy from the host's getrandom), in the slot after the networks.
    public var rng: Bool
    /// A virtio-vsock device over host Unix sockets, in the slot after the rng; nil: none.
    public var vsock: VsockConfiguration?
    /// Attach the boot-timer device (port `X86Layout.bootTimerPort`); off by default, as in
    /// Firecracker. `swiftlet boot --boot-timer` (or `--report-boot-time`) sets it.
    public var bootTimer: Bool
    /// Attach the MMIO test device (`X86Layout.mmioTestDeviceAddress`) of the tiny test guests.
    /// For tests only; production guests never see it.
    package var mmioTestDevice: Bool = false
    /// Who the VMM runs the guest as once every host resource is open (`--uid`, `--gid`,
    /// `--chroot`); nil: it keeps the privileges it was started with.
    public var privilegeDrop: PrivilegeDrop?
    /// Give every thread the machine starts a seccomp filter of its own (Docs/SECCOMP.md): a
    /// refused system call ends the process with one line on stderr and exit status 159. On by
    /// default; `--seccomp off` clears it (for debugging, or an `.output` sink that makes other
    /// calls on the vCPU thread).
    public var seccomp: Bool = true

    /// Guest RAM when none is given: 128 MiB.
    public static let defaultMemorySize: UInt64 = 128 << 20
    /// The least guest RAM accepted: 2 MiB, the boot area below 1 MiB (`X86Layout.highMemoryStart`)
    /// and at least 1 MiB above it for the kernel.
    public static let minimumMemorySize: UInt64 = 2 << 20
    /// 1 TiB: far above what a microVM needs, well inside what x86_64 guests can address.
    public static let maximumMemorySize: UInt64 = 1 << 40
    /// 254: the most vCPUs the MP table's 8-bit APIC IDs can describe.
    public static let maximumVCPUs = 254

    /// A configuration booting `kernelPath`, by default: format detected, 128 MiB, one vCPU, the host
    /// terminal as console, the default command line, no initrd, no CPUID mask, no virtio devices,
    /// no boot timer. Nothing is checked until `validate()` (which `Machine.init` calls).
    public init(
        kernelPath: String, kernelFormat: KernelFormat = .automatic, memorySize: UInt64 = defaultMemorySize,
        vcpuCount: Int = 1, console: ConsoleConfiguration = .terminal, commandLine: String? = nil,
        initrdPath: String? = nil, cpuidMask: [CPUIDFeature] = [], disks: [DiskConfiguration] = [],
        networks: [NetworkConfiguration] = [], rng: Bool = false, bootTimer: Bool = false,
        vsock: VsockConfiguration? = nil
    ) {
        self.vsock = vsock
        self.disks = disks
        self.networks = networks
        self.rng = rng
        self.bootTimer = bootTimer
        self.commandLine = commandLine
        self.initrdPath = initrdPath
        self.cpuidMask = cpuidMask
        self.kernelPath = kernelPath
        self.kernelFormat = kernelFormat
        self.memorySize = memorySize
        self.vcpuCount = vcpuCount
        self.console = console
    }

    /// Checks the values that can be checked without touching the host: the one place a
    /// configuration's values are checked (the CLI calls it before building, so that a bad value
    /// is a usage error; `Machine.init` calls it again). Memory, vCPUs, the kernel path, the
    /// number of virtio devices, then `validateDevices()`.
    public func validate() throws(ConfigurationError) {
        guard memorySize >= Self.minimumMemorySize else { throw .memoryTooSmall(memorySize) }
        guard memorySize <= Self.maximumMemorySize else { throw .memoryTooLarge(memorySize) }
        guard memorySize % 4096 == 0 else { throw .memoryNotPageAligned(memorySize) }
        guard (1...Self.maximumVCPUs).contains(vcpuCount) else { throw .vcpuCount(vcpuCount) }
        guard !kernelPath.isEmpty else { throw .missingKernel }
        guard disks.count <= X86Layout.virtioMMIOSlotCount else { throw .tooManyDisks(disks.count) }
        let virtioDevices = disks.count + networks.count + (rng ? 1 : 0) + (vsock != nil ? 1 : 0)
        guard virtioDevices <= X86Layout.virtioMMIOSlotCount else { throw .tooManyVirtioDevices(virtioDevices) }
        try validateDevices()
        try privilegeDrop?.validate()
    }

    /// The checks of `validate()` that hold on every architecture (`swiftlet dump-dtb` uses them
    /// with `AArch64MachineDescription`'s own): each disk's and network interface's
    /// `validate()`, and no two interfaces with the same MAC address.
    public func validateDevices() throws(ConfigurationError) {
        for disk in disks { try disk.validate() }
        try vsock?.validate()
        for network in networks { try network.validate() }
        var macs = Set<MACAddress>()
        for network in networks where !macs.insert(network.effectiveMAC).inserted { throw .duplicateMAC(network.effectiveMAC) }
    }
}

/// Where the guest's serial console is connected.
public enum ConsoleConfiguration: Sendable {
    /// The host terminal: output to stdout, stdin to the guest (raw mode on a terminal).
    case terminal
    /// Output to `output`; input only through `Machine.sendConsoleInput`.
    case output(any SerialOutput)
    /// Output as the `ConsoleStream`'s async stream; input through `Machine.sendConsoleInput`.
    case stream(ConsoleStream)
    /// Output discarded; no input.
    case none
}

/// A configuration that cannot describe a machine.
public enum ConfigurationError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The memory size (bytes) is below `MachineConfiguration.minimumMemorySize`.
    case memoryTooSmall(UInt64)
    /// The memory size (bytes) is above `MachineConfiguration.maximumMemorySize`.
    case memoryTooLarge(UInt64)
    /// The memory size (bytes) is not a multiple of 4 KiB.
    case memoryNotPageAligned(UInt64)
    /// The vCPU count is outside 1...`MachineConfiguration.maximumVCPUs`.
    case vcpuCount(Int)
    /// The kernel path is empty.
    case missingKernel
    /// More disks than there are virtio-mmio slots (`X86Layout.virtioMMIOSlotCount`).
    case tooManyDisks(Int)
    /// A disk's image path is empty.
    case diskWithoutPath
    /// A disk id longer than 20 bytes in UTF-8 (`VirtioBlock.identifierLength`).
    case diskIdentifierTooLong(String)
    /// Disks, network interfaces and the rng together need more virtio-mmio slots than there are
    /// (`X86Layout.virtioMMIOSlotCount`).
    case tooManyVirtioDevices(Int)
    /// A tap name Linux refuses (`TapDevice.isValidInterfaceName`).
    case badTapName(String)
    /// A configured MAC address is a group (multicast or broadcast) address or all zeros.
    case macNotUnicast(MACAddress)
    /// Two network interfaces would have this MAC address (configured or generated from the tap name).
    case duplicateMAC(MACAddress)
    /// A rate-limit bucket (`bucket`: `bw` or `ops`) of the disk at `path` cannot be used: `reason`
    /// says why (`TokenBucketLimit.problem`).
    case badDiskRateLimit(path: String, bucket: String, reason: String)
    /// A rate-limit bucket (`bucket`: `rx-bw`, `rx-ops`, `tx-bw` or `tx-ops`) of the interface on
    /// tap `tap` cannot be used: `reason` says why.
    case badNetworkRateLimit(tap: String, bucket: String, reason: String)
    /// The privilege drop's ids or chroot directory cannot be used; the text says why.
    case badPrivilegeDrop(String)
    /// The vsock device's CID or socket path cannot be used; the text says why.
    case badVsock(String)

    /// A one-line explanation, with the supported range where there is one.
    public var description: String {
        switch self {
        case .memoryTooSmall(let size):
            "guest memory of \(size) bytes is too small (at least \(MachineConfiguration.minimumMemorySize >> 20) MiB)"
        case .memoryTooLarge(let size):
            "guest memory of \(size) bytes is too large (at most \(MachineConfiguration.maximumMemorySize >> 30) GiB)"
        case .memoryNotPageAligned(let size): "guest memory of \(size) bytes is not a multiple of 4 KiB"
        case .vcpuCount(let count): "\(count) vCPUs requested; between 1 and \(MachineConfiguration.maximumVCPUs) are supported"
        case .missingKernel: "no kernel image given"
        case .tooManyDisks(let count): "\(count) disks requested; at most \(X86Layout.virtioMMIOSlotCount) are supported"
        case .diskWithoutPath: "a disk has no image path"
        case .diskIdentifierTooLong(let id): "disk id '\(id)' is longer than \(VirtioBlock.identifierLength) bytes"
        case .tooManyVirtioDevices(let count):
            "\(count) virtio devices (disks, network interfaces, rng, vsock) requested; at most \(X86Layout.virtioMMIOSlotCount) are supported"
        case .badTapName(let name): "'\(name)' is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        case .macNotUnicast(let mac): "MAC address \(mac) is a multicast or zero address"
        case .duplicateMAC(let mac): "two network interfaces have the MAC address \(mac)"
        case .badDiskRateLimit(let path, let bucket, let reason): "disk \(path): \(bucket): \(reason)"
        case .badNetworkRateLimit(let tap, let bucket, let reason): "tap \(tap): \(bucket): \(reason)"
        case .badPrivilegeDrop(let reason): reason
        case .badVsock(let reason): "vsock: \(reason)"
        }
    }
}
