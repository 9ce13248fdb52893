import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// One device the device manager attached: what it is, where the guest finds it, and the
/// command-line word (if any) that tells the guest about it. The list of these is the
/// machine's device inventory, in attach order (what a snapshot walks).
public struct AttachedDevice: Sendable, Equatable {
    /// The kinds of device a machine can have.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// The COM1 8250 UART carrying the console.
        case serial
        /// The i8042 keyboard controller (its reset line ends the VM).
        case i8042
        /// The boot-timer port (`--boot-timer`).
        case bootTimer = "boot timer"
        /// The exit-status port written by Swiftlet's init.
        case exitStatus = "exit status"
        /// The MMIO test device of the tiny test guests (tests only).
        case mmioTestDevice = "MMIO test device"
        /// A virtio-blk disk.
        case virtioBlock = "virtio-blk"
        /// A virtio-net interface over a tap.
        case virtioNet = "virtio-net"
        /// The virtio-rng entropy device.
        case virtioRNG = "virtio-rng"
        /// The virtio-vsock device over host Unix sockets.
        case virtioVsock = "virtio-vsock"
    }

    /// Where a device's registers are.
    public enum Window: Sendable, Equatable {
        /// `count` I/O ports from `base`.
        case ports(base: UInt16, count: UInt16)
        /// `length` bytes of MMIO space from `base`.
        case mmio(base: GuestAddress, length: UInt64)
    }

    /// What the device is.
    public let kind: Kind
    /// Its name in diagnostics and bus errors (e.g. `virtio-blk 0 (disk.img)`).
    public let name: String
    /// Its register window.
    public let window: Window
    /// The interrupt line (GSI) it raises, if any.
    public let gsi: UInt32?
    /// The word the kernel command line gets for it (`virtio_mmio.device=...`), if the guest
    /// cannot discover the device otherwise.
    public let commandLineWord: String?
}

/// Attaches devices to a machine being built: for each device it takes the register window and
/// interrupt from the layout (`X86Layout`), registers the bus range, and for virtio devices the
/// irqfd, the queue ioeventfds and their event-loop handlers; it records what it attached
/// (`attached`), from which the kernel command line's device words come.
///
/// One function per device kind. Used only while the machine is built (one thread); the buses
/// it fills are then handed to the exit dispatcher, read-only. `detachAll()` removes every
/// event-loop handler it added (the builder's rollback, and the machine's teardown): the
/// handlers hold the devices, and some devices hold the loop.
final class DeviceManager {
    private let vm: VirtualMachine
    private let memory: GuestMemory
    private let eventLoop: EventLoop
    /// Port I/O bus: the legacy devices.
    private(set) var portIO = Bus()
    /// MMIO bus: the virtio-mmio windows and the MMIO test device.
    private(set) var mmio = Bus()
    /// Every device attached so far, in attach order.
    private(set) var attached: [AttachedDevice] = []
    /// Descriptors whose handlers this manager added to the event loop.
    private var watched: [Int32] = []
    /// The next free virtio-mmio slot.
    private var nextVirtioSlot = 0

    init(vm: VirtualMachine, memory: GuestMemory, eventLoop: EventLoop) {
        self.vm = vm
        self.memory = memory
        self.eventLoop = eventLoop
    }

    /// The kernel command line's words for the attached devices, in attach order.
    var commandLineWords: [String] { attached.compactMap(\.commandLineWord) }

    // MARK: Legacy devices

    /// The COM1 UART at `X86Layout.serialPort`, interrupting on `X86Layout.serialIRQ`;
    /// `inputRoom` is signalled when its full receive FIFO gets room (console input waits on it).
    /// With `state`, the port is restored in that state (a snapshot's).
    func attachSerial(
        output: any SerialOutput, inputRoom: (any SerialInputRoomSignal)?, state: SerialPort.State? = nil
    ) throws(DeviceAttachError) -> SerialPort {
        let line = KVMInterruptLine(vm: vm, gsi: X86Layout.serialIRQ)
        let serial: SerialPort
        if let state {
            do {
                serial = try SerialPort.restore(
                    from: state, with: SerialPort.Resources(output: output, interruptLine: line), inputRoom: inputRoom)
            } catch { throw .restore(error) }
        } else {
            serial = SerialPort(output: output, interruptLine: line, inputRoom: inputRoom)
        }
        try attachPorts(
            serial, kind: .serial, name: "serial (COM1)", base: X86Layout.serialPort, count: 8, gsi: X86Layout.serialIRQ)
        return serial
    }

