import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Every fixed guest physical address and port of the x86_64 machine, in one place.
///
/// Low memory (below 1 MiB) holds what the VMM writes for the guest before it starts; the
/// kernel goes at 1 MiB (bzImage) or at its own physical addresses (ELF, normally 16 MiB).
/// Between 3 GiB and 4 GiB is the MMIO gap: no RAM there, only devices, the IOAPIC and LAPIC.
///
///     0x0000_0500  GDT (4 entries)
///     0x0000_0520  IDT (empty; the guest loads its own)
///     0x0000_7000  zero page (Linux boot_params)
///     0x0000_8FF0  initial stack pointer (grows down)
///     0x0000_9000  PML4, then PDPT at 0xA000, then 4 page directories 0xB000-0xEFFF
///     0x0001_0000  real-mode load address of flat binaries (CS:IP = 1000:0000)
///     0x0002_0000  kernel command line
///     0x0009_FC00  EBDA start; 0xA0000-0xFFFFF is the VGA/ROM hole (not RAM in the e820 map)
///     0x0010_0000  start of high memory: bzImage protected-mode kernel
///     0xC000_0000  MMIO gap start: Swiftlet's MMIO devices from here
///     0xD000_0000  virtio-mmio devices, 4 KiB each (slot i: GSI 5 + i)
///     0xFEC0_0000  IOAPIC, 0xFEE0_0000 local APIC (emulated by KVM)
///     0xFFFB_C000  KVM identity-map page, then 0xFFFB_D000 three TSS pages
///     0x1_0000_0000  RAM above 4 GiB for guests larger than the gap start
public enum X86Layout {
    /// The boot GDT (`BootGDT`): four 8-byte descriptors, 0x500-0x51F.
    public static let gdtAddress = GuestAddress(0x500)
    /// The boot IDT: one zeroed 8-byte entry (limit 7); the guest loads its own.
    public static let idtAddress = GuestAddress(0x520)
    /// The Linux zero page (`BootParams`, 4 KiB); its address is passed in RSI at the 64-bit entry.
    public static let zeroPageAddress = GuestAddress(0x7000)
    /// Initial RSP and RBP of a long-mode entry (16-byte aligned); the stack grows down.
    public static let bootStackPointer: UInt64 = 0x8FF0
    /// The boot identity map's PML4 (loaded into CR3).
    public static let pml4Address = GuestAddress(0x9000)
    /// The boot identity map's page-directory-pointer table, referenced by PML4 entry 0.
    public static let pdptAddress = GuestAddress(0xA000)
    /// First of four page directories (0xB000-0xEFFF), each mapping 1 GiB with 2 MiB pages.
    public static let pageDirectoryAddress = GuestAddress(0xB000)
    /// The boot identity map covers the first 4 GiB with 2 MiB pages (the development host
    /// does not support 1 GiB pages in guest page tables).
    public static let identityMappedBytes: UInt64 = 4 << 30
    /// Where flat real-mode binaries are loaded (at most 64 KiB) and start, at CS:IP = 1000:0000.
    public static let realModeLoadAddress = GuestAddress(0x10000)
    /// The NUL-terminated kernel command line (`cmd_line_ptr`).
    public static let commandLineAddress = GuestAddress(0x20000)
    /// Bytes reserved for the command line, terminating NUL included: 64 KiB.
    public static let commandLineMaxSize = 0x10000
    /// Start of the Extended BIOS Data Area (1 KiB below 640 KiB): holds the MP table; reserved up
    /// to 1 MiB in the e820 map.
    public static let ebdaStart = GuestAddress(0x9FC00)
    /// The BIOS data area word holding the EBDA's segment (0x9FC00 >> 4), as a PC BIOS sets it.
    public static let biosDataAreaEBDASegment = GuestAddress(0x40E)
    /// 1 MiB: a bzImage's kernel goes here; below it are the VMM's boot structures.
    public static let highMemoryStart = GuestAddress(0x10_0000)

