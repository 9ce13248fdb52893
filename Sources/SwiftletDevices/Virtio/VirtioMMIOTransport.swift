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
    /// The last queue error (a malformed chain, a broken ring or a queue that did not fit).
    public var lastError: VirtqueueError?
}