    /// The i8042 at ports 0x60-0x64; `reset` runs when the guest pulses the CPU reset line.
    /// With `state`, the controller is restored in that state.
    func attachI8042(state: I8042? = nil, reset: @escaping @Sendable () -> Void) throws(DeviceAttachError) -> I8042Device {
        let device: I8042Device
        if let state {
            do { device = try I8042Device.restore(from: state, with: I8042Device.Resources(resetHandler: reset)) } catch {
                throw .restore(error)
            }
        } else {
            device = I8042Device(resetHandler: reset)
        }
        let count = X86Layout.i8042CommandPort - X86Layout.i8042DataPort + 1
        try attachPorts(device, kind: .i8042, name: "i8042", base: X86Layout.i8042DataPort, count: count, gsi: nil)
        return device
    }

    /// The boot-timer port (`X86Layout.bootTimerPort`).
    /// With `state`, the timer keeps the boot time it recorded.
    func attachBootTimer(state: BootTimer.State? = nil) throws(DeviceAttachError) -> BootTimer {
        let timer = BootTimer(state: state ?? BootTimer.State())
        try attachPorts(timer, kind: .bootTimer, name: "boot timer", base: X86Layout.bootTimerPort, count: 1, gsi: nil)
        return timer
    }

    /// The exit-status port (`X86Layout.exitStatusPort`).
    /// With `state`, the port keeps the status it was given.
    func attachExitStatus(state: ExitStatusPort.State? = nil) throws(DeviceAttachError) -> ExitStatusPort {
        let port: ExitStatusPort
        if let state {
            do { port = try ExitStatusPort.restore(from: state, with: ()) } catch { throw .restore(error) }
        } else {
            port = ExitStatusPort()
        }
        try attachPorts(port, kind: .exitStatus, name: "exit status", base: X86Layout.exitStatusPort, count: 1, gsi: nil)
        return port
    }

    /// The MMIO test device at `X86Layout.mmioTestDeviceAddress` (the tiny test guests').
    func attachMMIOTestDevice() throws(DeviceAttachError) -> MMIOTestDevice {
        let device = MMIOTestDevice()
        let base = X86Layout.mmioTestDeviceAddress
        do throws(BusError) {
            try mmio.register(
                device, base: base.rawValue, length: X86Layout.mmioTestDeviceSize,
                name: AttachedDevice.Kind.mmioTestDevice.rawValue)
        } catch {
            throw .bus(error)
        }
        attached.append(
            AttachedDevice(
                kind: .mmioTestDevice, name: AttachedDevice.Kind.mmioTestDevice.rawValue,
                window: .mmio(base: base, length: X86Layout.mmioTestDeviceSize), gsi: nil, commandLineWord: nil))
        return device
    }

    private func attachPorts(
        _ device: any BusDevice, kind: AttachedDevice.Kind, name: String, base: UInt16, count: UInt16, gsi: UInt32?
    ) throws(DeviceAttachError) {
        do throws(BusError) {
            try portIO.register(device, base: UInt64(base), length: UInt64(count), name: name)
        } catch {
            throw .bus(error)
        }
        attached.append(
            AttachedDevice(kind: kind, name: name, window: .ports(base: base, count: count), gsi: gsi, commandLineWord: nil))
    }

    // MARK: Virtio devices

    /// Opens the disk image and attaches a virtio-blk device for it in the next slot.
    /// `index` is the disk's place in `--disk` order (its default serial is `disk<index>`).
    /// With `state`, the device and its transport are restored in that state over the image.
    func attachDisk(
        _ disk: DiskConfiguration, index: Int, state: VirtioDeviceState<VirtioBlock>? = nil
    ) throws(DeviceAttachError) -> VirtioBlockTransport {
        let image: RawDiskImage
        do { image = try RawDiskImage(path: disk.path, readOnly: disk.readOnly, directIO: disk.directIO) } catch {
            throw .disk(index: index, error)
        }
        let name = "virtio-blk \(index) (\(disk.path))"
        let limit = disk.rateLimit.flatMap { $0.isUnlimited ? nil : $0 }
        let retry = try limit.map { (_) throws(DeviceAttachError) in [0: try makeRetryTimer()] } ?? [:]
        if let state {
            let transport = try attachVirtio(
                queueCount: state.transport.queues.count, kind: .virtioBlock, name: name,
                restoring: state, resources: image, retryTimers: retry)
            // The limiter is configuration, not saved state: it starts again with full buckets.
            if let limit { transport.updateDevice { $0.rateLimiter = RateLimiter(limit) } }
            return transport
        }
        var device = VirtioBlock(backend: image, readOnly: disk.readOnly, identifier: disk.id ?? "disk\(index)")
        device.rateLimiter = limit.map { RateLimiter($0) }
        return try attachVirtio(device, kind: .virtioBlock, name: name, retryTimers: retry)
    }

