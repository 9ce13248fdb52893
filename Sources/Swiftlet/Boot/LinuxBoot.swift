import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Writes what a Linux kernel reads at its 64-bit entry: the command line, the initrd, the zero
/// page (setup header, e820 map, pointers) and the MP table.
public enum LinuxBoot {
    /// The command line used when none is given: serial console; `reboot=k` makes a reboot go
    /// through the i8042 reset (which ends the VM) and `panic=1` turns a panic into a reboot one
    /// second later; the i8042 options skip probes for a keyboard and mouse that are not there.
    public static let defaultCommandLine =
        "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

    /// The command line the kernel gets: `base`, plus `clearcpuid=` for a CPUID mask so a
    /// kernel also honours the mask on hosts where KVM_SET_CPUID2 does not reach the guest
    /// (hypervisor-leaf features such as `kvm_pv_send_ipi` are left out: Linux has no name for
    /// them, and the KVM leaves do follow the VMM's table),
    /// plus the device manager's words for the attached devices (`virtio_mmio.device=SIZE@ADDRESS:IRQ`
    /// for each virtio device: there is no other way for the guest to discover them).
    public static func commandLine(base: String?, cpuidMask: [CPUIDFeature], deviceWords: [String] = []) -> String {
        let (kernelPart, initPart) = splitAtInitArguments(base ?? defaultCommandLine)
        var words = [kernelPart]
        let hardware = cpuidMask.filter { !$0.isHypervisorLeaf }
        if !hardware.isEmpty { words.append("clearcpuid=" + hardware.map(\.name).joined(separator: ",")) }
        words += deviceWords
        if let initPart { words.append(initPart) }
        return words.filter { !$0.isEmpty }.joined(separator: " ")
    }

    /// Splits a command line at its first `--` word (outside double quotes, as the kernel reads
    /// it): what comes before is for the kernel, `--` and what follows are init's arguments.
    /// The VMM's own words (`clearcpuid=`, `virtio_mmio.device=`) go before that split, or
    /// Linux would hand them to init instead of reading them.
    static func splitAtInitArguments(_ line: String) -> (kernel: String, initArguments: String?) {
        let bytes = Array(line.utf8)
        func isSpace(_ index: Int) -> Bool { [UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n")].contains(bytes[index]) }
        var inQuote = false
        for index in bytes.indices {
            if bytes[index] == UInt8(ascii: "\"") { inQuote.toggle() }
            let isDashes = bytes[index...].starts(with: "--".utf8) && (index + 2 == bytes.count || isSpace(index + 2))
            guard !inQuote, isDashes, index == 0 || isSpace(index - 1) else { continue }
            var end = index
            while end > 0 && isSpace(end - 1) { end -= 1 }
            return (String(decoding: bytes[..<end], as: UTF8.self), String(decoding: bytes[index...], as: UTF8.self))
        }
        return (line, nil)
    }

    /// Checks `line` against the kernel's limit; returns its bytes with the terminating NUL.
    public static func commandLineBytes(_ line: String, limit: Int) throws(BootSetupError) -> [UInt8] {
        let bytes = Array(line.utf8)
        guard !bytes.contains(0) else { throw .commandLineContainsNUL }
        guard bytes.count <= limit else { throw .commandLineTooLong(length: bytes.count, limit: limit) }
        return bytes + [0]
    }

    /// Where an initrd of `size` bytes goes: page-aligned, as high as possible below both the
    /// kernel's `initrd_addr_max` and the end of RAM under the MMIO gap, and above the kernel.
    public static func initrdAddress(size: UInt64, memorySize: UInt64, kernel: LoadedKernel) throws(BootSetupError)
        -> GuestAddress
    {
        let lowRAMEnd = min(memorySize, X86Layout.mmioGapStart.rawValue)
        let limit = min(kernel.initrdAddressMax &+ 1, lowRAMEnd)
        let kernelEnd = (kernel.end.rawValue + 0xFFF) & ~0xFFF
        guard size <= limit, (limit - size) & ~0xFFF >= kernelEnd else {
            throw .initrdDoesNotFit(size: size, below: limit, above: kernelEnd)
        }
        return GuestAddress((limit - size) & ~0xFFF)
    }

    /// Writes the command line, the initrd (if any), the zero page and the MP table.
    public static func write(
        kernel: LoadedKernel, commandLine: String, initrdPath: String?, vcpuCount: Int, memory: GuestMemory
    ) throws(BootSetupError) -> BootParams {
        var params = BootParams()
        if let header = kernel.setupHeader { params.copySetupHeader(from: header) }
        params.setLoaderFields(hasSetupHeader: kernel.setupHeader != nil)

        let line = try commandLineBytes(commandLine, limit: kernel.commandLineLimit)
        try writeOrFail(line, at: X86Layout.commandLineAddress, memory: memory)
        params.setCommandLine(at: X86Layout.commandLineAddress)

        if let initrdPath {
            let file: ImageFile
            do { file = try ImageFile(path: initrdPath) } catch {
                switch error {
                case .system(let error): throw .initrdUnreadable(error)
                case .unsupportedKind(_, let kind, _): throw .initrdNotARegularFile(path: initrdPath, kind: kind)
                }
            }
            let address = try initrdAddress(size: file.size, memorySize: memory.totalSize, kernel: kernel)
            if file.size > 0 {
                let target: UnsafeMutableRawPointer
                do { target = try memory.hostPointer(address, count: Int(file.size)) } catch { throw .outsideGuestMemory(error) }
                do { try file.read(at: 0, count: Int(file.size), into: target) } catch { throw .initrdUnreadable(error) }
            }
            params.setInitrd(at: address, size: file.size)
        }

        try params.setE820(E820Map.entries(memorySize: memory.totalSize))
        try writeOrFail(params.bytes, at: X86Layout.zeroPageAddress, memory: memory)
        try writeOrFail(try MPTable.bytes(vcpuCount: vcpuCount), at: MPTable.floatingPointerAddress, memory: memory)
        let ebdaSegment = UInt16(X86Layout.ebdaStart.rawValue >> 4)
        try writeOrFail(
            [UInt8(ebdaSegment & 0xFF), UInt8(ebdaSegment >> 8)], at: X86Layout.biosDataAreaEBDASegment, memory: memory)
        return params
    }

    private static func writeOrFail(_ bytes: [UInt8], at address: GuestAddress, memory: GuestMemory) throws(BootSetupError) {
        do { try memory.write(bytes, at: address) } catch { throw .outsideGuestMemory(error) }
    }
}
