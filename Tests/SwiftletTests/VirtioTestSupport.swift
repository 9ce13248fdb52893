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

/// A signal that counts how often it was raised (a stand-in for an eventfd or irqfd).
final class CountingSignal: VirtioSignal {
    private let counter = Atomic<Int>(0)
    func signal() { counter.add(1, ordering: .relaxed) }
    var count: Int { counter.load(ordering: .relaxed) }
}

/// Plays the driver's side of a split virtqueue in plain guest memory: writes descriptors,
/// publishes chains in the available ring and reads the used ring.
struct RingDriver {
    let memory: GuestMemory
    let size: UInt16
    let descriptorTable: UInt64
    let availableRing: UInt64
    let usedRing: UInt64
    var availableIndex: UInt16 = 0

    /// Rings at 0x1000 (descriptors), 0x5000 (available) and 0x6000 (used) by default: room for
    /// 1024 descriptors and rings of that size.
    init(
        memory: GuestMemory, size: UInt16, descriptorTable: UInt64 = 0x1000, availableRing: UInt64 = 0x5000,
        usedRing: UInt64 = 0x6000
    ) {
        self.memory = memory
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }

    func queue(features: UInt64 = VirtioFeature.version1) throws -> Virtqueue {
        try Virtqueue(
            size: size, descriptorTable: descriptorTable, availableRing: availableRing, usedRing: usedRing,
            features: features, memory: memory)
    }

    /// Writes descriptor `index` of the queue's table (or of the table at `table`).
    func setDescriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0, table: UInt64? = nil)
        throws
    {
        let base = (table ?? descriptorTable) + 16 * UInt64(index)
        try memory.write(address.littleEndian, at: GuestAddress(base))
        try memory.write(length.littleEndian, at: GuestAddress(base + 8))
        try memory.write(flags.littleEndian, at: GuestAddress(base + 12))
        try memory.write(next.littleEndian, at: GuestAddress(base + 14))
    }

    /// Puts `head` in the next available slot and bumps the available index.
    mutating func publish(_ head: UInt16) throws {
        try memory.write(head.littleEndian, at: GuestAddress(availableRing + 4 + 2 * UInt64(availableIndex & (size - 1))))
        availableIndex &+= 1
        try setAvailableIndex(availableIndex)
    }

    func setAvailableIndex(_ index: UInt16) throws {
        try memory.write(index.littleEndian, at: GuestAddress(availableRing + 2))
    }

    func setAvailableFlags(_ flags: UInt16) throws {
        try memory.write(flags.littleEndian, at: GuestAddress(availableRing))
    }

    /// `used_event` (EVENT_IDX): the used index the driver wants an interrupt at.
    func setUsedEvent(_ index: UInt16) throws {
        try memory.write(index.littleEndian, at: GuestAddress(availableRing + 4 + 2 * UInt64(size)))
    }

    /// `avail_event` as the device wrote it.
    func availableEvent() throws -> UInt16 {
        try memory.read(UInt16.self, at: GuestAddress(usedRing + 4 + 8 * UInt64(size)))
    }

    func usedIndex() throws -> UInt16 { try memory.read(UInt16.self, at: GuestAddress(usedRing + 2)) }

    /// Used-ring element `slot`: (descriptor id, length).
    func usedElement(_ slot: UInt16) throws -> (id: UInt32, length: UInt32) {
        let base = usedRing + 4 + 8 * UInt64(slot & (size - 1))
        return (try memory.read(UInt32.self, at: GuestAddress(base)), try memory.read(UInt32.self, at: GuestAddress(base + 4)))
    }
}

/// Drives a transport's registers the way Linux's virtio_mmio driver does.
struct MMIODriver<Device: VirtioDevice> {
    let transport: VirtioMMIOTransport<Device>

    func read(_ offset: UInt64, width: Int = 4) -> UInt64 {
        var bytes = [UInt8](repeating: 0xAA, count: width)
        bytes.withUnsafeMutableBytes { transport.read(offset: offset, data: $0) }
        return bytes.withUnsafeBytes { $0.littleEndianValue }
    }

