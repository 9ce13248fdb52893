import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

/// A virtio device on the MMIO bus (virtio-mmio version 2): the register file
/// (`VirtioMMIORegisters`) for the guest's vCPUs, the virtqueues and the device for the
/// event-loop thread, and the two signals between them.
///
/// Threads and locks. Two locks per device, always taken in this order:
/// - `work` holds the device and its virtqueues. The event loop holds it while it serves a
///   queue (`processQueue`), including the disk I/O; a vCPU takes it only to change the
///   device's life cycle: reset (Status = 0) and activation (DRIVER_OK).
/// - `registers` holds the register file. vCPUs take it for every register access, the event
///   loop briefly to raise an interrupt bit; nobody does I/O while holding it.
///
/// Register accesses therefore never wait for disk I/O, except a reset: the guest expects that
/// once its write of 0 to Status returns, the device no longer touches guest memory, so the
/// resetting vCPU asks the event loop to stop after its current request (`resetRequests`) and
/// waits for the `work` lock. Queue notifications do not take either lock: with an ioeventfd
/// on QueueNotify they never leave the kernel; if one does reach `write`, it only signals the
/// queue's notifier. Completions set InterruptStatus bit 0 and signal `interrupt` (an irqfd).
public final class VirtioMMIOTransport<Device: VirtioDevice>: BusDevice {
    /// The device side, owned by whoever holds the `work` lock.
    struct Work {
        var device: Device
        /// One entry per device queue; nil until the driver enabled it and set DRIVER_OK.
        var queues: [Virtqueue?]
        var isActive = false
        /// A ring turned out broken: nothing is processed until the driver resets the device.
        var isBroken = false
        /// Reused for every request, so walking chains does not allocate.
        var chain = DescriptorChain()
        var statistics = VirtioQueueStatistics()
    }

    private let work: Mutex<Work>
    private let registers: Mutex<VirtioMMIORegisters>
    /// Resets waiting for the `work` lock; the event loop stops between requests while > 0.
    private let resetRequests = Atomic<Int>(0)
    private let memory: GuestMemory
    private let notifiers: [any VirtioSignal]
    private let interrupt: any VirtioSignal

    /// A transport for `device` over `memory`. `notifiers[i]` wakes whoever serves queue `i`
    /// (the event loop) when an exit-based notification arrives; `interrupt` raises the device's
    /// interrupt line.
    public init(device: sending Device, memory: GuestMemory, notifiers: [any VirtioSignal], interrupt: any VirtioSignal) {
        precondition(notifiers.count == device.queueCount, "one notifier per queue")
        self.memory = memory
        self.notifiers = notifiers
        self.interrupt = interrupt
        self.registers = Mutex(
            VirtioMMIORegisters(
                deviceID: device.deviceType, offeredFeatures: device.offeredFeatures, queueCount: device.queueCount,
                queueSizeMaximum: device.maximumQueueSize, configuration: device.configurationSpace))
        self.work = Mutex(Work(device: device, queues: Array(repeating: nil, count: device.queueCount)))
    }

    // MARK: Guest register access (vCPU threads)

    /// Registers (offsets below 0x100) are read 32 bits at a time; other widths and unaligned
    /// offsets read 0. The configuration space takes 1, 2, 4 and 8-byte reads.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let value: UInt64
        if offset < VirtioMMIORegisters.configurationOffset {
            guard data.count == 4, offset % 4 == 0 else {
                data.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            value = UInt64(registers.withLock { $0.read(offset: offset) })
        } else {
            let relative = offset - VirtioMMIORegisters.configurationOffset
            value = registers.withLock { $0.readConfiguration(offset: relative, count: data.count) }
        }
        data.storeLittleEndian(value)
    }

