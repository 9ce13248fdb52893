import Foundation
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private typealias Flag = Virtqueue.DescriptorFlag
private let indirect = VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors
private let eventIndex = VirtioFeature.version1 | VirtioFeature.ringEventIndex

/// The split-virtqueue walker over plain guest memory, including what a hostile driver can
/// put in the rings.
@Suite("Virtio: split virtqueue")
struct VirtqueueTests {
    // MARK: Set-up

    @Test("queue sizes must be powers of two no larger than the maximum", arguments: [0, 3, 6, 100, 255, 1023] as [UInt16])
    func invalidSizes(size: UInt16) throws {
        let memory = try virtioTestMemory()
        #expect(throws: VirtqueueError.invalidSize(size, maximum: 256)) {
            try Virtqueue(
                size: size, maximumSize: 256, descriptorTable: 0x1000, availableRing: 0x5000, usedRing: 0x6000, features: 0,
                memory: memory)
        }
    }

    @Test("sizes above the device maximum are refused")
    func sizeAboveMaximum() throws {
        let memory = try virtioTestMemory()
        #expect(throws: VirtqueueError.invalidSize(512, maximum: 256)) {
            try Virtqueue(
                size: 512, maximumSize: 256, descriptorTable: 0x1000, availableRing: 0x5000, usedRing: 0x6000, features: 0,
                memory: memory)
        }
        for size: UInt16 in [1, 2, 128, 256] {
            _ = try Virtqueue(
                size: size, maximumSize: 256, descriptorTable: 0x1000, availableRing: 0x5000, usedRing: 0x6000, features: 0,
                memory: memory)
        }
    }

    @Test("misaligned areas are refused")
    func misaligned() throws {
        let memory = try virtioTestMemory()
        #expect(throws: VirtqueueError.misaligned(.descriptorTable, address: 0x1008, alignment: 16)) {
            try Virtqueue(size: 8, descriptorTable: 0x1008, availableRing: 0x5000, usedRing: 0x6000, features: 0, memory: memory)
        }
        #expect(throws: VirtqueueError.misaligned(.availableRing, address: 0x5001, alignment: 2)) {
            try Virtqueue(size: 8, descriptorTable: 0x1000, availableRing: 0x5001, usedRing: 0x6000, features: 0, memory: memory)
        }
        #expect(throws: VirtqueueError.misaligned(.usedRing, address: 0x6002, alignment: 4)) {
            try Virtqueue(size: 8, descriptorTable: 0x1000, availableRing: 0x5000, usedRing: 0x6002, features: 0, memory: memory)
        }
    }

    @Test("areas outside guest RAM, or running past its end, are refused")
    func areasOutsideMemory() throws {
        let memory = try virtioTestMemory()  // 2 MiB
        #expect(throws: VirtqueueError.areaOutsideGuestMemory(.descriptorTable, address: 0x20_0000, length: 128)) {
            try Virtqueue(
                size: 8, descriptorTable: 0x20_0000, availableRing: 0x5000, usedRing: 0x6000, features: 0, memory: memory)
        }
        #expect(throws: VirtqueueError.areaOutsideGuestMemory(.availableRing, address: 0x1F_FFF0, length: 22)) {
            try Virtqueue(
                size: 8, descriptorTable: 0x1000, availableRing: 0x1F_FFF0, usedRing: 0x6000, features: 0, memory: memory)
        }
        #expect(throws: VirtqueueError.areaOutsideGuestMemory(.usedRing, address: 0xFFFF_FFFF_FFFF_FFF0, length: 70)) {
            try Virtqueue(
                size: 8, descriptorTable: 0x1000, availableRing: 0x5000, usedRing: 0xFFFF_FFFF_FFFF_FFF0, features: 0,
                memory: memory)
        }
    }

    // MARK: Chains

    @Test("an empty ring yields nothing; a published chain yields its buffers in order")
    func simpleChain() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain) == false)

        try ring.setDescriptor(3, address: 0x10000, length: 16, flags: Flag.next, next: 5)
        try ring.setDescriptor(5, address: 0x20000, length: 4096, flags: Flag.next | Flag.write, next: 1)
        try ring.setDescriptor(1, address: 0x30000, length: 1, flags: Flag.write)
        try ring.publish(3)
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.error == nil)
        #expect(chain.head == 3)
        #expect(
            chain.buffers == [
                VirtqueueBuffer(address: GuestAddress(0x10000), length: 16, isWritable: false),
                VirtqueueBuffer(address: GuestAddress(0x20000), length: 4096, isWritable: true),
                VirtqueueBuffer(address: GuestAddress(0x30000), length: 1, isWritable: true),
            ])
        #expect(chain.readableLength == 16 && chain.writableLength == 4097)
        #expect(try queue.popAvailable(from: memory, into: &chain) == false)

        try queue.addUsed(head: 3, length: 4097, memory: memory)
        #expect(try ring.usedIndex() == 1)
        #expect(try ring.usedElement(0) == (3, 4097))
    }

    @Test("ring indices wrap around at 65536")
    func indexWraparound() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 2)
        var queue = try ring.queue()
        var chain = DescriptorChain()
        try ring.setDescriptor(0, address: 0x10000, length: 8, flags: Flag.write)
        for round in 0..<70_000 {
            try ring.publish(0)
            #expect(try queue.popAvailable(from: memory, into: &chain), "round \(round)")
            try queue.addUsed(head: 0, length: 8, memory: memory)
        }
        #expect(queue.nextAvailable == UInt16(70_000 % 65536))
        #expect(try ring.usedIndex() == UInt16(70_000 % 65536))
    }

    @Test("copying across buffers reads the readable part and fills the writable part")
    func copying() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        try memory.write(Array(0..<10) as [UInt8], at: GuestAddress(0x10000))
        try memory.write(Array(10..<20) as [UInt8], at: GuestAddress(0x11000))
        try ring.setDescriptor(0, address: 0x10000, length: 10, flags: Flag.next, next: 1)
        try ring.setDescriptor(1, address: 0x11000, length: 10, flags: Flag.next, next: 2)
        try ring.setDescriptor(2, address: 0x12000, length: 3, flags: Flag.write | Flag.next, next: 3)
        try ring.setDescriptor(3, address: 0x13000, length: 3, flags: Flag.write)
        try ring.publish(0)
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        var bytes = [UInt8](repeating: 0, count: 8)
        #expect(bytes.withUnsafeMutableBytes { chain.copyReadable(from: 6, into: $0, memory: memory) } == 8)
        #expect(bytes == Array(6..<14))
        var tail = [UInt8](repeating: 0, count: 30)
        #expect(tail.withUnsafeMutableBytes { chain.copyReadable(from: 15, into: $0, memory: memory) } == 5)
        #expect([UInt8](tail.prefix(5)) == Array(15..<20))
        let written = ([9, 8, 7, 6, 5, 4, 3] as [UInt8]).withUnsafeBytes { chain.copyToWritable(at: 1, from: $0, memory: memory) }
        #expect(written == 5)
        #expect(try memory.readBytes(at: GuestAddress(0x12000), count: 3) == [0, 9, 8])
        #expect(try memory.readBytes(at: GuestAddress(0x13000), count: 3) == [7, 6, 5])
    }

    @Test("an indirect descriptor's table supplies the chain")
    func indirectChain() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue(features: indirect)
        let table: UInt64 = 0x8000
        try ring.setDescriptor(0, address: 0x10000, length: 16, flags: Flag.next, next: 2, table: table)
        try ring.setDescriptor(2, address: 0x20000, length: 512, flags: Flag.write | Flag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: 0x30000, length: 1, flags: Flag.write, table: table)
        // The WRITE flag on the descriptor that points to the table is ignored.
        try ring.setDescriptor(4, address: table, length: 48, flags: Flag.indirect | Flag.write)
        try ring.publish(4)
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.error == nil)
        #expect(chain.head == 4)
        #expect(chain.buffers.map(\.address.rawValue) == [0x10000, 0x20000, 0x30000])
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
    }

    @Test("direct descriptors may precede a final indirect one")
    func directThenIndirect() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue(features: indirect)
        try ring.setDescriptor(0, address: 0x30000, length: 2, flags: Flag.write, table: 0x8000)
        try ring.setDescriptor(0, address: 0x10000, length: 16, flags: Flag.next, next: 1)
        try ring.setDescriptor(1, address: 0x8000, length: 16, flags: Flag.indirect)
        try ring.publish(0)
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.error == nil)
        #expect(chain.readableLength == 16 && chain.writableLength == 2)
    }

    // MARK: Hostile chains: the request fails, the queue goes on

    /// Publishes a chain starting at `head` after `build` wrote its descriptors, and returns
    /// the walker's verdict; then checks the queue still works for a good chain.
    private func verdict(
        features: UInt64 = VirtioFeature.version1, size: UInt16 = 8, memorySize: UInt64 = 2 << 20, head: UInt16 = 0,
        _ build: (RingDriver) throws -> Void
    ) throws -> VirtqueueError? {
        let memory = try virtioTestMemory(size: memorySize)
        var ring = RingDriver(memory: memory, size: size)
        var queue = try ring.queue(features: features)
        try build(ring)
        try ring.publish(head)
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.head == head)
        let error = chain.error
        try queue.addUsed(head: chain.head, length: 0, memory: memory)
        // A good chain afterwards still works.
        try ring.setDescriptor(Int(size - 1), address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(size - 1)
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.error == nil)
        return error
    }

    @Test("a buffer outside guest RAM fails the chain")
    func bufferOutsideMemory() throws {
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0x20_0000, length: 1) }
                == .bufferOutsideGuestMemory(address: 0x20_0000, length: 1))
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0x1F_F000, length: 0x1001) }
                == .bufferOutsideGuestMemory(address: 0x1F_F000, length: 0x1001))
        // In the MMIO gap of a larger layout, and far above everything.
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0xD000_0000, length: 16) }
                == .bufferOutsideGuestMemory(address: 0xD000_0000, length: 16))
    }

    @Test("a buffer whose address plus length overflows fails the chain")
    func lengthOverflow() throws {
        #expect(
            try verdict { try $0.setDescriptor(0, address: .max - 10, length: 0xFFFF_FFFF) }
                == .bufferOutsideGuestMemory(address: .max - 10, length: 0xFFFF_FFFF))
        #expect(
            try verdict { try $0.setDescriptor(0, address: .max, length: 1) }
                == .bufferOutsideGuestMemory(address: .max, length: 1))
    }

    @Test("chains longer than 4 GiB in total fail")
    func chainLengthOverflow() throws {
        // 256 descriptors of 32 MiB, all over the same RAM: 8 GiB.
        let error = try verdict(size: 256, memorySize: 64 << 20) { ring in
            for i in 0..<255 { try ring.setDescriptor(i, address: 0, length: 32 << 20, flags: Flag.next, next: UInt16(i + 1)) }
        }
        #expect(error == .chainLengthOverflow)
    }

    @Test(
        "a chain that loops is cut off at the queue size",
        arguments: [[0, 1, 0], [0, 0], [0, 1, 2, 3, 4, 5, 6, 1]] as [[UInt16]])
    func loops(path: [UInt16]) throws {
        let error = try verdict { ring in
            for (from, to) in zip(path, path.dropFirst()) {
                try ring.setDescriptor(Int(from), address: 0x10000, length: 4, flags: Flag.next, next: to)
            }
        }
        #expect(error == .chainTooLong(limit: 8))
    }

    @Test("a next index outside the table fails the chain")
    func nextOutOfRange() throws {
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.next, next: 8) }
                == .nextIndexOutOfRange(8, tableSize: 8))
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.next, next: 0xFFFF) }
                == .nextIndexOutOfRange(0xFFFF, tableSize: 8))
    }

    @Test("a readable buffer after a writable one fails the chain")
    func readableAfterWritable() throws {
        let error = try verdict { ring in
            try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write | Flag.next, next: 1)
            try ring.setDescriptor(1, address: 0x10000, length: 4)
        }
        #expect(error == .readableAfterWritable)
    }

    @Test("indirect descriptors without the feature fail the chain")
    func indirectNotNegotiated() throws {
        #expect(
            try verdict { try $0.setDescriptor(0, address: 0x8000, length: 16, flags: Flag.indirect) } == .indirectNotNegotiated)
    }

    @Test("an indirect descriptor with NEXT fails the chain")
    func indirectWithNext() throws {
        let error = try verdict(features: indirect) { ring in
            try ring.setDescriptor(0, address: 0x8000, length: 16, flags: Flag.indirect | Flag.next, next: 1)
            try ring.setDescriptor(0, address: 0x10000, length: 4, table: 0x8000)
        }
        #expect(error == .indirectWithNext)
    }

    @Test("an indirect table inside an indirect table fails the chain")
    func nestedIndirect() throws {
        let error = try verdict(features: indirect) { ring in
            try ring.setDescriptor(0, address: 0x8000, length: 16, flags: Flag.indirect)
            try ring.setDescriptor(0, address: 0x9000, length: 16, flags: Flag.indirect, table: 0x8000)
        }
        #expect(error == .nestedIndirect)
    }

    @Test("indirect tables of a bad length fail the chain", arguments: [0, 8, 17, 0xFFFF_FFF0] as [UInt32])
    func indirectLength(length: UInt32) throws {
        let error = try verdict(features: indirect) {
            try $0.setDescriptor(0, address: 0x8000, length: length, flags: Flag.indirect)
        }
        if length % 16 != 0 || length == 0 {
            #expect(error == .indirectTableLength(length))
        } else {
            #expect(error == .indirectTableTooLong(count: length / 16, limit: 8))
        }
    }

    @Test("an indirect table outside guest RAM fails the chain")
    func indirectOutsideMemory() throws {
        let error = try verdict(features: indirect) {
            try $0.setDescriptor(0, address: 0x1F_FFF0, length: 32, flags: Flag.indirect)
        }
        #expect(error == .indirectTableOutsideGuestMemory(address: 0x1F_FFF0, length: 32))
    }

    @Test("loops and bad next indices inside an indirect table fail the chain")
    func indirectLoops() throws {
        let loop = try verdict(features: indirect) { ring in
            try ring.setDescriptor(0, address: 0x8000, length: 48, flags: Flag.indirect)
            try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.next, next: 2, table: 0x8000)
            try ring.setDescriptor(2, address: 0x10000, length: 4, flags: Flag.next, next: 0, table: 0x8000)
        }
        #expect(loop == .chainTooLong(limit: 3))
        let outside = try verdict(features: indirect) { ring in
            try ring.setDescriptor(0, address: 0x8000, length: 32, flags: Flag.indirect)
            try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.next, next: 2, table: 0x8000)
        }
        #expect(outside == .nextIndexOutOfRange(2, tableSize: 2))
    }

    @Test("zero-length buffers are skipped")
    func zeroLength() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        // Zero length at an address outside RAM is harmless: nothing is accessed.
        try ring.setDescriptor(0, address: .max, length: 0, flags: Flag.next, next: 1)
        try ring.setDescriptor(1, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        var chain = DescriptorChain()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(chain.error == nil)
        #expect(chain.buffers.count == 1)
    }

    // MARK: Hostile rings: the queue is unusable

    @Test("an available index more than the queue size ahead breaks the ring")
    func availableIndexJump() throws {
        let memory = try virtioTestMemory()
        let ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        try ring.setAvailableIndex(9)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.availableIndexJump(availableIndex: 9, nextAvailable: 0, size: 8)) {
            try queue.popAvailable(from: memory, into: &chain)
        }
        #expect(VirtqueueError.availableIndexJump(availableIndex: 9, nextAvailable: 0, size: 8).requiresReset)
    }

    @Test("a head index outside the table breaks the ring")
    func headOutOfRange() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        try ring.publish(8)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.headIndexOutOfRange(8, size: 8)) { try queue.popAvailable(from: memory, into: &chain) }
        #expect(!VirtqueueError.bufferOutsideGuestMemory(address: 0, length: 0).requiresReset)
    }

    // MARK: Notification suppression

    @Test("without EVENT_IDX the device interrupts unless the driver set NO_INTERRUPT")
    func noInterruptFlag() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue()
        var chain = DescriptorChain()
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        _ = try queue.popAvailable(from: memory, into: &chain)
        try queue.addUsed(head: 0, length: 4, memory: memory)
        #expect(try queue.needsInterrupt(memory))
        #expect(try queue.needsInterrupt(memory) == false, "nothing new was used")
        try ring.setAvailableFlags(1)
        try ring.publish(0)
        _ = try queue.popAvailable(from: memory, into: &chain)
        try queue.addUsed(head: 0, length: 4, memory: memory)
        #expect(try queue.needsInterrupt(memory) == false)
        // Without EVENT_IDX the device never suppresses notifications.
        #expect(try queue.enableNotifications(memory) == false)
    }

    @Test("with EVENT_IDX the device interrupts only when used_event is passed")
    func usedEvent() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue(features: eventIndex)
        var chain = DescriptorChain()
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        // The driver wants an interrupt once used index 2 is reached (used_event = 1).
        try ring.setUsedEvent(1)
        var interrupts: [Bool] = []
        for _ in 0..<4 {
            try ring.publish(0)
            _ = try queue.popAvailable(from: memory, into: &chain)
            try queue.addUsed(head: 0, length: 4, memory: memory)
            interrupts.append(try queue.needsInterrupt(memory))
        }
        #expect(interrupts == [false, true, false, false])
        // A batch that crosses used_event interrupts once.
        try ring.setUsedEvent(5)
        for _ in 0..<3 {
            try ring.publish(0)
            _ = try queue.popAvailable(from: memory, into: &chain)
            try queue.addUsed(head: 0, length: 4, memory: memory)
        }
        #expect(try queue.needsInterrupt(memory))
    }

    @Test("with EVENT_IDX the device publishes avail_event and rechecks the ring")
    func availableEvent() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue(features: eventIndex)
        var chain = DescriptorChain()
        try ring.setDescriptor(0, address: 0x10000, length: 4, flags: Flag.write)
        try ring.publish(0)
        try ring.publish(0)
        _ = try queue.popAvailable(from: memory, into: &chain)
        #expect(try queue.enableNotifications(memory), "one chain is still waiting")
        #expect(try ring.availableEvent() == 1)
        _ = try queue.popAvailable(from: memory, into: &chain)
        #expect(try queue.enableNotifications(memory) == false)
        #expect(try ring.availableEvent() == 2)
    }
    // MARK: Ring fields in guest memory

    /// `queue` as saved and restored with its ring addresses replaced: decoding does not run
    /// the checks `init` does, so a restored queue can name any address.
    private static func restored(_ queue: Virtqueue, availableRing: UInt64, usedRing: UInt64) throws -> Virtqueue {
        var fields = try JSONSerialization.jsonObject(with: JSONEncoder().encode(queue)) as! [String: Any]
        fields["availableRing"] = availableRing
        fields["usedRing"] = usedRing
        return try JSONDecoder().decode(Virtqueue.self, from: JSONSerialization.data(withJSONObject: fields))
    }

    @Test("the device's ring indices and event fields are little-endian 16-bit values at the specified offsets")
    func ringFieldOffsets() throws {
        let memory = try virtioTestMemory()
        var ring = RingDriver(memory: memory, size: 8)
        var queue = try ring.queue(features: eventIndex)
        var chain = DescriptorChain()
        // Neighbours of every 16-bit field the device stores must stay as they are.
        try memory.fill(GuestAddress(ring.usedRing), count: Int(Virtqueue.usedRingLength(size: 8)) + 2, with: 0xEE)
        try ring.setDescriptor(2, address: 0x10000, length: 4, flags: Flag.write)
        for _ in 0..<3 { try ring.publish(2) }
        for _ in 0..<3 {
            #expect(try queue.popAvailable(from: memory, into: &chain))
            try queue.addUsed(head: 2, length: 0x0102_0304, memory: memory)
        }
        #expect(try ring.usedIndex() == 3)
        #expect(try memory.readBytes(at: GuestAddress(ring.usedRing), count: 4) == [0xEE, 0xEE, 3, 0])
        #expect(try ring.usedElement(2) == (id: 2, length: 0x0102_0304))
        #expect(try queue.enableNotifications(memory) == false)
        let availableEvent = ring.usedRing + 4 + 8 * 8
        #expect(try memory.readBytes(at: GuestAddress(availableEvent), count: 4) == [3, 0, 0xEE, 0xEE])
        // used_event = 0x0102 (above the used index): no interrupt; 2 (just passed): one.
        try ring.setUsedEvent(0x0102)
        #expect(try queue.needsInterrupt(memory) == false)
        try ring.publish(2)
        _ = try queue.popAvailable(from: memory, into: &chain)
        try queue.addUsed(head: 2, length: 1, memory: memory)
        try ring.setUsedEvent(3)
        #expect(try queue.needsInterrupt(memory))
    }

    @Test("a restored queue whose ring fields are misaligned reports a ring error instead of an atomic access")
    func misalignedRingFields() throws {
        let memory = try virtioTestMemory()
        var chain = DescriptorChain()
        for features in [VirtioFeature.version1, eventIndex] {
            var queue = try Self.restored(
                try RingDriver(memory: memory, size: 8).queue(features: features), availableRing: 0x5001, usedRing: 0x6001)
            #expect(throws: VirtqueueError.misaligned(.availableRing, address: 0x5003, alignment: 2)) {
                try queue.popAvailable(from: memory, into: &chain)
            }
            #expect(throws: VirtqueueError.misaligned(.usedRing, address: 0x6003, alignment: 2)) {
                try queue.addUsed(head: 0, length: 0, memory: memory)
            }
            let suppression: UInt64 = features == eventIndex ? 0x5001 + 4 + 2 * 8 : 0x5001
            #expect(throws: VirtqueueError.misaligned(.availableRing, address: suppression, alignment: 2)) {
                try queue.needsInterrupt(memory)
            }
            let expected: VirtqueueError =
                features == eventIndex
                ? .misaligned(.usedRing, address: 0x6001 + 4 + 8 * 8, alignment: 2)
                : .misaligned(.availableRing, address: 0x5003, alignment: 2)
            #expect(throws: expected) { try queue.enableNotifications(memory) }
            #expect(expected.requiresReset)
        }
    }

    @Test("a restored queue whose ring fields lie outside guest RAM reports a ring error")
    func ringFieldsOutsideMemory() throws {
        let memory = try virtioTestMemory()  // 2 MiB
        var chain = DescriptorChain()
        let end: UInt64 = 0x20_0000
        // The available ring's flags are the last two bytes of RAM; its index is past the end.
        // The used ring's elements are past the end, and its avail_event far beyond it.
        var queue = try Self.restored(
            try RingDriver(memory: memory, size: 8).queue(features: eventIndex), availableRing: end - 2, usedRing: end + 0x1000)
        #expect(throws: VirtqueueError.ringOutsideGuestMemory(address: end)) {
            try queue.popAvailable(from: memory, into: &chain)
        }
        #expect(throws: VirtqueueError.ringOutsideGuestMemory(address: end + 0x1004)) {
            try queue.addUsed(head: 0, length: 0, memory: memory)
        }
        #expect(throws: VirtqueueError.ringOutsideGuestMemory(address: end - 2 + 4 + 2 * 8)) { try queue.needsInterrupt(memory) }
        #expect(throws: VirtqueueError.ringOutsideGuestMemory(address: end + 0x1000 + 4 + 8 * 8)) {
            try queue.enableNotifications(memory)
        }
        // A ring whose last field ends exactly at the end of RAM is usable.
        queue = try Self.restored(
            try RingDriver(memory: memory, size: 8).queue(features: eventIndex), availableRing: 0x5000,
            usedRing: end - Virtqueue.usedRingLength(size: 8))
        try memory.write(UInt16(0xFFFF), at: GuestAddress(end - 2))
        #expect(try queue.enableNotifications(memory) == false)
        #expect(try memory.read(UInt16.self, at: GuestAddress(end - 2)) == 0)
    }
}
