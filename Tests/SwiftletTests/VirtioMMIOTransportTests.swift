import Glibc
import Synchronization
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private typealias O = VirtioMMIORegisters.Offset
private typealias S = VirtioDeviceStatus
private typealias Flag = Virtqueue.DescriptorFlag

/// The virtio-mmio register state machine and the transport, over plain guest memory.
@Suite("Virtio: MMIO transport")
struct VirtioMMIOTransportTests {
    struct Fixture {
        let memory: GuestMemory
        let log: VirtioRecordingLog
        let notifiers: [CountingSignal]
        let interrupt: CountingSignal
        let transport: VirtioMMIOTransport<RecordingVirtioDevice>
        var driver: MMIODriver<RecordingVirtioDevice> { MMIODriver(transport: transport) }

        init(handleDelayMicroseconds: UInt32 = 0) throws {
            memory = try virtioTestMemory()
            log = VirtioRecordingLog(handleDelayMicroseconds: handleDelayMicroseconds)
            notifiers = [CountingSignal(), CountingSignal()]
            interrupt = CountingSignal()
            transport = VirtioMMIOTransport(
                device: RecordingVirtioDevice(log: log), memory: memory, notifiers: notifiers, interrupt: interrupt)
        }

        /// Negotiates VERSION_1 (+ `features`), sets up queue 0 over `ring` and sets DRIVER_OK.
        func activate(_ ring: RingDriver, features: UInt64 = 0) {
            #expect(driver.negotiate(VirtioFeature.version1 | features) & S.featuresOK != 0)
            driver.setUpQueue(0, ring)
            driver.driverOK()
        }
    }

    @Test("identity registers read as a version 2 device")
    func identity() throws {
        let f = try Fixture()
        #expect(f.driver.read(O.magic) == 0x7472_6976)
        #expect(f.driver.read(O.version) == 2)
        #expect(f.driver.read(O.deviceID) == 42)
        #expect(f.driver.read(O.vendorID) == UInt64(VirtioMMIORegisters.vendorID))
        let offered = f.transport.registerState.offeredFeatures
        f.driver.write(O.deviceFeaturesSelect, 0)
        #expect(f.driver.read(O.deviceFeatures) == offered & 0xFFFF_FFFF)
        f.driver.write(O.deviceFeaturesSelect, 1)
        #expect(f.driver.read(O.deviceFeatures) == offered >> 32)
        f.driver.write(O.deviceFeaturesSelect, 2)
        #expect(f.driver.read(O.deviceFeatures) == 0)
        #expect(f.driver.read(O.queueSizeMaximum) == 16)
        f.driver.write(O.queueSelect, 2)
        #expect(f.driver.read(O.queueSizeMaximum) == 0, "queue 2 does not exist")
        #expect(f.driver.read(O.sharedMemoryLengthLow) == 0xFFFF_FFFF)
        #expect(f.driver.read(O.queueDescriptorLow) == 0, "write-only registers read 0")
        #expect(f.driver.read(0x0F8) == 0)
    }

    @Test("register accesses of the wrong width or alignment are ignored and read 0", arguments: [1, 2, 8])
    func wrongWidth(width: Int) throws {
        let f = try Fixture()
        #expect(f.driver.read(O.magic, width: width) == 0)
        #expect(f.driver.read(O.version, width: width) == 0)
        f.driver.write(O.status, UInt64(S.acknowledge), width: width)
        #expect(f.driver.status == 0)
        f.driver.write(O.status, UInt64(S.acknowledge))
        f.driver.write(O.queueSelect, 1, width: width)
        f.driver.write(O.queueSelect, 5)
        f.driver.write(O.queueSelect, 0, width: width)
        #expect(f.transport.registerState.queueSelect == 5)
        // Unaligned 32-bit accesses.
        #expect(f.driver.read(O.magic + 1) == 0)
        f.driver.write(O.status + 2, 0)
        #expect(f.driver.status == S.acknowledge)
    }

