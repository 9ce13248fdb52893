import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletDevices
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private typealias Flag = Virtqueue.DescriptorFlag
private let millisecond: UInt64 = 1_000_000

/// Rate-limited virtio-blk and virtio-net over plain guest memory with a fake clock: a throttled
/// queue stops with the limiter's wait, leaves the rest of its chains untouched, and serves them
/// when served again after that wait.
@Suite("Rate limiter: throttled virtio queues")
struct RateLimitedDeviceTests {
    /// Publishes `count` block reads of `length` bytes each from sector `i * length / 512`; request
    /// `i` uses descriptors 3i..3i+2 and its own header, data and status areas.
    static func publishReads(_ ring: inout RingDriver, memory: GuestMemory, count: Int, length: UInt32) throws {
        for i in 0..<count {
            let header = 0x10000 + UInt64(i) * 0x20
            let status = 0x18000 + UInt64(i)
            let data = 0x10_0000 + UInt64(i) * 0x1_0000
            try memory.write(VirtioBlock.RequestType.read.littleEndian, at: GuestAddress(header))
            try memory.write(UInt32(0), at: GuestAddress(header + 4))
            try memory.write((UInt64(i) * UInt64(length) / 512).littleEndian, at: GuestAddress(header + 8))
            try memory.write(UInt8(0xEE), at: GuestAddress(status))
            try ring.setDescriptor(3 * i, address: header, length: 16, flags: Flag.next, next: UInt16(3 * i + 1))
            try ring.setDescriptor(
                3 * i + 1, address: data, length: length, flags: Flag.write | Flag.next, next: UInt16(3 * i + 2))
            try ring.setDescriptor(3 * i + 2, address: status, length: 1, flags: Flag.write)
            try ring.publish(UInt16(3 * i))
        }
    }