    /// Registers take 32-bit writes only; other widths and unaligned offsets are ignored, as are
    /// writes to the configuration space (no device offers writable configuration fields).
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < VirtioMMIORegisters.configurationOffset, data.count == 4, offset % 4 == 0 else { return }
        let value = UInt32(truncatingIfNeeded: data.littleEndianValue)
        if offset == VirtioMMIORegisters.Offset.status {
            writeStatus(value)
            return
        }
        let effect = registers.withLock { $0.write(offset: offset, value: value) }
        if case .notify(let queue) = effect { notifiers[queue].signal() }
    }

    /// A Status write: may reset or activate the device, so it takes the `work` lock first.
    private func writeStatus(_ value: UInt32) {
        if value == 0 { resetRequests.add(1, ordering: .acquiringAndReleasing) }
        defer { if value == 0 { resetRequests.subtract(1, ordering: .acquiringAndReleasing) } }
        let raise = work.withLock { work -> Bool in
            registers.withLock { registers -> Bool in
                switch registers.write(offset: VirtioMMIORegisters.Offset.status, value: value) {
                case .reset:
                    registers.reset()
                    work.device.reset()
                    work.queues = Array(repeating: nil, count: work.queues.count)
                    work.isActive = false
                    work.isBroken = false
                    return false
                case .activate:
                    return !activate(&work, registers: &registers)
                case .none, .notify:
                    return false
                }
            }
        }
        if raise { interrupt.signal() }
    }

    /// Creates the enabled queues from what the driver programmed and starts the device.
    /// A queue that does not fit guest memory makes the device ask for a reset (returns false).
    private func activate(_ work: inout Work, registers: inout VirtioMMIORegisters) -> Bool {
        var queues: [Virtqueue?] = []
        for programmed in registers.queues {
            guard programmed.ready else {
                queues.append(nil)
                continue
            }
            do {
                queues.append(
                    try Virtqueue(
                        size: programmed.size, maximumSize: registers.queueSizeMaximum,
                        descriptorTable: programmed.descriptorTable, availableRing: programmed.availableRing,
                        usedRing: programmed.usedRing, features: registers.negotiatedFeatures, memory: memory))
            } catch {
                work.statistics.lastError = error
                registers.setNeedsReset()
                return false
            }
        }
        work.queues = queues
        work.isActive = true
        work.device.activate(features: registers.negotiatedFeatures)
        return true
    }

    // MARK: Queue service (event-loop thread)

    /// Serves queue `index` after a notification: takes every available chain, hands the
    /// well-formed ones to the device, returns them all to the used ring, and interrupts the
    /// guest if the driver wants it. Notifications for a device that is not live, for a queue
    /// that is not enabled or after a ring error are ignored. Returns why it stopped, so a
    /// device fed from the host (virtio-net's receive queue) knows whether to keep watching its
    /// source.
    @discardableResult
    public func processQueue(_ index: Int) -> VirtioQueueService {
        let (raise, needsReset, service) = work.withLock { work -> (Bool, Bool, VirtioQueueService) in
            let outcome = serve(index, &work)
            // The registers change while `work` is still held (work, then registers): a guest
            // reset cannot complete in between and inherit a stale interrupt or NEEDS_RESET bit.
            if outcome.raise || outcome.needsReset {
                registers.withLock { registers in
                    if outcome.needsReset {
                        registers.setNeedsReset()
                    } else {
                        registers.interruptStatus |= VirtioInterruptBit.usedBuffer
                    }
                }
            }
            return outcome
        }
        if service == .yielded { notifiers[index].signal() }
        if raise || needsReset { interrupt.signal() }
        return service
    }

    /// Walks queue `index` with `work` held; says whether to raise the used-buffer interrupt,
    /// whether the ring broke (NEEDS_RESET), and how the queue was left.
    private func serve(_ index: Int, _ work: inout Work) -> (raise: Bool, needsReset: Bool, service: VirtioQueueService) {
        guard work.isActive, !work.isBroken, index >= 0, index < work.queues.count, var queue = work.queues[index]
        else { return (false, false, .stopped) }
        defer { work.queues[index] = queue }
        var service = VirtioQueueService.stopped
        // At most a ring's worth of chains per call: a driver that keeps re-posting chains
        // must not keep the event loop from its other descriptors (and the deadline).
        var budget = Int(queue.size)
        do throws(VirtqueueError) {
            serving: while resetRequests.load(ordering: .acquiring) == 0 {
                if budget == 0 {
                    service = .yielded
                    break
                }
                budget -= 1
                guard try queue.popAvailable(from: memory, into: &work.chain) else {
                    // Drained: re-arm notifications, then look again in case chains came in
                    // while they were suppressed.
                    if try queue.enableNotifications(memory) { continue }
                    service = .drained
                    break
                }
                let length: UInt32
                if let error = work.chain.error {
                    work.statistics.failedChains += 1
                    work.statistics.lastError = error
                    length = 0
                } else {
                    switch work.device.handle(work.chain, queue: index, memory: memory) {
                    case .used(let written):
                        length = written
                        work.statistics.requests += 1
                    case .deferred:
                        queue.putBackLastAvailable()
                        service = .deferred
                        break serving
                    case .throttled(let nanoseconds):
                        queue.putBackLastAvailable()
                        work.statistics.throttled += 1
                        service = .throttled(nanoseconds: nanoseconds)
                        break serving
                    }
                }
                try queue.addUsed(head: work.chain.head, length: length, memory: memory)
            }
            return (try queue.needsInterrupt(memory), false, service)
        } catch {
            work.isBroken = true
            work.statistics.lastError = error
            return (false, true, .stopped)
        }
    }

    // MARK: Host side

    /// The device changed its configuration space: the guest sees a new generation and a
    /// configuration-change interrupt.
    public func updateConfiguration(_ bytes: [UInt8]) {
        registers.withLock { $0.updateConfiguration(bytes) }
        interrupt.signal()
    }

    /// A copy of the register file.
    public var registerState: VirtioMMIORegisters { registers.withLock { $0 } }

    /// The queues as the device last left them (nil: not enabled or not active).
    public var queueState: [Virtqueue?] { work.withLock { $0.queues } }

    /// Counters for diagnostics and tests.
    public var statistics: VirtioQueueStatistics { work.withLock { $0.statistics } }

    /// Reads the device's state (its settings and statistics) under the `work` lock.
    public func withDevice<Result: Sendable>(_ body: (Device) -> Result) -> Result {
        work.withLock { body($0.device) }
    }

    /// Changes the device from the host side (e.g. its link status) under the `work` lock.
    package func updateDevice<Result: Sendable>(_ body: (inout Device) -> Result) -> Result {
        work.withLock { body(&$0.device) }
    }
}

