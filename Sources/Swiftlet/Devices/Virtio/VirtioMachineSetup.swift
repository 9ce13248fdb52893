import CKVM

/// Where a virtio-mmio device sits: its 4 KiB window on the MMIO bus and its interrupt.
public struct VirtioMMIOSlot: Equatable, Sendable {
    public let index: Int
    public let address: GuestAddress
    public let gsi: UInt32

    /// Slot `index` of the x86 layout (`X86Layout.virtioMMIOBase`, `virtioFirstGSI`).
    public init(x86 index: Int) {
        self.index = index
        address = GuestAddress(X86Layout.virtioMMIOBase.rawValue + UInt64(index) * X86Layout.virtioMMIOStride)
        gsi = X86Layout.virtioFirstGSI + UInt32(index)
    }

    /// The word of the Linux command line that makes the guest's virtio_mmio driver probe the
    /// device (`virtio_mmio.device=SIZE@ADDRESS:IRQ`).
    public var commandLineWord: String {
        "virtio_mmio.device=\(VirtioMMIORegisters.windowSize >> 10)K@0x\(String(address.rawValue, radix: 16)):\(gsi)"
    }
}

/// A virtio-blk device on the MMIO bus.
public typealias VirtioBlockTransport = VirtioMMIOTransport<VirtioBlock>

/// Wiring virtio devices into a machine.
enum VirtioMachineSetup {
    /// Opens every disk and puts a virtio-blk device for it in the next slot: on `bus` at the
    /// slot's address, its interrupt an irqfd on the slot's GSI, its queue notifications an
    /// ioeventfd on QueueNotify (datamatch = queue index) served by `eventLoop`.
    static func attachDisks(
        _ disks: [DiskConfiguration], vm: VirtualMachine, memory: GuestMemory, eventLoop: EventLoop, bus: inout Bus
    ) throws(VirtioSetupError) -> [VirtioBlockTransport] {
        var transports: [VirtioBlockTransport] = []
        for (index, disk) in disks.enumerated() {
            let image: RawDiskImage
            do { image = try RawDiskImage(path: disk.path, readOnly: disk.readOnly, directIO: disk.directIO) } catch {
                throw .disk(index: index, error)
            }
            let device = VirtioBlock(backend: image, readOnly: disk.readOnly, identifier: disk.id ?? "disk\(index)")
            let slot = VirtioMMIOSlot(x86: index)
            transports.append(
                try attach(device, slot: slot, name: "virtio-blk \(index) (\(disk.path))", vm: vm, memory: memory, eventLoop: eventLoop, bus: &bus))
        }
        return transports
    }

    /// Puts `device` at `slot`.
    static func attach<Device: VirtioDevice>(
        _ device: sending Device, slot: VirtioMMIOSlot, name: String, vm: VirtualMachine, memory: GuestMemory,
        eventLoop: EventLoop, bus: inout Bus
    ) throws(VirtioSetupError) -> VirtioMMIOTransport<Device> {
        let interrupt: EventFD
        let notifiers: [EventFD]
        do throws(SystemError) {
            interrupt = try EventFD()
            try vm.registerIRQFD(interrupt, gsi: slot.gsi)
            notifiers = try (0..<device.queueCount).map { (_) throws(SystemError) in try EventFD() }
        } catch {
            throw .host(error)
        }
        let transport = VirtioMMIOTransport(
            device: device, memory: memory, notifiers: notifiers.map { EventFDSignal(eventfd: $0) },
            interrupt: EventFDSignal(eventfd: interrupt))
        do throws(SystemError) {
            for (queue, notifier) in notifiers.enumerated() {
                try vm.registerIOEventFD(
                    notifier, space: .mmio, address: slot.address.rawValue + VirtioMMIORegisters.Offset.queueNotify,
                    length: 4, matching: UInt64(queue))
                try eventLoop.add(notifier.rawValue, events: EPOLLIN.rawValue) { _ in
                    _ = try? notifier.consume()
                    transport.processQueue(queue)
                }
            }
        } catch {
            throw .host(error)
        }
        do throws(BusError) {
            try bus.register(transport, base: slot.address.rawValue, length: VirtioMMIORegisters.windowSize, name: name)
        } catch {
            throw .bus(error)
        }
        return transport
    }
}

/// A virtio device that could not be added to the machine.
public enum VirtioSetupError: Error, Sendable, CustomStringConvertible {
    case disk(index: Int, DiskImageError)
    case host(SystemError)
    case bus(BusError)

    public var description: String {
        switch self {
        case .disk(let index, let error): "disk \(index): \(error)"
        case .host(let error): "virtio device: \(error)"
        case .bus(let error): "virtio device: \(error)"
        }
    }
}