    @Test("the status register follows ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK")
    func statusOrder() throws {
        let f = try Fixture()
        let d = f.driver
        d.write(O.status, UInt64(S.driver))
        #expect(d.status == 0, "DRIVER before ACKNOWLEDGE")
        d.write(O.status, UInt64(S.acknowledge))
        d.write(O.status, UInt64(S.acknowledge | S.driverOK))
        #expect(d.status == S.acknowledge, "DRIVER_OK before FEATURES_OK")
        d.write(O.status, UInt64(S.acknowledge | S.driver))
        d.write(O.status, UInt64(S.driver))
        #expect(d.status == S.acknowledge | S.driver, "clearing a bit is ignored")
        d.write(O.status, UInt64(S.acknowledge | S.driver | S.deviceNeedsReset))
        #expect(d.status == S.acknowledge | S.driver, "NEEDS_RESET belongs to the device")
        d.write(O.status, UInt64(S.acknowledge | S.driver | S.failed))
        #expect(d.status == S.acknowledge | S.driver | S.failed)
        d.write(O.status, 0)
        #expect(d.status == 0)
        #expect(f.log.all == ["reset"])
    }

    @Test("FEATURES_OK needs VERSION_1 and only offered features")
    func featureNegotiation() throws {
        let f = try Fixture()
        #expect(f.driver.negotiate(0x1) & S.featuresOK == 0, "no VERSION_1")
        #expect(f.driver.negotiate(VirtioFeature.version1 | 0x2) & S.featuresOK == 0, "bit 1 was not offered")
        #expect(f.driver.negotiate(VirtioFeature.version1 | 0x4 | VirtioFeature.ringEventIndex) & S.featuresOK != 0)
        #expect(f.transport.registerState.negotiatedFeatures == VirtioFeature.version1 | 0x4 | VirtioFeature.ringEventIndex)
        // Features are fixed once FEATURES_OK is set.
        f.driver.write(O.driverFeaturesSelect, 0)
        f.driver.write(O.driverFeatures, 0)
        #expect(f.transport.registerState.driverFeatures & 0x4 != 0)
    }

    @Test(
        "queue sizes that are not powers of two, or above the maximum, cannot be enabled",
        arguments: [0, 3, 12, 17, 32, 0x1_0000] as [UInt64])
    func invalidQueueSize(size: UInt64) throws {
        let f = try Fixture()
        f.driver.negotiate(VirtioFeature.version1)
        f.driver.write(O.queueSelect, 0)
        f.driver.write(O.queueSize, size)
        f.driver.write(O.queueReady, 1)
        #expect(f.driver.read(O.queueReady) == 0)
        f.driver.driverOK()
        #expect(f.transport.queueState == [nil, nil])
        f.driver.notify(0)
        #expect(f.notifiers[0].count == 0)
    }

    @Test("an enabled queue cannot be reprogrammed")
    func enabledQueueIsFixed() throws {
        let f = try Fixture()
        let ring = RingDriver(memory: f.memory, size: 8)
        f.driver.negotiate(VirtioFeature.version1)
        f.driver.setUpQueue(0, ring)
        f.driver.write(O.queueSize, 4)
        f.driver.write(O.queueDescriptorLow, 0x9000)
        #expect(f.transport.registerState.queues[0].size == 8)
        #expect(f.transport.registerState.queues[0].descriptorTable == 0x1000)
    }