/// Why `VirtioMMIOTransport.processQueue` stopped.
public enum VirtioQueueService: Equatable, Sendable {
    /// The available ring is empty and notifications are re-armed: the driver notifies when it
    /// adds chains.
    case drained
    /// The device left a chain for later (`VirtioChainResult.deferred`); chains remain.
    case deferred
    /// The device's rate limiter refused the next chain (`VirtioChainResult.throttled`); it
    /// remains, and the queue is to be served again after this many nanoseconds (from a timer:
    /// the driver need not notify again).
    case throttled(nanoseconds: UInt64)
    /// A ring's worth of chains was served and more are waiting: the queue's notifier was
    /// signalled, so the event loop comes back to this queue after its other work.
    case yielded
    /// Nothing was served to the end: the device is not live, the queue is not enabled, a
    /// ring is broken, or a reset is waiting.
    case stopped
}

/// What a transport has done with its queues since it was created.
public struct VirtioQueueStatistics: Equatable, Sendable {
    /// Well-formed chains handed to the device.
    public var requests = 0
    /// Malformed chains returned to the driver unprocessed (length 0).
    public var failedChains = 0
    /// Times the device's rate limiter stopped the queue (not saved in a snapshot).
    public var throttled = 0
    /// The last queue error (a malformed chain, a broken ring or a queue that did not fit).
    public var lastError: VirtqueueError?
}

// MARK: - Saved state

