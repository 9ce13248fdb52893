/// The Linux x86 "zero page" (`struct boot_params`, 4 KiB), built as plain bytes with every
/// field at the offset given in Linux's `Documentation/arch/x86/zero-page.rst` and `boot.rst`.
public struct BootParams: Equatable, Sendable {
    public static let size = 4096

    /// Field offsets within the zero page (the setup header starts at 0x1F1).
    public enum Offset {
        public static let extRamdiskImage = 0x0C0
        public static let extRamdiskSize = 0x0C4
        public static let extCmdLinePtr = 0x0C8
        public static let e820Entries = 0x1E8
        public static let setupHeader = 0x1F1
        public static let setupSects = 0x1F1
        public static let vidMode = 0x1FA
        public static let bootFlag = 0x1FE
        public static let headerMagic = 0x202
        public static let version = 0x206
        public static let typeOfLoader = 0x210
        public static let loadFlags = 0x211
        public static let code32Start = 0x214
        public static let ramdiskImage = 0x218
        public static let ramdiskSize = 0x21C
        public static let heapEndPtr = 0x224
        public static let cmdLinePtr = 0x228
        public static let initrdAddrMax = 0x22C
        public static let kernelAlignment = 0x230
        public static let relocatableKernel = 0x234
        public static let xloadflags = 0x236
        public static let cmdlineSize = 0x238
        public static let e820Table = 0x2D0
    }

    public static let maxE820Entries = 128
    public static let e820EntrySize = 20
    /// "HdrS"
    public static let headerMagic: UInt32 = 0x5372_6448
    public static let bootFlag: UInt16 = 0xAA55
    /// Boot protocol 2.15, what Swiftlet writes for kernels without a setup header (vmlinux).
    public static let protocolVersion: UInt16 = 0x020F
    /// `type_of_loader` 0xFF: a boot loader with no assigned id.
    public static let undefinedLoader: UInt8 = 0xFF
    public static let loadedHigh: UInt8 = 0x01
    public static let canUseHeap: UInt8 = 0x80

    public private(set) var bytes: [UInt8]

    public init() { bytes = [UInt8](repeating: 0, count: BootParams.size) }

    /// Copies a bzImage's setup header (from offset 0x1F1 to the end of the header, whose length
    /// is 0x202 + the byte at 0x201) into the zero page, as the boot protocol asks.
    public mutating func copySetupHeader(from image: [UInt8]) {
        guard image.count > 0x202 else { return }
        let end = min(0x202 + Int(image[0x201]), image.count, BootParams.size)
        for i in Offset.setupHeader..<end { bytes[i] = image[i] }
    }

    public mutating func set(_ value: UInt8, at offset: Int) { bytes[offset] = value }
    public mutating func set(_ value: UInt16, at offset: Int) { setLittleEndian(UInt64(value), at: offset, size: 2) }
    public mutating func set(_ value: UInt32, at offset: Int) { setLittleEndian(UInt64(value), at: offset, size: 4) }
    public mutating func set(_ value: UInt64, at offset: Int) { setLittleEndian(value, at: offset, size: 8) }

    public func uint8(at offset: Int) -> UInt8 { bytes[offset] }
    public func uint16(at offset: Int) -> UInt16 { UInt16(littleEndian(at: offset, size: 2)) }
    public func uint32(at offset: Int) -> UInt32 { UInt32(littleEndian(at: offset, size: 4)) }
    public func uint64(at offset: Int) -> UInt64 { littleEndian(at: offset, size: 8) }

    /// Sets the e820 table (at most 128 entries).
    public mutating func setE820(_ entries: [E820Entry]) throws(BootSetupError) {
        guard entries.count <= BootParams.maxE820Entries else { throw .tooManyE820Entries(entries.count) }
        bytes[Offset.e820Entries] = UInt8(entries.count)
        for (i, entry) in entries.enumerated() {
            let base = Offset.e820Table + i * BootParams.e820EntrySize
            set(entry.address, at: base)
            set(entry.size, at: base + 8)
            set(entry.type.rawValue, at: base + 16)
        }
    }

    /// The e820 table as stored.
    public var e820: [E820Entry] {
        (0..<Int(bytes[Offset.e820Entries])).map { i in
            let base = Offset.e820Table + i * BootParams.e820EntrySize
            return E820Entry(
                address: uint64(at: base), size: uint64(at: base + 8),
                type: E820Entry.Kind(rawValue: uint32(at: base + 16)) ?? .reserved)
        }
    }

    /// Points the kernel at the command line (`cmd_line_ptr`, plus `ext_cmd_line_ptr`).
    public mutating func setCommandLine(at address: GuestAddress) {
        set(UInt32(truncatingIfNeeded: address.rawValue), at: Offset.cmdLinePtr)
        set(UInt32(truncatingIfNeeded: address.rawValue >> 32), at: Offset.extCmdLinePtr)
    }