    /// Guest RAM ends at the MMIO gap; larger guests continue at `ramAbove4GStart`.
    public static let mmioGapStart = GuestAddress(0xC000_0000)
    /// End of the MMIO gap (exclusive): 4 GiB.
    public static let mmioGapEnd = GuestAddress(0x1_0000_0000)
    /// Where RAM that does not fit below `mmioGapStart` continues: 4 GiB.
    public static let ramAbove4GStart = GuestAddress(0x1_0000_0000)

    /// The MMIO test device (`MMIOTestDevice`) used by the tiny guests.
    public static let mmioTestDeviceAddress = GuestAddress(0xC000_0000)
    /// Length of the MMIO test device's window: 4 KiB (registers at 0x00, 0x08 and 0x10).
    public static let mmioTestDeviceSize: UInt64 = 0x1000
    /// Virtio-mmio devices: slot `i` at `virtioMMIOBase + i * virtioMMIOStride`.
    public static let virtioMMIOBase = GuestAddress(0xD000_0000)
    /// Distance between consecutive virtio-mmio slots: 4 KiB, one register window
    /// (`VirtioMMIORegisters.windowSize`) each.
    public static let virtioMMIOStride: UInt64 = 0x1000
    /// Slot `i` interrupts on GSI `virtioFirstGSI + i`: IOAPIC pins 5-23 (pin 4 is COM1), edge
    /// triggered through an irqfd. At most `virtioMMIOSlotCount` slots.
    public static let virtioFirstGSI: UInt32 = 5
    /// Number of virtio-mmio slots: one per IOAPIC pin 5-23.
    public static let virtioMMIOSlotCount = 19

    /// Virtio-mmio slot `index` (window `virtioMMIOBase + index * virtioMMIOStride`, GSI
    /// `virtioFirstGSI + index`), or nil past the last of the `virtioMMIOSlotCount` slots.
    public static func virtioSlot(_ index: Int) -> VirtioMMIOSlot? {
        guard (0..<virtioMMIOSlotCount).contains(index) else { return nil }
        return VirtioMMIOSlot(
            index: index, address: GuestAddress(virtioMMIOBase.rawValue + UInt64(index) * virtioMMIOStride),
            gsi: virtioFirstGSI + UInt32(index))
    }

    /// KVM's in-kernel IOAPIC (24 pins), at the standard PC address; listed in the MP table.
    public static let ioapicAddress = GuestAddress(0xFEC0_0000)
    /// The local APICs (emulated by KVM), at the architectural default `IA32_APIC_BASE`.
    public static let localAPICAddress = GuestAddress(0xFEE0_0000)
    /// The one page KVM needs for its real-mode identity page table on Intel
    /// (`KVM_SET_IDENTITY_MAP_ADDR`).
    public static let identityMapPageAddress = GuestAddress(0xFFFB_C000)
    /// Three pages for the real-mode TSS KVM needs on Intel (`KVM_SET_TSS_ADDR`).
    public static let tssAddress = GuestAddress(0xFFFB_D000)

    // Port I/O.
    /// COM1: 8250 UART data/IER/... at 0x3F8-0x3FF, interrupt on IRQ 4.
    public static let serialPort: UInt16 = 0x3F8
    /// COM1's interrupt: ISA IRQ 4, IOAPIC pin (GSI) 4.
    public static let serialIRQ: UInt32 = 4
    /// i8042 keyboard controller data (0x60) and command/status (0x64) ports.
    public static let i8042DataPort: UInt16 = 0x60
    /// The i8042 command port (writes) and status register (reads).
    public static let i8042CommandPort: UInt16 = 0x64
    /// Boot timer (`BootTimer`): the guest writes the byte 123 here when it is ready.
    public static let bootTimerPort: UInt16 = 0x440
    /// Exit status (`ExitStatusPort`): the guest's init writes its command's status (one byte).
    public static let exitStatusPort: UInt16 = 0x441
}
