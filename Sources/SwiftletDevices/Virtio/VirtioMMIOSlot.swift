import CHost
import SwiftletHost
import SwiftletMemory

/// Where a virtio-mmio device sits: its 4 KiB window on the MMIO bus and its interrupt. The
/// architecture's layout hands slots out (`X86Layout.virtioSlot(_:)`).
public struct VirtioMMIOSlot: Equatable, Sendable {
    /// The slot's place in the machine's one sequence of virtio devices, from 0.
    public let index: Int
    /// Guest physical address of the device's register window (`VirtioMMIORegisters.windowSize` bytes).
    public let address: GuestAddress
    /// The interrupt line (GSI) the device raises through its irqfd.
    public let gsi: UInt32

    /// Slot `index` at `address`, interrupting on `gsi`.
    public init(index: Int, address: GuestAddress, gsi: UInt32) {
        self.index = index
        self.address = address
        self.gsi = gsi
    }

    /// The word of the Linux command line that makes the guest's virtio_mmio driver probe the
    /// device (`virtio_mmio.device=SIZE@ADDRESS:IRQ`).
    public var commandLineWord: String {
        "virtio_mmio.device=\(VirtioMMIORegisters.windowSize >> 10)K@0x\(String(address.rawValue, radix: 16)):\(gsi)"
    }
}

/// A virtio-blk device on the MMIO bus.
public typealias VirtioBlockTransport = VirtioMMIOTransport<VirtioBlock>
/// A virtio-net device on the MMIO bus.
public typealias VirtioNetTransport = VirtioMMIOTransport<VirtioNet>
/// A virtio-rng device on the MMIO bus.
public typealias VirtioRNGTransport = VirtioMMIOTransport<VirtioRNG>
/// A virtio-vsock device on its virtio-mmio transport.
public typealias VirtioVsockTransport = VirtioMMIOTransport<VirtioVsock>
