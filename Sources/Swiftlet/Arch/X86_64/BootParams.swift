import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// The Linux x86 "zero page" (`struct boot_params`, 4 KiB), built as plain bytes with every
/// field at the offset given in Linux's `Documentation/arch/x86/zero-page.rst` and `boot.rst`.
public struct BootParams: Equatable, Sendable {
    /// The zero page's size in bytes: one 4 KiB page.
    public static let size = 4096

    /// Field offsets within the zero page (the setup header starts at 0x1F1).
    public enum Offset {
        /// `ext_ramdisk_image` (u32): high 32 bits of the initrd's address.
        public static let extRamdiskImage = 0x0C0
        /// `ext_ramdisk_size` (u32): high 32 bits of the initrd's size in bytes.
        public static let extRamdiskSize = 0x0C4
        /// `ext_cmd_line_ptr` (u32): high 32 bits of the command line's address.
        public static let extCmdLinePtr = 0x0C8
        /// `e820_entries` (u8): number of valid entries in `e820_table` (at most 128).
        public static let e820Entries = 0x1E8
        /// Start of the setup header (`struct setup_header`), copied there from a bzImage.
        public static let setupHeader = 0x1F1
        /// `setup_sects` (u8): size of the real-mode setup code in 512-byte sectors (0 means 4).
        public static let setupSects = 0x1F1
        /// `vid_mode` (u16): video mode request; 0xFFFF is "normal" (no change).
        public static let vidMode = 0x1FA
        /// `boot_flag` (u16): the 0xAA55 boot-sector signature.
        public static let bootFlag = 0x1FE
        /// `header` (u32): the "HdrS" magic that marks a setup header.
        public static let headerMagic = 0x202
        /// `version` (u16): boot protocol version, major in the high byte (0x020F is 2.15).
        public static let version = 0x206
        /// `type_of_loader` (u8): boot loader id, written by the loader.
        public static let typeOfLoader = 0x210
        /// `loadflags` (u8): bit 0 LOADED_HIGH, bit 7 CAN_USE_HEAP, among others.
        public static let loadFlags = 0x211
        /// `code32_start` (u32): the 32-bit protected-mode entry address (0x100000 by default).
        public static let code32Start = 0x214
        /// `ramdisk_image` (u32): low 32 bits of the initrd's address.
        public static let ramdiskImage = 0x218
        /// `ramdisk_size` (u32): low 32 bits of the initrd's size in bytes.
        public static let ramdiskSize = 0x21C
        /// `heap_end_ptr` (u16): end of the real-mode setup code's stack/heap, relative to the
        /// start of the setup code, minus 0x200.
        public static let heapEndPtr = 0x224
        /// `cmd_line_ptr` (u32): low 32 bits of the NUL-terminated command line's address.
        public static let cmdLinePtr = 0x228
        /// `initrd_addr_max` (u32): highest address the initrd may occupy (inclusive).
        public static let initrdAddrMax = 0x22C
        /// `kernel_alignment` (u32): physical alignment a relocatable kernel needs.
        public static let kernelAlignment = 0x230
        /// `relocatable_kernel` (u8): nonzero if the kernel may be loaded at another address.
        public static let relocatableKernel = 0x234
        /// `xloadflags` (u16, protocol 2.12+): bit 0 (XLF_KERNEL_64) marks the entry at +0x200.
        public static let xloadflags = 0x236
        /// `cmdline_size` (u32, protocol 2.06+): the longest command line, without the NUL.
        public static let cmdlineSize = 0x238
        /// `e820_table`: up to 128 entries of 20 bytes (u64 address, u64 size, u32 type).
        public static let e820Table = 0x2D0
    }

    /// Capacity of `e820_table` (`E820_MAX_ENTRIES_ZEROPAGE`).
    public static let maxE820Entries = 128
    /// Bytes per packed `struct boot_e820_entry`: u64 address, u64 size, u32 type.
    public static let e820EntrySize = 20
    /// "HdrS"
    public static let headerMagic: UInt32 = 0x5372_6448
    /// The value of `boot_flag` in every valid setup header.
    public static let bootFlag: UInt16 = 0xAA55
    /// Boot protocol 2.15, what Swiftlet writes for kernels without a setup header (vmlinux).
    public static let protocolVersion: UInt16 = 0x020F
    /// `type_of_loader` 0xFF: a boot loader with no assigned id.
    public static let undefinedLoader: UInt8 = 0xFF
    /// `loadflags` bit 0, LOADED_HIGH: the protected-mode kernel is loaded at 0x100000.
    public static let loadedHigh: UInt8 = 0x01
    /// `loadflags` bit 7, CAN_USE_HEAP: `heap_end_ptr` is valid.
    public static let canUseHeap: UInt8 = 0x80

    /// The 4096 bytes of the zero page, ready to be written at `X86Layout.zeroPageAddress`.
    public private(set) var bytes: [UInt8]

    /// An all-zero zero page.
    public init() { bytes = [UInt8](repeating: 0, count: BootParams.size) }

    /// Copies a bzImage's setup header (from offset 0x1F1 to the end of the header, whose length
    /// is 0x202 + the byte at 0x201) into the zero page, as the boot protocol asks.
    public mutating func copySetupHeader(from image: [UInt8]) {
        guard image.count > 0x202 else { return }
        let end = min(0x202 + Int(image[0x201]), image.count, BootParams.size)
        for i in Offset.setupHeader..<end { bytes[i] = image[i] }
    }