    /// Points the kernel at the initrd (`ramdisk_image`/`ramdisk_size` plus their `ext_` halves).
    public mutating func setInitrd(at address: GuestAddress, size: UInt64) {
        set(UInt32(truncatingIfNeeded: address.rawValue), at: Offset.ramdiskImage)
        set(UInt32(truncatingIfNeeded: size), at: Offset.ramdiskSize)
        set(UInt32(truncatingIfNeeded: address.rawValue >> 32), at: Offset.extRamdiskImage)
        set(UInt32(truncatingIfNeeded: size >> 32), at: Offset.extRamdiskSize)
    }

    /// Fills the setup-header fields a boot loader must write (boot.rst, "Details of header
    /// fields": type_of_loader, loadflags, heap_end_ptr, vid_mode) and, for kernels without a
    /// setup header (vmlinux), the ones the kernel reads to recognise a boot_params it can use.
    public mutating func setLoaderFields(hasSetupHeader: Bool) {
        if !hasSetupHeader {
            set(BootParams.bootFlag, at: Offset.bootFlag)
            set(BootParams.headerMagic, at: Offset.headerMagic)
            set(BootParams.protocolVersion, at: Offset.version)
            set(UInt32(X86Layout.commandLineMaxSize - 1), at: Offset.cmdlineSize)
        }
        set(UInt16(0xFFFF), at: Offset.vidMode)
        set(BootParams.undefinedLoader, at: Offset.typeOfLoader)
        set(uint8(at: Offset.loadFlags) | BootParams.loadedHigh | BootParams.canUseHeap, at: Offset.loadFlags)
        set(UInt16(0xFE00), at: Offset.heapEndPtr)
    }

    private mutating func setLittleEndian(_ value: UInt64, at offset: Int, size: Int) {
        for i in 0..<size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    private func littleEndian(at offset: Int, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return value
    }
}

/// One entry of the BIOS e820 memory map.
public struct E820Entry: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
    }

    public let address: UInt64
    public let size: UInt64
    public let type: Kind

    public init(address: UInt64, size: UInt64, type: Kind) {
        self.address = address
        self.size = size
        self.type = type
    }

    public var description: String { "e820 \(hex(address))+\(hex(size)) \(type)" }
}

/// The e820 map of an x86_64 guest with `memorySize` bytes of RAM:
/// - RAM from 0 to the EBDA (0x9FC00),
/// - the EBDA, VGA and BIOS ROM hole up to 1 MiB, reserved,
/// - RAM from 1 MiB up to the MMIO gap (or the end of RAM),
/// - no entry for the MMIO gap (0xC000_0000 to 4 GiB: devices, IOAPIC, LAPIC),
/// - RAM from 4 GiB for what did not fit below the gap.
public enum E820Map {
    public static func entries(memorySize: UInt64) -> [E820Entry] {
        let ebda = X86Layout.ebdaStart.rawValue
        let high = X86Layout.highMemoryStart.rawValue
        var entries = [
            E820Entry(address: 0, size: min(memorySize, ebda), type: .ram),
            E820Entry(address: ebda, size: high - ebda, type: .reserved),
        ]
        let belowGap = min(memorySize, X86Layout.mmioGapStart.rawValue)
        if belowGap > high {
            entries.append(E820Entry(address: high, size: belowGap - high, type: .ram))
        }
        if memorySize > belowGap {
            entries.append(E820Entry(address: X86Layout.ramAbove4GStart.rawValue, size: memorySize - belowGap, type: .ram))
        }
        return entries
    }
}

/// Boot structures that cannot be built for a configuration.
public enum BootSetupError: Error, Equatable, CustomStringConvertible, Sendable {
    case tooManyE820Entries(Int)
    case commandLineTooLong(length: Int, limit: Int)
    case commandLineContainsNUL
    case initrdDoesNotFit(size: UInt64, below: UInt64, above: UInt64)
    case initrdUnreadable(SystemError)
    case tooManyVCPUsForMPTable(Int)
    case outsideGuestMemory(GuestMemoryError)

    public var description: String {
        switch self {
        case .tooManyE820Entries(let count): "\(count) e820 entries; the zero page holds 128"
        case .commandLineTooLong(let length, let limit):
            "the kernel command line is \(length) bytes; this kernel accepts at most \(limit)"
        case .commandLineContainsNUL: "the kernel command line contains a NUL byte"
        case .initrdDoesNotFit(let size, let below, let above):
            "the initrd (\(size) bytes) does not fit between the kernel's end \(hex(above)) and \(hex(below)); use more --memory"
        case .initrdUnreadable(let error): "cannot read the initrd: \(error)"
        case .tooManyVCPUsForMPTable(let count): "\(count) vCPUs do not fit the MP table's 8-bit APIC IDs"
        case .outsideGuestMemory(let error): "a boot structure does not fit: \(error)"
        }
    }
}