/// The device's place in one virtqueue's rings, saved with its transport (the ring areas are in
/// the register file).
public struct VirtqueuePosition: Codable, Equatable, Sendable {
    /// The next available-ring entry the device will take (`Virtqueue.nextAvailable`).
    public var nextAvailable: UInt16
    /// The used-ring index the device will publish next (`Virtqueue.nextUsed`).
    public var nextUsed: UInt16
    /// `nextUsed` at the last interrupt decision (`Virtqueue.usedAtLastInterruptCheck`).
    public var usedAtLastInterruptCheck: UInt16

    /// A position with these indices.
    public init(nextAvailable: UInt16, nextUsed: UInt16, usedAtLastInterruptCheck: UInt16) {
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
        self.usedAtLastInterruptCheck = usedAtLastInterruptCheck
    }

    /// The position of `queue`.
    public init(_ queue: Virtqueue) {
        self.init(
            nextAvailable: queue.nextAvailable, nextUsed: queue.nextUsed,
            usedAtLastInterruptCheck: queue.usedAtLastInterruptCheck)
    }
}

/// A virtio-mmio transport's own saved state: the register file as the driver programmed it
/// (status, feature selects and driver features, queue select, every queue's size, ready flag and
/// ring addresses, interrupt status, configuration generation), whether the device was activated,
/// and the device's position in each ring.
public struct VirtioTransportState: Codable, Equatable, Sendable {
    /// The register file, including the device's identity and configuration space.
    public var registers: VirtioMMIORegisters
    /// DRIVER_OK took effect: the enabled queues were created and the device activated.
    public var isActive: Bool
    /// A ring broke after activation: the device waits for the driver to reset it.
    public var isBroken: Bool
    /// One entry per queue: the device's position for the queues created at activation, nil for
    /// the others (and for every queue before activation).
    public var queues: [VirtqueuePosition?]
    /// Well-formed chains handed to the device so far (`VirtioQueueStatistics.requests`).
    public var requests: Int
    /// Malformed chains returned unprocessed so far (`VirtioQueueStatistics.failedChains`).
    public var failedChains: Int

    /// A state with these fields (unchecked: `VirtioMMIOTransport.restore` checks them).
    public init(
        registers: VirtioMMIORegisters, isActive: Bool, isBroken: Bool, queues: [VirtqueuePosition?], requests: Int,
        failedChains: Int
    ) {
        self.registers = registers
        self.isActive = isActive
        self.isBroken = isBroken
        self.queues = queues
        self.requests = requests
        self.failedChains = failedChains
    }
}

/// A virtio device's saved state: its transport's and its device model's.
public struct VirtioDeviceState<Device: PersistentDevice>: Codable, Equatable, Sendable {
    /// The virtio-mmio transport: registers, activation and ring positions.
    public var transport: VirtioTransportState
    /// The device model: settings, negotiated features, statistics.
    public var device: Device.State

    /// A state with these parts.
    public init(transport: VirtioTransportState, device: Device.State) {
        self.transport = transport
        self.device = device
    }
}

/// What a virtio device is attached to: the transport's resources and the device model's.
public struct VirtioDeviceResources<Device: PersistentDevice>: Sendable {
    /// Guest memory, which holds the rings (restored before the devices).
    public var memory: GuestMemory
    /// One signal per queue that wakes whoever serves it (the queue's ioeventfd).
    public var notifiers: [any VirtioSignal]
    /// The device's interrupt (its irqfd).
    public var interrupt: any VirtioSignal
    /// The device model's own resources (a disk image, a tap).
    public var device: Device.Resources

    /// Resources with these parts.
    public init(memory: GuestMemory, notifiers: [any VirtioSignal], interrupt: any VirtioSignal, device: Device.Resources) {
        self.memory = memory
        self.notifiers = notifiers
        self.interrupt = interrupt
        self.device = device
    }
}

extension VirtioMMIOTransport: PersistentDevice where Device: PersistentDevice {
    /// The transport's state and the device model's.
    public typealias State = VirtioDeviceState<Device>
    /// Guest memory, the signals, and the device model's resources.
    public typealias Resources = VirtioDeviceResources<Device>