    /// A timer for a rate-limited queue (served again when it expires).
    private func makeRetryTimer() throws(DeviceAttachError) -> LoopTimer {
        do { return try LoopTimer() } catch { throw .host(error) }
    }

    /// Opens the tap and attaches a virtio-net device for it in the next slot. Besides the
    /// queue eventfds, the event loop watches the tap (`TapReceivePump`).
    /// With `state`, the device and its transport are restored in that state over the tap.
    func attachNetwork(
        _ network: NetworkConfiguration, index: Int, state: VirtioDeviceState<VirtioNet>? = nil
    ) throws(DeviceAttachError) -> VirtioNetTransport {
        let tap: TapDevice
        do { tap = try TapDevice(name: network.tap) } catch { throw .network(index: index, error) }
        let receiveLimit = network.receiveRateLimit.flatMap { $0.isUnlimited ? nil : $0 }
        let transmitLimit = network.transmitRateLimit.flatMap { $0.isUnlimited ? nil : $0 }
        // The receive queue's timer belongs to the pump, which is served from the tap as well.
        let receiveRetry = try receiveLimit.map { (_) throws(DeviceAttachError) in try makeRetryTimer() }
        let transmitRetry =
            try transmitLimit.map { (_) throws(DeviceAttachError) in [VirtioNet.transmitQueue: try makeRetryTimer()] } ?? [:]
        let pump = TapReceivePump(tapDescriptor: tap.fileDescriptor, eventLoop: eventLoop, retry: receiveRetry)
        let name = "virtio-net \(index) (\(tap.name))"
        let serve: @Sendable (VirtioNetTransport, Int) -> VirtioQueueService = { transport, queue in
            queue == VirtioNet.receiveQueue ? pump.serve(transport) : transport.processQueue(queue)
        }
        let transport: VirtioNetTransport
        if let state {
            transport = try attachVirtio(
                queueCount: state.transport.queues.count, kind: .virtioNet, name: name, restoring: state, resources: tap,
                serve: serve, retryTimers: transmitRetry)
            // The limiters are configuration, not saved state: they start again with full buckets.
            transport.updateDevice { device in
                device.receiveLimiter = receiveLimit.map { RateLimiter($0) }
                device.transmitLimiter = transmitLimit.map { RateLimiter($0) }
            }
        } else {
            var device = VirtioNet(backend: tap, mac: network.effectiveMAC, offloads: network.offloads)
            device.receiveLimiter = receiveLimit.map { RateLimiter($0) }
            device.transmitLimiter = transmitLimit.map { RateLimiter($0) }
            transport = try attachVirtio(device, kind: .virtioNet, name: name, serve: serve, retryTimers: transmitRetry)
        }
        // Not watched until the driver offers receive buffers.
        try watch(tap.fileDescriptor, events: 0) { events in pump.tapReady(events, transport: transport) }
        if let receiveRetry {
            try watch(receiveRetry.fileDescriptor, events: EPOLLIN.rawValue) { _ in
                receiveRetry.consume()
                pump.serve(transport)
            }
        }
        return transport
    }

    /// Attaches the virtio-rng device (entropy from getrandom) in the next slot.
    /// With `state`, the device and its transport are restored in that state.
    func attachRNG(state: VirtioDeviceState<VirtioRNG>? = nil) throws(DeviceAttachError) -> VirtioRNGTransport {
        let name = AttachedDevice.Kind.virtioRNG.rawValue
        if let state {
            return try attachVirtio(
                queueCount: state.transport.queues.count, kind: .virtioRNG, name: name, restoring: state, resources: ())
        }
        return try attachVirtio(VirtioRNG(), kind: .virtioRNG, name: name)
    }

