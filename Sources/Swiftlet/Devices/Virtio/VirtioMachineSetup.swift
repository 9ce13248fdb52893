import CKVM
import Glibc
import Synchronization

/// Where a virtio-mmio device sits: its 4 KiB window on the MMIO bus and its interrupt.
public struct VirtioMMIOSlot: Equatable, Sendable {
    /// The slot's place in the machine's one sequence of virtio devices, from 0.
    public let index: Int
    /// Guest physical address of the device's register window (`VirtioMMIORegisters.windowSize` bytes).
    public let address: GuestAddress
    /// The interrupt line (GSI) the device raises through its irqfd.
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
/// A virtio-net device on the MMIO bus.
public typealias VirtioNetTransport = VirtioMMIOTransport<VirtioNet>
/// A virtio-rng device on the MMIO bus.
public typealias VirtioRNGTransport = VirtioMMIOTransport<VirtioRNG>

/// Wiring virtio devices into a machine.
enum VirtioMachineSetup {
    /// Which slot each virtio device of a configuration takes: one sequence, disks first (in
    /// `--disk` order), then network interfaces (in `--net` order), then the rng.
    struct SlotPlan: Equatable {
        let disks: Range<Int>
        let networks: Range<Int>
        let rng: Int?

        init(_ configuration: MachineConfiguration) {
            disks = 0..<configuration.disks.count
            networks = disks.upperBound..<(disks.upperBound + configuration.networks.count)
            rng = configuration.rng ? networks.upperBound : nil
        }

        var count: Int { networks.upperBound + (rng == nil ? 0 : 1) }
        /// Every slot in use, in order (for the kernel command line).
        var slots: [VirtioMMIOSlot] { (0..<count).map { VirtioMMIOSlot(x86: $0) } }
    }

    /// Opens every disk and puts a virtio-blk device for it in the next slot from `firstSlot`:
    /// on `bus` at the slot's address, its interrupt an irqfd on the slot's GSI, its queue
    /// notifications an ioeventfd on QueueNotify (datamatch = queue index) served by `eventLoop`.
    static func attachDisks(
        _ disks: [DiskConfiguration], firstSlot: Int = 0, vm: VirtualMachine, memory: GuestMemory, eventLoop: EventLoop,
        bus: inout Bus
    ) throws(VirtioSetupError) -> [VirtioBlockTransport] {
        var transports: [VirtioBlockTransport] = []
        for (index, disk) in disks.enumerated() {
            let image: RawDiskImage
            do { image = try RawDiskImage(path: disk.path, readOnly: disk.readOnly, directIO: disk.directIO) } catch {
                throw .disk(index: index, error)
            }
            let device = VirtioBlock(backend: image, readOnly: disk.readOnly, identifier: disk.id ?? "disk\(index)")
            let slot = VirtioMMIOSlot(x86: firstSlot + index)
            transports.append(
                try attach(device, slot: slot, name: "virtio-blk \(index) (\(disk.path))", vm: vm, memory: memory, eventLoop: eventLoop, bus: &bus))
        }
        return transports
    }

    /// Opens every tap and puts a virtio-net device for it in the next slot from `firstSlot`.
    /// Besides the queue eventfds, the event loop watches the tap (`TapReceivePump`).
    static func attachNetworks(
        _ networks: [NetworkConfiguration], firstSlot: Int, vm: VirtualMachine, memory: GuestMemory, eventLoop: EventLoop,
        bus: inout Bus
    ) throws(VirtioSetupError) -> [VirtioNetTransport] {
        var transports: [VirtioNetTransport] = []
        for (index, network) in networks.enumerated() {
            let tap: TapDevice
            do { tap = try TapDevice(name: network.tap) } catch { throw .network(index: index, error) }
            let device = VirtioNet(backend: tap, mac: network.effectiveMAC, offloads: network.offloads)
            let pump = TapReceivePump(tapDescriptor: tap.fileDescriptor, eventLoop: eventLoop)
            let transport = try attach(
                device, slot: VirtioMMIOSlot(x86: firstSlot + index), name: "virtio-net \(index) (\(tap.name))", vm: vm,
                memory: memory, eventLoop: eventLoop, bus: &bus
            ) { transport, queue in
                if queue == VirtioNet.receiveQueue { pump.serve(transport) } else { transport.processQueue(queue) }
            }
            do throws(SystemError) {
                // Not watched until the driver offers receive buffers.
                try eventLoop.add(tap.fileDescriptor, events: 0) { events in pump.tapReady(events, transport: transport) }
            } catch {
                throw .host(error)
            }
            transports.append(transport)
        }
        return transports
    }

