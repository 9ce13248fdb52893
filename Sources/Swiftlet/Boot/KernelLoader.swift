import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// The kernel image formats Swiftlet loads.
public enum KernelFormat: String, CaseIterable, Sendable {
    /// Recognise ELF and bzImage by their magic numbers; anything else is refused.
    case automatic = "auto"
    /// An ELF64 x86-64 executable (a `vmlinux`, or a tiny test guest): PT_LOAD segments go to
    /// their physical addresses and the vCPU starts at `e_entry` in 64-bit long mode.
    case elf
    /// A Linux `bzImage` (boot protocol 2.12 or later with a 64-bit entry): the protected-mode
    /// kernel goes to 1 MiB and the vCPU starts at its 64-bit entry, 0x200 bytes in.
    case bzImage = "bzimage"
    /// A flat binary loaded at 0x10000 and started in 16-bit real mode at 1000:0000.
    case flatRealMode = "flat-real-mode"
}

/// Why a kernel image was refused.
public enum KernelLoadError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The image cannot be opened or read.
    case unreadable(SystemError)
    /// The path names `kind` (a directory, FIFO, socket, device...), not a regular file.
    case notARegularFile(path: String, kind: HostFileKind)
    /// The image is neither ELF nor bzImage (for `.automatic`), or not of the format asked for.
    case unrecognizedFormat(path: String)
    /// A known format that cannot be booted; `reason` says why (e.g. too old a boot protocol).
    case notLoadable(path: String, reason: String)
    /// The image needs `size` bytes at `address`, which guest RAM does not hold.
    case doesNotFit(path: String, address: GuestAddress, size: UInt64)
    /// A segment would overlap the VMM's boot structures below `X86Layout.highMemoryStart`.
    case overlapsReserved(path: String, address: GuestAddress, size: UInt64)
    /// The file is zero bytes long.
    case empty(path: String)

    /// A one-line explanation naming the file, with a hint (`--memory`, `--format`) if one helps.
    public var description: String {
        switch self {
        case .unreadable(let error): "cannot read kernel: \(error)"
        case .notARegularFile(let path, let kind): "kernel \(path) is \(kind.rawValue), not a regular file"
        case .unrecognizedFormat(let path):
            "\(path) is neither an ELF64 x86-64 kernel (vmlinux) nor a bzImage; pass --format flat-real-mode for a flat real-mode binary"
        case .notLoadable(let path, let reason): "\(path) cannot be loaded: \(reason)"
        case .doesNotFit(let path, let address, let size):
            "\(path) needs \(size) bytes at \(address), which is not inside guest RAM (use more --memory)"
        case .overlapsReserved(let path, let address, let size):
            "\(path) wants \(size) bytes at \(address), which overlaps the VMM's boot area below \(X86Layout.highMemoryStart)"
        case .empty(let path): "\(path) is empty"
        }
    }
}

/// Where and how a loaded kernel starts, and what it accepts from the boot loader.
public struct LoadedKernel: Equatable, Sendable {
    /// The format the image was loaded as (never `.automatic`).
    public let format: KernelFormat
    /// The boot vCPU's entry state: real mode at 1000:0000 for a flat binary, else long mode at the
    /// 64-bit entry (`e_entry`, or load address + 0x200 for a bzImage) with RSI = the zero page.
    public let entry: X86EntryMode
    /// The highest guest physical address the kernel occupies or needs while it starts
    /// (exclusive). Nothing else (the initrd) is placed below it.
    public let end: GuestAddress
    /// A bzImage's setup header (image bytes 0x1F1 up to the header's end), copied into the zero
    /// page; nil for other formats.
    public var setupHeader: [UInt8]? = nil
    /// The longest command line the kernel accepts, without the terminating NUL.
    public var commandLineLimit: Int = X86Layout.commandLineMaxSize - 1
    /// The highest address the initrd may occupy (`initrd_addr_max`).
    public var initrdAddressMax: UInt64 = BzImage.defaultInitrdAddressMax
    /// Whether the kernel reads a Linux zero page (bzImage and ELF) or not (flat binaries).
    public var usesZeroPage: Bool { format != .flatRealMode }
}

/// Loads kernel images into guest memory.
public enum KernelLoader {
    /// Loads `path` in `format` into `memory`.
    public static func load(_ path: String, format: KernelFormat, into memory: GuestMemory) throws(KernelLoadError)
        -> LoadedKernel
    {
        let file: ImageFile
        do { file = try ImageFile(path: path) } catch {
            switch error {
            case .system(let error): throw .unreadable(error)
            case .unsupportedKind(_, let kind, _): throw .notARegularFile(path: path, kind: kind)
            }
        }
        guard file.size > 0 else { throw .empty(path: path) }
        let header: [UInt8]
        do { header = try file.bytes(at: 0, count: 64) } catch { throw .unreadable(error) }
        let isELF = header.starts(with: ELF64.magic)
        switch format {
        case .automatic where isELF, .elf:
            guard isELF else { throw .unrecognizedFormat(path: path) }
            return try loadELF(file, into: memory)
        case .automatic, .bzImage:
            let setup: [UInt8]
            do { setup = try file.bytes(at: 0, count: BzImage.headerReadSize) } catch { throw .unreadable(error) }
            guard BzImage.hasSetupHeader(setup) else { throw .unrecognizedFormat(path: path) }
            return try loadBzImage(file, setup: setup, into: memory)
        case .flatRealMode:
            return try loadFlat(file, into: memory)
        }
    }