    /// The register file, the ring positions and the device model's state, taken under both locks
    /// (so between two requests, never in the middle of one).
    public func saveState() -> State {
        work.withLock { work in
            registers.withLock { registers in
                let transport = VirtioTransportState(
                    registers: registers, isActive: work.isActive, isBroken: work.isBroken,
                    queues: work.queues.map { $0.map(VirtqueuePosition.init) }, requests: work.statistics.requests,
                    failedChains: work.statistics.failedChains)
                return State(transport: transport, device: work.device.saveState())
            }
        }
    }

    /// A transport in `state` over the device model restored from `state.device`. Each queue the
    /// saved device had created is created again over `resources.memory` (its size, alignment and
    /// areas checked as at DRIVER_OK) and put back at its saved ring position; the next request
    /// is taken from, and completed at, where the saved device would have. If an interrupt was
    /// pending, `resources.interrupt` is signalled once, since the new interrupt line never saw it.
    ///
    /// Throws when the device model's state is invalid, when the register file does not belong to
    /// that device (identity, features, queue count or configuration differ), when a register holds
    /// a value the transport never lets it reach, when a created queue does not fit guest memory,
    /// or when the ring positions contradict the activation state.
    public static func restore(from state: State, with resources: Resources) throws(DeviceRestoreError) -> VirtioMMIOTransport<
        Device
    > {
        let device = try Device.restore(from: state.device, with: resources.device)
        let saved = state.transport
        let queues = try saved.validatedQueues(for: device, memory: resources.memory)
        guard resources.notifiers.count == device.queueCount else {
            throw StateValidator(device: "virtio-mmio")
                .error("resources.notifiers", .wrongCount(resources.notifiers.count, expected: device.queueCount))
        }
        let transport = VirtioMMIOTransport(
            device: device, memory: resources.memory, notifiers: resources.notifiers, interrupt: resources.interrupt)
        transport.work.withLock { work in
            work.queues = queues
            work.isActive = saved.isActive
            work.isBroken = saved.isBroken
            work.statistics = VirtioQueueStatistics(requests: saved.requests, failedChains: saved.failedChains)
        }
        transport.registers.withLock { $0 = saved.registers }
        if saved.registers.interruptStatus != 0 { resources.interrupt.signal() }
        return transport
    }
}

