import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// Every fixed guest physical address, interrupt number and size of the aarch64 machine, in
/// one place. Nothing here touches KVM or the host: it is the plan the device tree describes
/// and that vCPU and device set-up will follow.
///
///     0x0000_0000  nothing (128 MiB left free: where a boot ROM or flash would go)
///     0x0800_0000  GICv3 distributor (GICD), 64 KiB
///     0x0900_0000  UART, ns16550a-compatible (the `Serial8250` device), 4 KiB window, SPI 1
///     0x0A00_0000  virtio-mmio slots: 32 of 4 KiB; slot i on SPI 16 + i
///     0x1000_0000  GICv3 redistributors: 128 KiB (RD_base and SGI_base frames) per vCPU,
///                  room for 512 vCPUs (64 MiB, to 0x1400_0000)
///     0x8000_0000  RAM. The kernel Image goes at the start (a 2 MiB-aligned base plus the
///                  Image header's text_offset, Documentation/arch/arm64/booting.rst)
///     RAM end - 2 MiB   the device tree blob (at most 2 MiB, 8-byte aligned: booting.rst)
///     below the DTB     the initrd, 4 KiB-aligned, as high as it fits
///
/// The UART is a 16550 rather than a PL011 so the machine reuses the 8250 device model the
/// x86_64 machine already has (Firecracker's aarch64 machine does the same); Linux drives it
/// with `8250_of` as `ttyS0`. Interrupt numbers are SPI numbers (GIC INTID = 32 + SPI), as the
/// device tree and KVM's irqfd routing use them.
package enum AArch64Layout {
    // MARK: Interrupt controller

    /// GICv3 distributor (GICD): one 64 KiB frame (`KVM_VGIC_V3_ADDR_TYPE_DIST`).
    package static let gicDistributorAddress = GuestAddress(0x0800_0000)
    /// Size of the distributor frame: 64 KiB.
    package static let gicDistributorSize: UInt64 = 0x1_0000
    /// GICv3 redistributors (`KVM_VGIC_V3_ADDR_TYPE_REDIST`): vCPU i's at base + i * 128 KiB.
    package static let gicRedistributorAddress = GuestAddress(0x1000_0000)
    /// Redistributor space per vCPU: 128 KiB, its 64 KiB RD_base and SGI_base frames.
    package static let gicRedistributorSizePerVCPU: UInt64 = 0x2_0000
    /// The most vCPUs the redistributor region has room for (also KVM's arm64 limit).
    package static let maximumVCPUs = 512

    /// The redistributor region for `vcpuCount` vCPUs, in bytes.
    package static func gicRedistributorSize(vcpuCount: Int) -> UInt64 {
        UInt64(vcpuCount) * gicRedistributorSizePerVCPU
    }

    // MARK: Devices

    /// The UART (ns16550a-compatible, byte-wide registers at offsets 0-7 of the window).
    package static let uartAddress = GuestAddress(0x0900_0000)
    /// Size of the UART's MMIO window: 4 KiB (only the first 8 bytes hold registers).
    package static let uartSize: UInt64 = 0x1000
    /// The UART's interrupt: SPI 1 (GIC INTID 33).
    package static let uartSPI: UInt32 = 1
    /// The UART's input clock: the classic 1.8432 MHz crystal, so divisor 1 is 115200 baud.
    package static let uartClockFrequency: UInt32 = 1_843_200

    /// Virtio-mmio devices: slot `i` at `virtioMMIOBase + i * virtioMMIOStride`, on SPI
    /// `virtioMMIOFirstSPI + i`.
    package static let virtioMMIOBase = GuestAddress(0x0A00_0000)
    /// Distance between consecutive virtio-mmio slots: 4 KiB.
    package static let virtioMMIOStride: UInt64 = 0x1000
    /// Size of each slot's register window (the device tree `reg` size): 4 KiB.
    package static let virtioMMIOSize: UInt64 = 0x1000
    /// Number of virtio-mmio slots: 32, 0x0A00_0000-0x0A01_FFFF.
    package static let virtioMMIOSlotCount = 32
    /// Slot 0's interrupt: SPI 16 (GIC INTID 48); slot `i` uses SPI 16 + i.
    package static let virtioMMIOFirstSPI: UInt32 = 16

    /// Address and SPI of virtio-mmio slot `slot` (0 ..< `virtioMMIOSlotCount`).
    package static func virtioMMIOSlot(_ slot: Int) -> (address: GuestAddress, spi: UInt32) {
        precondition((0..<virtioMMIOSlotCount).contains(slot), "virtio-mmio slot \(slot) out of range")
        return (GuestAddress(virtioMMIOBase.rawValue + UInt64(slot) * virtioMMIOStride), virtioMMIOFirstSPI + UInt32(slot))
    }

    /// SPIs the in-kernel GIC must provide for every device above (SPIs 0 ..< this).
    package static let requiredSPICount = Int(virtioMMIOFirstSPI) + virtioMMIOSlotCount

    // MARK: Architected interrupts (PPIs, fixed by the architecture and KVM)

    /// Generic timer PPIs in the order the `arm,armv8-timer` binding lists them: secure
    /// physical (INTID 29), non-secure physical (30), virtual (27), hypervisor (26).
    package static let timerPPIs: [UInt32] = [13, 14, 11, 10]

    // MARK: RAM and boot images

    /// Guest RAM starts at 2 GiB, as on Firecracker's and crosvm's aarch64 machines; all
    /// devices sit below it.
    package static let ramStart = GuestAddress(0x8000_0000)
    /// RAM below KVM's default 40-bit IPA limit (1 TiB) minus the 2 GiB under `ramStart`.
    package static let maximumMemorySize: UInt64 = (1 << 40) - 0x8000_0000
    /// 2 MiB for the kernel's 2 MiB-aligned load base, 2 MiB for the device tree.
    package static let minimumMemorySize: UInt64 = 4 << 20

    /// Where the kernel Image's 2 MiB-aligned base goes.
    package static let kernelBase = ramStart

    /// The device tree gets the last 2 MiB of RAM (the arm64 boot protocol's size limit).
    package static let deviceTreeMaxSize: UInt64 = 2 << 20

    /// Where the device tree blob goes for a guest with `memorySize` bytes of RAM (at least
    /// `deviceTreeMaxSize`; `AArch64MachineDescription` checks it is at least `minimumMemorySize`).
    package static func deviceTreeAddress(memorySize: UInt64) -> GuestAddress {
        GuestAddress(ramStart.rawValue + memorySize - deviceTreeMaxSize)
    }

    /// The initrd's alignment (a page).
    package static let initrdAlignment: UInt64 = 0x1000

    /// Where an initrd of `size` bytes goes: page-aligned, right below the device tree; nil if
    /// it does not fit above `kernelBase` plus `kernelSize`. Where the kernel is known, its
    /// loaded size goes in `kernelSize` so the two cannot overlap.
    package static func initrdAddress(size: UInt64, memorySize: UInt64, kernelSize: UInt64 = 0) -> GuestAddress? {
        guard memorySize >= deviceTreeMaxSize else { return nil }
        let top = deviceTreeAddress(memorySize: memorySize).rawValue
        let room = top - kernelBase.rawValue
        guard kernelSize <= room, size <= room - kernelSize else { return nil }
        let start = (top - size) & ~(initrdAlignment - 1)
        return start >= kernelBase.rawValue + kernelSize ? GuestAddress(start) : nil
    }
}