    /// Puts `device` at `slot`.
    /// `serve(transport, queue)` runs on the event loop when queue `queue` is notified (by
    /// default `processQueue(queue)`).
    static func attach<Device: VirtioDevice>(
        _ device: sending Device, slot: VirtioMMIOSlot, name: String, vm: VirtualMachine, memory: GuestMemory,
        eventLoop: EventLoop, bus: inout Bus,
        serve: @escaping @Sendable (VirtioMMIOTransport<Device>, Int) -> Void = { $0.processQueue($1) }
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
                    serve(transport, queue)
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

/// Feeds a virtio-net device's receive queue from its tap, on the event-loop thread.
///
/// The tap is watched (EPOLLIN) only while the driver has receive buffers the device could
/// not fill (the queue ended `.deferred`). When the driver has none (`.drained`), the loop stops
/// reading the tap and frames wait there (the kernel queues about 500 per tap, then drops and
/// counts them on the interface) until the driver adds buffers and notifies the queue, which
/// serves it again. A tap that reports an error or hang-up (its interface was deleted) is no
/// longer watched and the guest sees its link go down.
final class TapReceivePump: Sendable {
    private struct State {
        var watching = false
        var detached = false
    }

    private let tapDescriptor: Int32
    private let eventLoop: EventLoop
    private let state = Mutex(State())

    init(tapDescriptor: Int32, eventLoop: EventLoop) {
        self.tapDescriptor = tapDescriptor
        self.eventLoop = eventLoop
    }

    /// The driver notified the receive queue, or the tap has frames: fill receive buffers.
    func serve(_ transport: VirtioNetTransport) {
        let service = transport.processQueue(VirtioNet.receiveQueue)
        if transport.withDevice({ $0.backendFailure }) != nil {
            detach(transport)
            return
        }
        // A yielded queue is served again from its notifier; the tap's watching stays as it is.
        guard service != .yielded else { return }
        let change = state.withLock { state -> Bool? in
            let watch = service == .deferred
            guard !state.detached, watch != state.watching else { return nil }
            state.watching = watch
            return watch
        }
        if let watch = change { eventLoop.modify(tapDescriptor, events: watch ? EPOLLIN.rawValue : 0) }
        if service == .drained && tapHasFrames { transport.updateDevice { $0.countReceiveStall() } }
    }

    /// Whether a frame is waiting in the tap (a poll that does not wait).
    private var tapHasFrames: Bool {
        var descriptor = pollfd(fd: tapDescriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1 && descriptor.revents & Int16(POLLIN) != 0
    }

    /// The event loop's handler for the tap descriptor.
    func tapReady(_ events: UInt32, transport: VirtioNetTransport) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            detach(transport)
            return
        }
        serve(transport)
    }

    private func detach(_ transport: VirtioNetTransport) {
        let first = state.withLock { state -> Bool in
            defer { state.detached = true }
            return !state.detached
        }
        guard first else { return }
        eventLoop.remove(tapDescriptor)
        transport.setLinkUp(false)
    }
}

extension VirtioMMIOTransport where Device == VirtioNet {
    /// Changes the link status in the configuration space (VIRTIO_NET_S_LINK_UP) and tells the
    /// driver with a configuration-change interrupt.
    public func setLinkUp(_ up: Bool) {
        let configuration = updateDevice { device -> [UInt8] in
            device.setLinkUp(up)
            return device.configurationSpace
        }
        updateConfiguration(configuration)
    }

    /// Frames moved and dropped so far.
    public var networkStatistics: VirtioNet.Statistics { withDevice { $0.statistics } }
}

/// A virtio device that could not be added to the machine.
public enum VirtioSetupError: Error, Sendable, CustomStringConvertible {
    /// The image of disk `index` (from 0, in `--disk` order) cannot be used.
    case disk(index: Int, DiskImageError)
    /// The tap of network interface `index` (from 0, in `--net` order) cannot be used.
    case network(index: Int, TapError)
    /// Creating an eventfd, registering an irqfd or ioeventfd with KVM, or adding a descriptor to the
    /// event loop failed.
    case host(SystemError)
    /// The device's window could not be registered on the MMIO bus (it overlaps another device).
    case bus(BusError)

    /// A one-line explanation naming the disk or interface by index, when there is one.
    public var description: String {
        switch self {
        case .disk(let index, let error): "disk \(index): \(error)"
        case .network(let index, let error): "network interface \(index): \(error)"
        case .host(let error): "virtio device: \(error)"
        case .bus(let error): "virtio device: \(error)"
        }
    }
}