    /// Attaches the virtio-vsock device in the next slot, with its host side (`VsockUnixHost`)
    /// listening at `vsock.udsPath`. With `state`, the device is restored (no connections, a
    /// transport reset for the guest) and the socket listened on again.
    func attachVsock(
        _ vsock: VsockConfiguration, state: VirtioDeviceState<VirtioVsock>? = nil
    ) throws(DeviceAttachError) -> (VirtioVsockTransport, VsockUnixHost) {
        let host: VsockUnixHost
        do { host = try VsockUnixHost(path: vsock.udsPath, eventLoop: eventLoop) } catch {
            throw .vsock(path: vsock.udsPath, error)
        }
        let name = "\(AttachedDevice.Kind.virtioVsock.rawValue) (cid \(vsock.guestCID), \(vsock.udsPath))"
        let serve: @Sendable (VirtioVsockTransport, Int) -> VirtioQueueService = { host.serve($0, queue: $1) }
        do throws(DeviceAttachError) {
            let transport: VirtioVsockTransport
            if let state {
                transport = try attachVirtio(
                    queueCount: state.transport.queues.count, kind: .virtioVsock, name: name, restoring: state,
                    resources: (), serve: serve)
            } else {
                transport = try attachVirtio(VirtioVsock(guestCID: vsock.guestCID), kind: .virtioVsock, name: name, serve: serve)
            }
            do { try host.attach(transport) } catch { throw DeviceAttachError.host(error) }
            return (transport, host)
        } catch {
            host.shutdown()
            throw error
        }
    }

    /// Restores a virtio device and its transport from `state` over `resources` (the device
    /// model's) in the next free slot, wired as `attachVirtio(_:kind:name:serve:)` wires a new one.
    func attachVirtio<Device: VirtioDevice & PersistentDevice>(
        queueCount: Int, kind: AttachedDevice.Kind, name: String, restoring state: VirtioDeviceState<Device>,
        resources: Device.Resources,
        serve: @escaping @Sendable (VirtioMMIOTransport<Device>, Int) -> VirtioQueueService = { $0.processQueue($1) },
        retryTimers: [Int: LoopTimer] = [:]
    ) throws(DeviceAttachError) -> VirtioMMIOTransport<Device> {
        // A notification the guest made just before the snapshot may not have been served yet; the
        // new ioeventfds never saw it, so each queue is looked at once when the loop starts (a
        // queue with nothing new is left as it is).
        var kicks: [any VirtioSignal] = []
        defer { for kick in kicks { kick.signal() } }
        return try attachVirtio(queueCount: queueCount, kind: kind, name: name, serve: serve, retryTimers: retryTimers) {
            (notifiers, interrupt) throws(DeviceAttachError) in
            if state.transport.isActive { kicks = notifiers }
            do throws(DeviceRestoreError) {
                return try VirtioMMIOTransport<Device>.restore(
                    from: state,
                    with: VirtioDeviceResources(memory: memory, notifiers: notifiers, interrupt: interrupt, device: resources))
            } catch { throw .restore(error) }
        }
    }

    /// Puts `device` in the next free virtio-mmio slot: its window on the MMIO bus, its
    /// interrupt an irqfd on the slot's GSI, each queue's notification an ioeventfd on
    /// QueueNotify (datamatch = queue index) served on the event loop by `serve(transport, queue)`
    /// (by default `processQueue(queue)`). A queue with a timer in `retryTimers` (a rate-limited
    /// one) that ends `.throttled` is armed for the wait and served again when it expires.
    func attachVirtio<Device: VirtioDevice>(
        _ device: sending Device, kind: AttachedDevice.Kind, name: String,
        serve: @escaping @Sendable (VirtioMMIOTransport<Device>, Int) -> VirtioQueueService = { $0.processQueue($1) },
        retryTimers: [Int: LoopTimer] = [:]
    ) throws(DeviceAttachError) -> VirtioMMIOTransport<Device> {
        let memory = self.memory
        // Handed on to the transport once, inside the wiring below, and used nowhere else.
        nonisolated(unsafe) let device = device
        return try attachVirtio(queueCount: device.queueCount, kind: kind, name: name, serve: serve, retryTimers: retryTimers) {
            notifiers, interrupt in
            VirtioMMIOTransport(device: device, memory: memory, notifiers: notifiers, interrupt: interrupt)
        }
    }