    static func loadFlat(_ file: ImageFile, into memory: GuestMemory) throws(KernelLoadError) -> LoadedKernel {
        let base = X86Layout.realModeLoadAddress
        // A real-mode image must fit its 64 KiB code segment.
        guard file.size <= 0x10000 else {
            throw .notLoadable(
                path: file.path, reason: "a flat real-mode image must be at most 64 KiB (it is \(file.size) bytes)")
        }
        try copy(file, offset: 0, count: file.size, to: base, memory: memory)
        return LoadedKernel(
            format: .flatRealMode, entry: .realMode(segment: UInt16(base.rawValue >> 4), offset: 0, stackPointer: 0xFFF0),
            end: GuestAddress(base.rawValue + file.size))
    }

    static func loadBzImage(_ file: ImageFile, setup: [UInt8], into memory: GuestMemory) throws(KernelLoadError) -> LoadedKernel {
        let header: BzImage.Header
        do { header = try BzImage.Header(setup) } catch { throw .notLoadable(path: file.path, reason: error.reason) }
        let offset = header.protectedModeOffset
        guard offset < file.size else {
            throw .notLoadable(path: file.path, reason: "the setup code (\(offset) bytes) fills the whole file")
        }
        let payload = file.size - offset
        let base = X86Layout.highMemoryStart
        // The kernel decompresses in place and needs init_size bytes from its load address.
        let needed = max(payload, UInt64(header.initSize))
        guard needed <= UInt64(Int.max), memory.contains(base, count: Int(needed)) else {
            throw .doesNotFit(path: file.path, address: base, size: needed)
        }
        try copy(file, offset: offset, count: payload, to: base, memory: memory)
        return LoadedKernel(
            format: .bzImage,
            entry: .longMode(entry: base.rawValue + BzImage.entry64Offset, zeroPage: X86Layout.zeroPageAddress.rawValue),
            end: GuestAddress(base.rawValue + needed),
            setupHeader: setup,
            commandLineLimit: min(Int(header.commandLineSize), X86Layout.commandLineMaxSize - 1),
            initrdAddressMax: UInt64(header.initrdAddressMax))
    }

    static func loadELF(_ file: ImageFile, into memory: GuestMemory) throws(KernelLoadError) -> LoadedKernel {
        let headerBytes: [UInt8]
        do { headerBytes = try file.bytes(at: 0, count: ELF64.headerSize) } catch { throw .unreadable(error) }
        let header: ELF64.Header
        do { header = try ELF64.Header(headerBytes) } catch { throw .notLoadable(path: file.path, reason: error.reason) }
        let tableSize = Int(header.programHeaderCount) * ELF64.programHeaderSize
        guard header.programHeaderOffset <= file.size, UInt64(tableSize) <= file.size - header.programHeaderOffset else {
            throw .notLoadable(path: file.path, reason: "program header table lies outside the file")
        }
        let table: [UInt8]
        do { table = try file.bytes(at: header.programHeaderOffset, count: tableSize) } catch { throw .unreadable(error) }
        var end: UInt64 = 0
        var loaded = 0
        for index in 0..<Int(header.programHeaderCount) {
            let segment = ELF64.ProgramHeader(table, at: index * ELF64.programHeaderSize)
            guard segment.type == ELF64.loadableSegment, segment.memorySize > 0 else { continue }
            guard segment.fileSize <= segment.memorySize,
                segment.offset <= file.size, segment.fileSize <= file.size - segment.offset
            else { throw .notLoadable(path: file.path, reason: "segment \(index) lies outside the file") }
            let address = GuestAddress(segment.physicalAddress)
            guard address >= X86Layout.highMemoryStart else {
                throw .overlapsReserved(path: file.path, address: address, size: segment.memorySize)
            }
            guard segment.memorySize <= UInt64(Int.max),
                memory.contains(address, count: Int(segment.memorySize))
            else { throw .doesNotFit(path: file.path, address: address, size: segment.memorySize) }
            try copy(file, offset: segment.offset, count: segment.fileSize, to: address, memory: memory)
            let bssStart = GuestAddress(address.rawValue + segment.fileSize)
            do { try memory.fill(bssStart, count: Int(segment.memorySize - segment.fileSize), with: 0) } catch {
                throw .doesNotFit(path: file.path, address: address, size: segment.memorySize)
            }
            end = max(end, address.rawValue + segment.memorySize)
            loaded += 1
        }
        guard loaded > 0 else { throw .notLoadable(path: file.path, reason: "it has no PT_LOAD segment") }
        return LoadedKernel(
            format: .elf, entry: .longMode(entry: header.entry, zeroPage: X86Layout.zeroPageAddress.rawValue),
            end: GuestAddress(end))
    }