    @Test("notifications before DRIVER_OK are ignored")
    func notifyBeforeDriverOK() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        f.driver.notify(0)
        f.driver.negotiate(VirtioFeature.version1)
        f.driver.setUpQueue(0, ring)
        f.driver.notify(0)
        #expect(f.notifiers[0].count == 0)
        // Even if the eventfd fired (it is in the kernel), the event loop finds nothing to do.
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 0)
        #expect(f.log.all == ["reset"], "only the driver's initial reset")

        f.driver.driverOK()
        f.driver.notify(0)
        f.driver.notify(1)  // queue 1 is not enabled
        f.driver.notify(7)  // no such queue
        #expect(f.notifiers[0].count == 1 && f.notifiers[1].count == 0)
        f.transport.processQueue(0)
        f.transport.processQueue(1)
        f.transport.processQueue(-1)
        f.transport.processQueue(99)
        #expect(try ring.usedIndex() == 1)
        #expect(try ring.usedElement(0) == (0, 4))
        #expect(f.log.all == ["reset", "activate 100000000", "queue 0 head 0 buffers 1"])
    }

    @Test("one call serves at most a ring's worth of chains, then yields and re-signals the queue")
    func queueBudget() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 4)
        f.driver.negotiate(VirtioFeature.version1)
        f.driver.setUpQueue(0, ring)
        f.driver.driverOK()
        for head in 0..<4 {
            try ring.setDescriptor(head, address: 0x10000 + UInt64(head) * 0x100, length: 4, flags: Flag.write)
            try ring.publish(UInt16(head))
        }
        let before = f.notifiers[0].count
        #expect(f.transport.processQueue(0) == .yielded)
        #expect(try ring.usedIndex() == 4)
        #expect(f.notifiers[0].count == before + 1, "the event loop is woken to come back to the queue")
        #expect(f.transport.processQueue(0) == .drained)
        #expect(f.notifiers[0].count == before + 1)
    }

    @Test("a completion sets InterruptStatus bit 0 and raises the interrupt; InterruptACK clears it")
    func completionInterrupt() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring)
        try ring.setDescriptor(0, address: 0x10000, length: 16, flags: Flag.next, next: 1)
        try ring.setDescriptor(1, address: 0x11000, length: 1, flags: Flag.write)
        try ring.publish(0)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 2)
        #expect(f.interrupt.count == 1, "one interrupt per batch")
        #expect(f.driver.interruptStatus == VirtioInterruptBit.usedBuffer)
        f.driver.write(O.interruptAcknowledge, UInt64(VirtioInterruptBit.usedBuffer))
        #expect(f.driver.interruptStatus == 0)
        // Nothing new: no interrupt.
        f.transport.processQueue(0)
        #expect(f.interrupt.count == 1)
        #expect(f.transport.statistics.requests == 2)
    }

    @Test("a malformed chain is returned with length 0 and the queue goes on")
    func malformedChain() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring)
        try ring.setDescriptor(0, address: 0xFFFF_0000_0000, length: 16)
        try ring.setDescriptor(1, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        try ring.publish(1)
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 2)
        #expect(try ring.usedElement(0) == (0, 0))
        #expect(try ring.usedElement(1) == (1, 4))
        #expect(f.transport.statistics.failedChains == 1)
        #expect(f.transport.statistics.lastError == .bufferOutsideGuestMemory(address: 0xFFFF_0000_0000, length: 16))
        #expect(f.driver.status & S.deviceNeedsReset == 0)
    }

    @Test("a broken ring sets DEVICE_NEEDS_RESET with a configuration interrupt until reset")
    func brokenRing() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring)
        try ring.setAvailableIndex(100)
        f.transport.processQueue(0)
        #expect(f.driver.status & S.deviceNeedsReset != 0)
        #expect(f.driver.interruptStatus == VirtioInterruptBit.configurationChange)
        #expect(f.interrupt.count == 1)
        // Nothing more happens until the reset.
        try ring.setAvailableIndex(1)
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 0)
        f.driver.notify(0)
        #expect(f.notifiers[0].count == 0, "no notifications while the device needs a reset")

        f.driver.write(O.status, 0)
        #expect(f.driver.status == 0 && f.driver.interruptStatus == 0)
        ring.availableIndex = 0
        try ring.setAvailableIndex(0)
        f.activate(ring)
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 1)
    }

    @Test("rings outside guest RAM at DRIVER_OK set DEVICE_NEEDS_RESET")
    func activationOutsideMemory() throws {
        let f = try Fixture()
        let ring = RingDriver(memory: f.memory, size: 8, usedRing: 0x4000_0000)
        f.activate(ring)
        #expect(f.driver.status & S.deviceNeedsReset != 0)
        #expect(f.driver.interruptStatus & VirtioInterruptBit.configurationChange != 0)
        #expect(f.interrupt.count == 1)
        #expect(f.transport.statistics.lastError == .areaOutsideGuestMemory(.usedRing, address: 0x4000_0000, length: 70))
        f.transport.processQueue(0)
        #expect(!f.log.all.contains { $0.hasPrefix("activate") })
    }

    @Test("reset returns every register to its initial value and stops the queues")
    func reset() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring, features: VirtioFeature.ringEventIndex)
        f.driver.write(O.queueSelect, 1)
        f.driver.write(O.deviceFeaturesSelect, 1)
        f.driver.write(O.status, 0)
        let fresh = VirtioMMIORegisters(
            deviceID: 42, offeredFeatures: f.transport.registerState.offeredFeatures, queueCount: 2, queueSizeMaximum: 16,
            configuration: Array(1...10))
        #expect(f.transport.registerState == fresh)
        #expect(f.transport.queueState == [nil, nil])
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(try ring.usedIndex() == 0)
    }

    @Test("the configuration space reads at any width; writes are ignored; generation counts changes")
    func configurationSpace() throws {
        let f = try Fixture()
        let base = VirtioMMIORegisters.configurationOffset
        #expect(f.driver.read(base, width: 1) == 1)
        #expect(f.driver.read(base + 1, width: 2) == 0x0302)
        #expect(f.driver.read(base, width: 4) == 0x0403_0201)
        #expect(f.driver.read(base + 2, width: 8) == 0x0A09_0807_0605_0403)
        #expect(f.driver.read(base + 8, width: 4) == 0x0A09, "bytes past the end read 0")
        #expect(f.driver.read(0xFFC, width: 4) == 0)
        f.driver.write(base, 0xFF, width: 1)
        #expect(f.driver.read(base, width: 1) == 1)
        #expect(f.driver.read(O.configGeneration) == 0)
        f.transport.updateConfiguration([9, 9])
        #expect(f.driver.read(O.configGeneration) == 1)
        #expect(f.driver.read(base, width: 2) == 0x0909)
        #expect(f.driver.interruptStatus == VirtioInterruptBit.configurationChange)
        #expect(f.interrupt.count == 1)
        f.driver.write(O.status, 0)
        #expect(f.driver.read(O.configGeneration) == 1, "a reset keeps the generation")
    }

    @Test("a reset waits for the request in progress and stops the event loop's batch")
    func resetDuringProcessing() throws {
        let f = try Fixture(handleDelayMicroseconds: 20_000)
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring)
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        for _ in 0..<8 { try ring.publish(0) }
        let transport = f.transport
        let worker = try NativeThread(name: "test worker") { transport.processQueue(0) }
        // Reset while the first request is being handled.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while !f.log.all.contains(where: { $0.hasPrefix("queue 0") }) && monotonicNanoseconds() < deadline { usleep(1000) }
        f.driver.write(O.status, 0)
        // Once the reset returned, the device no longer writes guest memory.
        let usedAfterReset = try ring.usedIndex()
        worker.join()
        #expect(try ring.usedIndex() == usedAfterReset)
        #expect(usedAfterReset >= 1 && usedAfterReset < 8, "the batch stopped early (\(usedAfterReset) of 8)")
        #expect(f.log.all.last == "reset")
    }

    @Test("EVENT_IDX: the transport keeps avail_event current and honours used_event")
    func eventIndexThroughTransport() throws {
        let f = try Fixture()
        var ring = RingDriver(memory: f.memory, size: 8)
        f.activate(ring, features: VirtioFeature.ringEventIndex)
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.setUsedEvent(2)  // interrupt when used index passes 2
        try ring.publish(0)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(try ring.availableEvent() == 2)
        #expect(f.interrupt.count == 0)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(f.interrupt.count == 1)
        #expect(try ring.availableEvent() == 3)
    }
}