    /// The wiring of every virtio device: `make` builds the transport over the queue notifiers
    /// and interrupt signal this creates.
    private func attachVirtio<Device: VirtioDevice>(
        queueCount: Int, kind: AttachedDevice.Kind, name: String,
        serve: @escaping @Sendable (VirtioMMIOTransport<Device>, Int) -> VirtioQueueService,
        retryTimers: [Int: LoopTimer],
        make: ([any VirtioSignal], any VirtioSignal) throws(DeviceAttachError) -> VirtioMMIOTransport<Device>
    ) throws(DeviceAttachError) -> VirtioMMIOTransport<Device> {
        guard let slot = X86Layout.virtioSlot(nextVirtioSlot) else {
            throw .noFreeSlot(name: name, slots: X86Layout.virtioMMIOSlotCount)
        }
        let interrupt: EventFD
        let notifiers: [EventFD]
        do throws(SystemError) {
            interrupt = try EventFD()
            try vm.registerIRQFD(interrupt, gsi: slot.gsi)
            notifiers = try (0..<queueCount).map { (_) throws(SystemError) in try EventFD() }
        } catch {
            throw .host(error)
        }
        let transport = try make(notifiers.map { EventFDSignal(eventfd: $0) }, EventFDSignal(eventfd: interrupt))
        for (queue, notifier) in notifiers.enumerated() {
            do throws(SystemError) {
                try vm.registerIOEventFD(
                    notifier, space: .mmio, address: slot.address.rawValue + VirtioMMIORegisters.Offset.queueNotify,
                    length: 4, matching: UInt64(queue))
            } catch {
                throw .host(error)
            }
            // A queue whose limiter refused a request is served again when its timer expires.
            let retry = retryTimers[queue]
            let serveQueue: @Sendable () -> Void = {
                if case .throttled(let nanoseconds) = serve(transport, queue) { retry?.arm(afterNanoseconds: nanoseconds) }
            }
            try watch(notifier.rawValue, events: EPOLLIN.rawValue) { _ in
                _ = try? notifier.consume()
                serveQueue()
            }
            if let retry {
                try watch(retry.fileDescriptor, events: EPOLLIN.rawValue) { _ in
                    retry.consume()
                    serveQueue()
                }
            }
        }
        do throws(BusError) {
            try mmio.register(transport, base: slot.address.rawValue, length: VirtioMMIORegisters.windowSize, name: name)
        } catch {
            throw .bus(error)
        }
        nextVirtioSlot += 1
        attached.append(
            AttachedDevice(
                kind: kind, name: name, window: .mmio(base: slot.address, length: VirtioMMIORegisters.windowSize),
                gsi: slot.gsi, commandLineWord: slot.commandLineWord))
        return transport
    }

    /// Adds `handler` for `fd` to the event loop and remembers it for `detachAll()`.
    private func watch(_ fd: Int32, events: UInt32, handler: @escaping EventLoop.Handler) throws(DeviceAttachError) {
        do throws(SystemError) {
            try eventLoop.add(fd, events: events, handler: handler)
        } catch {
            throw .host(error)
        }
        watched.append(fd)
    }

    /// Removes every event-loop handler this manager added (after the loop has stopped, or
    /// before it ever ran). The devices are released once the buses holding them go.
    func detachAll() {
        for fd in watched { eventLoop.remove(fd) }
        watched.removeAll()
    }
}

/// An interrupt line of the in-kernel irqchip driven with `KVM_IRQ_LINE`.
struct KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    let gsi: UInt32
    func setLevel(_ high: Bool) { try? vm.setIRQLine(gsi, high: high) }
}

/// A device that could not be attached to the machine.
public enum DeviceAttachError: Error, Sendable, CustomStringConvertible {
    /// The image of disk `index` (from 0, in `--disk` order) cannot be used.
    case disk(index: Int, DiskImageError)
    /// The tap of network interface `index` (from 0, in `--net` order) cannot be used.
    case network(index: Int, TapError)
    /// Creating an eventfd, registering an irqfd or ioeventfd with KVM, or adding a descriptor to the
    /// event loop failed.
    case host(SystemError)
    /// The device's window could not be registered on its bus (it overlaps another device).
    case bus(BusError)
    /// Every one of the layout's `slots` virtio-mmio slots is taken.
    case noFreeSlot(name: String, slots: Int)
    /// A device's saved state (a snapshot's) cannot be restored.
    case restore(DeviceRestoreError)
    /// The vsock device's Unix socket at `path` cannot be listened on (it exists, or its
    /// directory does not).
    case vsock(path: String, SystemError)

    /// A one-line explanation naming the disk or interface by index, when there is one.
    public var description: String {
        switch self {
        case .disk(let index, let error): "disk \(index): \(error)"
        case .network(let index, let error): "network interface \(index): \(error)"
        case .host(let error): "device: \(error)"
        case .bus(let error): "device: \(error)"
        case .noFreeSlot(let name, let slots): "\(name): all \(slots) virtio-mmio slots are taken"
        case .restore(let error): "\(error)"
        case .vsock(let path, let error): "vsock socket \(path): \(error)"
        }
    }
}
