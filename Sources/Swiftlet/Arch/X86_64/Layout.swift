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
    public static let gdtAddress = GuestAddress(0x500)
    public static let idtAddress = GuestAddress(0x520)
    public static let zeroPageAddress = GuestAddress(0x7000)
    public static let bootStackPointer: UInt64 = 0x8FF0
    public static let pml4Address = GuestAddress(0x9000)
    public static let pdptAddress = GuestAddress(0xA000)
    public static let pageDirectoryAddress = GuestAddress(0xB000)
    /// The boot identity map covers the first 4 GiB with 2 MiB pages (the development host
    /// does not support 1 GiB pages in guest page tables).
    public static let identityMappedBytes: UInt64 = 4 << 30
    public static let realModeLoadAddress = GuestAddress(0x10000)
    public static let commandLineAddress = GuestAddress(0x20000)
    public static let commandLineMaxSize = 0x10000
    public static let ebdaStart = GuestAddress(0x9FC00)
    /// The BIOS data area word holding the EBDA's segment (0x9FC00 >> 4), as a PC BIOS sets it.
    public static let biosDataAreaEBDASegment = GuestAddress(0x40E)
    public static let highMemoryStart = GuestAddress(0x10_0000)

    /// Guest RAM ends at the MMIO gap; larger guests continue at `ramAbove4GStart`.
    public static let mmioGapStart = GuestAddress(0xC000_0000)
    public static let mmioGapEnd = GuestAddress(0x1_0000_0000)
    public static let ramAbove4GStart = GuestAddress(0x1_0000_0000)

    /// The MMIO test device (`MMIOTestDevice`) used by the tiny guests.
    public static let mmioTestDeviceAddress = GuestAddress(0xC000_0000)
    public static let mmioTestDeviceSize: UInt64 = 0x1000
    /// Virtio-mmio devices: slot `i` at `virtioMMIOBase + i * virtioMMIOStride`.
    public static let virtioMMIOBase = GuestAddress(0xD000_0000)
    public static let virtioMMIOStride: UInt64 = 0x1000
    /// Slot `i` interrupts on GSI `virtioFirstGSI + i`: IOAPIC pins 5-23 (pin 4 is COM1), edge
    /// triggered through an irqfd. At most `virtioMMIOSlotCount` slots.
    public static let virtioFirstGSI: UInt32 = 5
    public static let virtioMMIOSlotCount = 19

    public static let ioapicAddress = GuestAddress(0xFEC0_0000)
    public static let localAPICAddress = GuestAddress(0xFEE0_0000)
    public static let identityMapPageAddress = GuestAddress(0xFFFB_C000)
    public static let tssAddress = GuestAddress(0xFFFB_D000)

    // Port I/O.
    /// COM1: 8250 UART data/IER/... at 0x3F8-0x3FF, interrupt on IRQ 4.
    public static let serialPort: UInt16 = 0x3F8
    public static let serialIRQ: UInt32 = 4
    /// i8042 keyboard controller data (0x60) and command/status (0x64) ports.
    public static let i8042DataPort: UInt16 = 0x60
    public static let i8042CommandPort: UInt16 = 0x64
    /// Boot timer (`BootTimer`): the guest writes the byte 123 here when it is ready.
    public static let bootTimerPort: UInt16 = 0x440
}