    /// Stores a byte at `offset` (which must lie inside the page).
    public mutating func set(_ value: UInt8, at offset: Int) { bytes[offset] = value }
    /// Stores `value` little-endian in the 2 bytes at `offset` (which must lie inside the page).
    public mutating func set(_ value: UInt16, at offset: Int) { bytes.replace(at: offset, with: value) }
    /// Stores `value` little-endian in the 4 bytes at `offset` (which must lie inside the page).
    public mutating func set(_ value: UInt32, at offset: Int) { bytes.replace(at: offset, with: value) }
    /// Stores `value` little-endian in the 8 bytes at `offset` (which must lie inside the page).
    public mutating func set(_ value: UInt64, at offset: Int) { bytes.replace(at: offset, with: value) }

    /// The byte at `offset`.
    public func uint8(at offset: Int) -> UInt8 { bytes[offset] }
    /// The little-endian 16-bit field at `offset`.
    public func uint16(at offset: Int) -> UInt16 { bytes.le16(offset) }
    /// The little-endian 32-bit field at `offset`.
    public func uint32(at offset: Int) -> UInt32 { bytes.le32(offset) }
    /// The little-endian 64-bit field at `offset`.
    public func uint64(at offset: Int) -> UInt64 { bytes.le64(offset) }

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

}

/// One entry of the BIOS e820 memory map.
public struct E820Entry: Equatable, Sendable, CustomStringConvertible {
    /// The e820 region type, as the 32-bit `type` field encodes it.
    public enum Kind: UInt32, Sendable {
        /// Type 1 (`E820_TYPE_RAM`): usable RAM.
        case ram = 1
        /// Type 2 (`E820_TYPE_RESERVED`): not for the OS to use (firmware, ROM, holes).
        case reserved = 2
    }

    /// Guest physical address of the region's first byte.
    public let address: UInt64
    /// Length of the region in bytes.
    public let size: UInt64
    /// Whether the region is usable RAM or reserved.
    public let type: Kind

    /// An entry for `size` bytes of `type` starting at `address`.
    public init(address: UInt64, size: UInt64, type: Kind) {
        self.address = address
        self.size = size
        self.type = type
    }

    /// The entry as `e820 <address>+<size> <type>`, addresses in hex.
    public var description: String { "e820 \(hex(address))+\(hex(size)) \(type)" }
}

/// The e820 map of an x86_64 guest with `memorySize` bytes of RAM:
/// - RAM from 0 to the EBDA (0x9FC00),
/// - the EBDA, VGA and BIOS ROM hole up to 1 MiB, reserved,
/// - RAM from 1 MiB up to the MMIO gap (or the end of RAM),
/// - no entry for the MMIO gap (0xC000_0000 to 4 GiB: devices, IOAPIC, LAPIC),
/// - RAM from 4 GiB for what did not fit below the gap.
public enum E820Map {
    /// The map's entries in address order, for `memorySize` bytes of guest RAM.
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
    /// The e820 map has more entries (the count) than the zero page's 128.
    case tooManyE820Entries(Int)
    /// The command line is `length` bytes, more than the kernel's `limit` (without the NUL).
    case commandLineTooLong(length: Int, limit: Int)
    /// The command line contains a NUL byte, which would cut it short.
    case commandLineContainsNUL
    /// No room for an initrd of `size` bytes between the kernel's page-aligned end (`above`) and
    /// `below`, the lower of `initrd_addr_max` + 1 and the end of RAM under the MMIO gap.
    case initrdDoesNotFit(size: UInt64, below: UInt64, above: UInt64)
    /// The initrd file cannot be opened or read.
    case initrdUnreadable(SystemError)
    /// The initrd path names `kind` (a directory, FIFO, socket, device...), not a regular file.
    case initrdNotARegularFile(path: String, kind: HostFileKind)
    /// The vCPU count is outside 1...254, the range the MP table's 8-bit APIC IDs can describe.
    case tooManyVCPUsForMPTable(Int)
    /// A boot structure would be written outside guest RAM.
    case outsideGuestMemory(GuestMemoryError)

    /// A one-line explanation for the user, with a hint where one helps.
    public var description: String {
        switch self {
        case .tooManyE820Entries(let count): "\(count) e820 entries; the zero page holds 128"
        case .commandLineTooLong(let length, let limit):
            "the kernel command line is \(length) bytes; this kernel accepts at most \(limit)"
        case .commandLineContainsNUL: "the kernel command line contains a NUL byte"
        case .initrdDoesNotFit(let size, let below, let above):
            "the initrd (\(size) bytes) does not fit between the kernel's end \(hex(above)) and \(hex(below)); use more --memory"
        case .initrdUnreadable(let error): "cannot read the initrd: \(error)"
        case .initrdNotARegularFile(let path, let kind): "initrd \(path) is \(kind.rawValue), not a regular file"
        case .tooManyVCPUsForMPTable(let count): "\(count) vCPUs do not fit the MP table's 8-bit APIC IDs"
        case .outsideGuestMemory(let error): "a boot structure does not fit: \(error)"
        }
    }
}