    func write(_ offset: UInt64, _ value: UInt64, width: Int = 4) {
        var bytes = [UInt8](repeating: 0, count: width)
        bytes.withUnsafeMutableBytes { $0.storeLittleEndian(value) }
        bytes.withUnsafeBytes { transport.write(offset: offset, data: $0) }
    }

    var status: UInt32 { UInt32(read(VirtioMMIORegisters.Offset.status)) }
    var interruptStatus: UInt32 { UInt32(read(VirtioMMIORegisters.Offset.interruptStatus)) }

    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK; returns the status read back.
    @discardableResult
    func negotiate(_ features: UInt64) -> UInt32 {
        typealias O = VirtioMMIORegisters.Offset
        write(O.status, 0)
        write(O.status, UInt64(VirtioDeviceStatus.acknowledge))
        write(O.status, UInt64(VirtioDeviceStatus.acknowledge | VirtioDeviceStatus.driver))
        write(O.driverFeaturesSelect, 0)
        write(O.driverFeatures, features & 0xFFFF_FFFF)
        write(O.driverFeaturesSelect, 1)
        write(O.driverFeatures, features >> 32)
        write(O.status, UInt64(VirtioDeviceStatus.acknowledge | VirtioDeviceStatus.driver | VirtioDeviceStatus.featuresOK))
        return status
    }

    /// Programs queue `index` with the ring driver's areas and enables it.
    func setUpQueue(_ index: UInt32, _ ring: RingDriver) {
        typealias O = VirtioMMIORegisters.Offset
        write(O.queueSelect, UInt64(index))
        write(O.queueSize, UInt64(ring.size))
        write(O.queueDescriptorLow, ring.descriptorTable & 0xFFFF_FFFF)
        write(O.queueDescriptorHigh, ring.descriptorTable >> 32)
        write(O.queueDriverLow, ring.availableRing & 0xFFFF_FFFF)
        write(O.queueDriverHigh, ring.availableRing >> 32)
        write(O.queueDeviceLow, ring.usedRing & 0xFFFF_FFFF)
        write(O.queueDeviceHigh, ring.usedRing >> 32)
        write(O.queueReady, 1)
    }

    func driverOK() {
        write(
            VirtioMMIORegisters.Offset.status,
            UInt64(
                VirtioDeviceStatus.acknowledge | VirtioDeviceStatus.driver | VirtioDeviceStatus.featuresOK
                    | VirtioDeviceStatus.driverOK))
    }

    func notify(_ queue: UInt32) { write(VirtioMMIORegisters.Offset.queueNotify, UInt64(queue)) }
}

/// A device for transport tests: records what it was handed and answers with a fixed length.
struct RecordingVirtioDevice: VirtioDevice {
    var deviceType: UInt32 = 42
    var offeredFeatures: UInt64 =
        VirtioFeature.version1 | VirtioFeature.ringEventIndex | VirtioFeature.ringIndirectDescriptors | 0x5
    var queueCount: Int = 2
    var maximumQueueSize: UInt16 = 16
    var configurationSpace: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    let log: VirtioRecordingLog

    func activate(features: UInt64) { log.record("activate \(String(features, radix: 16))") }
    func reset() { log.record("reset") }
    func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        log.record("queue \(queue) head \(chain.head) buffers \(chain.buffers.count)")
        log.delay()
        return .used(UInt32(chain.writableLength))
    }
}

/// What a `RecordingVirtioDevice` saw, shared with the test.
final class VirtioRecordingLog: Sendable {
    private let entries = Mutex<[String]>([])
    /// Microseconds every `handle` call sleeps (for concurrency tests).
    let handleDelayMicroseconds: UInt32
    init(handleDelayMicroseconds: UInt32 = 0) { self.handleDelayMicroseconds = handleDelayMicroseconds }
    func record(_ entry: String) { entries.withLock { $0.append(entry) } }
    func delay() { if handleDelayMicroseconds > 0 { usleep(handleDelayMicroseconds) } }
    var all: [String] { entries.withLock { $0 } }
}

/// Guest memory for virtio tests: `size` bytes at address 0.
func virtioTestMemory(size: UInt64 = 2 << 20) throws -> GuestMemory {
    try GuestMemory(regions: [(start: GuestAddress(0), size: size)])
}