extension VirtioTransportState {
    /// Checks the state against `device` and `memory` and returns the queues to serve: one per
    /// device queue, created over `memory` where the saved transport had one.
    func validatedQueues(for device: some VirtioDevice, memory: GuestMemory) throws(DeviceRestoreError) -> [Virtqueue?] {
        let check = StateValidator(device: "virtio-mmio")
        let r = registers
        // The register file belongs to this device.
        try check.matches(r.deviceID, device.deviceType, "registers.deviceID")
        try check.matches(r.offeredFeatures, device.offeredFeatures, "registers.offeredFeatures")
        try check.matches(r.queueSizeMaximum, device.maximumQueueSize, "registers.queueSizeMaximum")
        let configuration = device.configurationSpace
        guard r.configuration.count == configuration.count else {
            throw check.error("registers.configuration", .wrongCount(r.configuration.count, expected: configuration.count))
        }
        for (index, (saved, current)) in zip(r.configuration, configuration).enumerated() {
            try check.matches(saved, current, "registers.configuration[\(index)]")
        }
        guard r.queues.count == device.queueCount else {
            throw check.error("registers.queues", .wrongCount(r.queues.count, expected: device.queueCount))
        }
        guard queues.count == device.queueCount else {
            throw check.error("queues", .wrongCount(queues.count, expected: device.queueCount))
        }
        // Registers hold only values the register file lets them reach.
        typealias S = VirtioDeviceStatus
        let status = r.status
        try check.bits(
            status, allowed: S.acknowledge | S.driver | S.featuresOK | S.driverOK | S.deviceNeedsReset | S.failed,
            "registers.status")
        try check.require(status & S.driver == 0 || status & S.acknowledge != 0, "registers.status", "DRIVER without ACKNOWLEDGE")
        try check.require(status & S.featuresOK == 0 || status & S.driver != 0, "registers.status", "FEATURES_OK without DRIVER")
        try check.require(
            status & S.driverOK == 0 || status & S.featuresOK != 0, "registers.status", "DRIVER_OK without FEATURES_OK")
        if status & S.featuresOK != 0 {
            try check.bits(r.driverFeatures, allowed: r.offeredFeatures, "registers.driverFeatures")
            try check.require(
                r.driverFeatures & VirtioFeature.version1 != 0, "registers.driverFeatures",
                "FEATURES_OK was kept without VIRTIO_F_VERSION_1")
        }
        try check.bits(
            r.interruptStatus, allowed: VirtioInterruptBit.usedBuffer | VirtioInterruptBit.configurationChange,
            "registers.interruptStatus")
        for (index, queue) in r.queues.enumerated() where queue.ready {
            try check.powerOfTwo(queue.size, "registers.queues[\(index)].size")
            try check.atMost(queue.size, r.queueSizeMaximum, "registers.queues[\(index)].size")
        }
        // Activation follows DRIVER_OK, unless it failed (NEEDS_RESET) or the driver gave up first.
        try check.require(!isActive || status & S.driverOK != 0, "isActive", "true without DRIVER_OK in the status")
        try check.require(
            isActive || status & S.driverOK == 0 || status & (S.deviceNeedsReset | S.failed) != 0, "isActive",
            "false although DRIVER_OK is set without NEEDS_RESET or FAILED")
        try check.require(!isBroken || isActive, "isBroken", "true for a device that was never activated")
        try check.require(
            !isBroken || status & S.deviceNeedsReset != 0, "isBroken", "true without DEVICE_NEEDS_RESET in the status")
        try check.nonNegative(["requests": requests, "failedChains": failedChains], in: "statistics")
        // The queues: created at activation for the enabled ones, at their saved positions.
        var created: [Virtqueue?] = []
        for (index, programmed) in r.queues.enumerated() {
            let field = "queues[\(index)]"
            guard isActive, programmed.ready else {
                try check.require(queues[index] == nil, field, "a position for a queue that was not created")
                created.append(nil)
                continue
            }
            guard let position = queues[index] else {
                throw check.error(field, .inconsistent("no position for a queue enabled at activation"))
            }
            // Requests complete before the state is saved, so a working ring has none in flight.
            try check.require(
                isBroken || position.nextUsed == position.nextAvailable, "\(field).nextUsed",
                "\(position.nextUsed) differs from nextAvailable \(position.nextAvailable) in a working ring")
            var queue: Virtqueue
            do {
                queue = try Virtqueue(
                    size: programmed.size, maximumSize: r.queueSizeMaximum, descriptorTable: programmed.descriptorTable,
                    availableRing: programmed.availableRing, usedRing: programmed.usedRing, features: r.negotiatedFeatures,
                    memory: memory)
            } catch {
                throw Self.restoreError(error, queue: index, check: check)
            }
            queue.restorePosition(
                nextAvailable: position.nextAvailable, nextUsed: position.nextUsed,
                usedAtLastInterruptCheck: position.usedAtLastInterruptCheck)
            created.append(queue)
        }
        return created
    }

    /// The restore error for a queue that cannot be created again, naming the area's register.
    private static func restoreError(_ error: VirtqueueError, queue: Int, check: StateValidator) -> DeviceRestoreError {
        func field(_ area: VirtqueueError.Area) -> String {
            let name =
                switch area {
                case .descriptorTable: "descriptorTable"
                case .availableRing: "availableRing"
                case .usedRing: "usedRing"
                }
            return "registers.queues[\(queue)].\(name)"
        }
        switch error {
        case .misaligned(let area, let address, let alignment):
            return check.error(field(area), .misaligned(address: address, alignment: alignment))
        case .areaOutsideGuestMemory(let area, let address, let length):
            return check.error(field(area), .outsideGuestMemory(address: address, length: length))
        default:
            return check.error("registers.queues[\(queue)]", .inconsistent(error.description))
        }
    }
}