    @Test("virtio-blk: requests beyond the byte budget wait in the ring and are served after the limiter's wait")
    func blockBandwidth() throws {
        let contents = VirtioBlockTests.pattern(64 << 10)
        let memory = try virtioTestMemory(size: 8 << 20)
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(backend: InMemoryDiskImage(bytes: contents), readOnly: false, identifier: "limited"),
            memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        var ring = RingDriver(memory: memory, size: 32)
        let driver = MMIODriver(transport: transport)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, ring)
        driver.driverOK()
        let clock = FakeClock(1_000 * millisecond)
        // 8 KiB per second: two 4 KiB reads, then one every 500 ms.
        transport.updateDevice {
            $0.rateLimiter = RateLimiter(
                RateLimit(bandwidth: TokenBucketLimit(size: 8192, refillTimeMilliseconds: 1000)), clock: clock)
        }
        try Self.publishReads(&ring, memory: memory, count: 5, length: 4096)
        #expect(transport.processQueue(0) == .throttled(nanoseconds: 500 * millisecond))
        #expect(try ring.usedIndex() == 2)
        #expect(transport.withDevice { $0.statistics.reads } == 2)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x18002)) == 0xEE, "the third request is untouched")
        // Served again too early: still throttled, with the rest of the wait.
        clock.advance(milliseconds: 200)
        #expect(transport.processQueue(0) == .throttled(nanoseconds: 300 * millisecond))
        #expect(try ring.usedIndex() == 2)
        clock.advance(milliseconds: 300)
        #expect(transport.processQueue(0) == .throttled(nanoseconds: 500 * millisecond))
        #expect(try ring.usedIndex() == 3)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x18002)) == VirtioBlock.Status.ok)
        #expect(try memory.readBytes(at: GuestAddress(0x12_0000), count: 4096) == Array(contents[8192..<12288]))
        clock.advance(milliseconds: 1000)
        #expect(transport.processQueue(0) == .drained)
        #expect(try ring.usedIndex() == 5)
        #expect(transport.statistics.throttled == 3)
        #expect(transport.withDevice { $0.statistics.bytesRead } == 5 * 4096)
    }

    @Test("virtio-blk: the operations bucket counts every request, and a request larger than the bucket goes into debt")
    func blockOperationsAndDebt() throws {
        let memory = try virtioTestMemory(size: 8 << 20)
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(
                backend: InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 64 << 10)), readOnly: false, identifier: ""),
            memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        var ring = RingDriver(memory: memory, size: 32)
        let driver = MMIODriver(transport: transport)
        driver.negotiate(VirtioFeature.version1)
        driver.setUpQueue(0, ring)
        driver.driverOK()
        let clock = FakeClock()
        // 1 KiB per 100 ms, 3 requests per 300 ms: one 4 KiB read is 4 times the bucket.
        transport.updateDevice {
            $0.rateLimiter = RateLimiter(
                RateLimit(
                    bandwidth: TokenBucketLimit(size: 1024, refillTimeMilliseconds: 100),
                    operations: TokenBucketLimit(size: 3, refillTimeMilliseconds: 300)),
                clock: clock)
        }
        try Self.publishReads(&ring, memory: memory, count: 2, length: 4096)
        // The first is served into a debt of 3 KiB (300 ms); the second waits for it.
        #expect(transport.processQueue(0) == .throttled(nanoseconds: 300 * millisecond))
        #expect(try ring.usedIndex() == 1)
        clock.advance(milliseconds: 300)
        #expect(transport.processQueue(0) == .drained)
        #expect(try ring.usedIndex() == 2)
        // The operations bucket refilled to 3 in the 300 ms and the second read took one.
        #expect(transport.withDevice { $0.rateLimiter?.operations?.balance } == 2)
    }

    @Test("virtio-net transmit: frames beyond the budget stay in the ring until the wait has passed")
    func transmitOperations() throws {
        var f = try VirtioNetTests.Fixture()
        let clock = FakeClock()
        // Two frames per 100 ms.
        f.transport.updateDevice {
            $0.transmitLimiter = RateLimiter(
                RateLimit(operations: TokenBucketLimit(size: 2, refillTimeMilliseconds: 100)), clock: clock)
        }
        let frame = VirtioNetHeader().bytes + testFrame(length: 100)
        for head in 0..<4 { try f.send(frame, head: UInt16(head)) }
        #expect(f.transport.processQueue(1) == .throttled(nanoseconds: 50 * millisecond))
        #expect(f.backend.outgoing.count == 2)
        #expect(try f.tx.usedIndex() == 2)
        clock.advance(milliseconds: 50)
        #expect(f.transport.processQueue(1) == .throttled(nanoseconds: 50 * millisecond))
        #expect(f.backend.outgoing.count == 3)
        clock.advance(milliseconds: 50)
        #expect(f.transport.processQueue(1) == .drained)
        #expect(f.backend.outgoing.count == 4)
        #expect(f.statistics.transmittedFrames == 4)
    }

    @Test("virtio-net receive: a frame is read while the limiter is out of debt, then charged, and the next waits")
    func receiveBandwidth() throws {
        var f = try VirtioNetTests.Fixture()
        let clock = FakeClock()
        // 1500 bytes per second: a 1000-byte frame, then one more into debt (500), then 1/3 s.
        f.transport.updateDevice {
            $0.receiveLimiter = RateLimiter(
                RateLimit(bandwidth: TokenBucketLimit(size: 1500, refillTimeMilliseconds: 1000)), clock: clock)
        }
        for seed in 0..<4 { f.backend.push(testFrame(length: 1000, seed: UInt8(seed))) }
        for index in 0..<4 { try f.offerReceiveBuffer(UInt16(index)) }
        #expect(f.transport.processQueue(0) == .throttled(nanoseconds: 333_333_334))
        #expect(f.statistics.receivedFrames == 2)
        #expect(f.backend.incomingCount == 2, "the other frames wait in the tap")
        #expect(try f.receiveBuffer(1, count: 12 + 1000).suffix(1000) == testFrame(length: 1000, seed: 1)[...])
        clock.advance(nanoseconds: 333_333_333)
        #expect(f.transport.processQueue(0) == .throttled(nanoseconds: 1))
        #expect(f.statistics.receivedFrames == 2)
        clock.advance(nanoseconds: 1)
        // Out of debt (0): one more frame, charged into debt of 1000 (2/3 s).
        #expect(f.transport.processQueue(0) == .throttled(nanoseconds: 666_666_666))
        #expect(f.statistics.receivedFrames == 3)
        #expect(f.statistics.receivedBytes == 3000)
    }
}