    static func copy(_ file: ImageFile, offset: UInt64, count: UInt64, to address: GuestAddress, memory: GuestMemory)
        throws(KernelLoadError)
    {
        guard count > 0 else { return }
        let target: UnsafeMutableRawPointer
        do { target = try memory.hostPointer(address, count: Int(count)) } catch {
            throw .doesNotFit(path: file.path, address: address, size: count)
        }
        do { try file.read(at: offset, count: Int(count), into: target) } catch { throw .unreadable(error) }
    }
}

/// The parts of the ELF64 format the loader reads (System V gABI, x86-64 psABI).
enum ELF64 {
    static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]
    static let headerSize = 64
    static let programHeaderSize = 56
    static let loadableSegment: UInt32 = 1
    static let machineX86_64: UInt16 = 62

    struct FormatError: Error { let reason: String }

    struct Header {
        let entry: UInt64
        let programHeaderOffset: UInt64
        let programHeaderCount: UInt16

        init(_ bytes: [UInt8]) throws(FormatError) {
            guard bytes.count >= ELF64.headerSize, bytes.starts(with: ELF64.magic) else {
                throw FormatError(reason: "truncated ELF header")
            }
            guard bytes[4] == 2 else { throw FormatError(reason: "not a 64-bit ELF (class \(bytes[4]))") }
            guard bytes[5] == 1 else { throw FormatError(reason: "not little-endian") }
            let type = bytes.le16(16)
            guard type == 2 else { throw FormatError(reason: "not an executable (ELF type \(type))") }
            let machine = bytes.le16(18)
            guard machine == ELF64.machineX86_64 else { throw FormatError(reason: "not x86-64 (machine \(machine))") }
            guard bytes.le16(54) == UInt16(ELF64.programHeaderSize) else {
                throw FormatError(reason: "unexpected program header size \(bytes.le16(54))")
            }
            entry = bytes.le64(24)
            programHeaderOffset = bytes.le64(32)
            programHeaderCount = bytes.le16(56)
        }
    }

    struct ProgramHeader {
        let type: UInt32
        let offset: UInt64
        let physicalAddress: UInt64
        let fileSize: UInt64
        let memorySize: UInt64

        init(_ table: [UInt8], at base: Int) {
            type = table.le32(base)
            offset = table.le64(base + 8)
            physicalAddress = table.le64(base + 24)
            fileSize = table.le64(base + 32)
            memorySize = table.le64(base + 40)
        }
    }
}

/// The parts of the Linux x86 boot protocol's setup header (boot.rst) the bzImage loader reads.
public enum BzImage {
    /// Enough of the image to hold the whole setup header.
    static let headerReadSize = 0x280
    /// The oldest protocol with `xloadflags` (and so a declared 64-bit entry point): 2.12.
    public static let minimumProtocol: UInt16 = 0x020C
    /// Offset of the 64-bit entry point from the protected-mode kernel's load address (boot.rst).
    public static let entry64Offset: UInt64 = 0x200
    /// `initrd_addr_max` when the kernel states none (ELF kernels): boot.rst's pre-2.03 value.
    public static let defaultInitrdAddressMax: UInt64 = 0x37FF_FFFF
    static let xlfKernel64: UInt16 = 1 << 0

    static func hasSetupHeader(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 0x208 && bytes.le16(0x1FE) == BootParams.bootFlag && bytes.le32(0x202) == BootParams.headerMagic
    }

    struct Header {
        let setupSectors: Int
        let version: UInt16
        let initrdAddressMax: UInt32
        let commandLineSize: UInt32
        let initSize: UInt32

        var protectedModeOffset: UInt64 { UInt64(setupSectors + 1) * 512 }

        init(_ bytes: [UInt8]) throws(ELF64.FormatError) {
            guard bytes.count >= BzImage.headerReadSize, BzImage.hasSetupHeader(bytes) else {
                throw ELF64.FormatError(reason: "truncated setup header")
            }
            version = bytes.le16(0x206)
            guard version >= BzImage.minimumProtocol else {
                throw ELF64.FormatError(
                    reason: "boot protocol \(version >> 8).\(version & 0xFF) is too old (2.12 or later has a 64-bit entry)")
            }
            guard bytes[0x211] & BootParams.loadedHigh != 0 else {
                throw ELF64.FormatError(reason: "not a bzImage (the kernel does not load at 1 MiB)")
            }
            guard bytes.le16(0x236) & BzImage.xlfKernel64 != 0 else {
                throw ELF64.FormatError(reason: "the kernel has no 64-bit entry point (xloadflags)")
            }
            setupSectors = bytes[0x1F1] == 0 ? 4 : Int(bytes[0x1F1])
            initrdAddressMax = bytes.le32(0x22C)
            commandLineSize = bytes.le32(0x238)
            initSize = bytes.le32(0x260)
        }
    }
}
