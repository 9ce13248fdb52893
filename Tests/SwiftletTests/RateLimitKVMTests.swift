import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletTestSupport

/// Boots Guests/build/virtio-blk-stream.elf, which reads 8 MiB through virtio-blk as 128
/// requests of 64 KiB with 4 in flight, on a disk with a rate limit, and measures the rate the
/// host serves them at: the device's read counter is sampled while the guest streams, and the
/// rate between 1 MiB and 7 MiB (leaving out the full bucket at the start) must be within 10 %
/// of the limit.
@Suite(
    "KVM: rate-limited virtio-blk", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized,
    .timeLimit(.minutes(2)))
struct RateLimitKVMTests {
    static let streamBytes: UInt64 = 8 << 20
    static let limitBytesPerSecond = 4.0 * 1024 * 1024

    /// Runs the stream against `limit`; returns the exit, the console lines, the measured rate in
    /// bytes per second (0 when too fast to sample) and the seconds from start to the last byte.
    static func stream(_ limit: RateLimit?) throws -> (GuestExit, [String], Double, Double) {
        let image = try TemporaryFile(contents: [UInt8](repeating: 0x5A, count: Int(streamBytes)))
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-blk-stream.elf"), memorySize: 64 << 20, console: .output(console),
                disks: [DiskConfiguration(path: image.path, rateLimit: limit)]))
        machine.setDeadline(after: TestSupport.guestDeadline)
        let started = monotonicNanoseconds()
        try machine.start()
        // Sample the device's byte counter every millisecond until the stream is done.
        var first: (bytes: UInt64, time: UInt64)?
        var last: (bytes: UInt64, time: UInt64)?
        var finished = UInt64.max
        let giveUp = monotonicNanoseconds() + UInt64(TestSupport.guestDeadline * 1e9)
        while monotonicNanoseconds() < giveUp {
            let now = monotonicNanoseconds()
            let bytes = machine.disks[0].withDevice { $0.statistics.bytesRead }
            if first == nil && bytes >= 1 << 20 { first = (bytes, now) }
            if last == nil && bytes >= 7 << 20 { last = (bytes, now) }
            if bytes >= streamBytes {
                finished = now
                break
            }
            usleep(1000)
        }
        let exit = machine.wait()
        let lines = console.text.split(separator: "\n").map(String.init)
        let elapsed = finished == UInt64.max ? Double.infinity : Double(finished - started) / 1e9
        guard let first, let last, last.time > first.time else { return (exit, lines, 0, elapsed) }
        return (exit, lines, Double(last.bytes - first.bytes) / (Double(last.time - first.time) / 1e9), elapsed)
    }

    static let expectedOutput = [
        "virtio-blk-stream: slot=0",
        "stream: requests=128 bytes=\(streamBytes) failures=0",
        "done",
    ]

    @Test(
        "a guest streaming reads is held to the disk's limit within 10 %",
        arguments: [
            // 512 KiB per 125 ms: 4 MiB/s.
            ("bw=512K/125", RateLimit(bandwidth: TokenBucketLimit(size: 512 << 10, refillTimeMilliseconds: 125))),
            // 8 requests of 64 KiB per 125 ms: 64 requests, 4 MiB, per second.
            ("ops=8/125", RateLimit(operations: TokenBucketLimit(size: 8, refillTimeMilliseconds: 125))),
        ])
    func streamIsLimited(_ name: String, _ limit: RateLimit) throws {
        let (exit, output, rate, elapsed) = try Self.stream(limit)
        #expect(exit == .reset)
        #expect(output == Self.expectedOutput)
        let ratio = rate / Self.limitBytesPerSecond
        print("rate limit \(name): measured \(rate / 1_048_576) MiB/s, \(ratio * 100) % of the limit; 8 MiB in \(elapsed) s")
        #expect(ratio > 0.9 && ratio < 1.1, "\(name): measured \(rate) bytes/s for a limit of \(Self.limitBytesPerSecond)")
    }

    @Test("without a limit the same stream takes less than half the limited time (the limit is what holds it)")
    func unlimitedIsFaster() throws {
        let (exit, output, _, elapsed) = try Self.stream(nil)
        #expect(exit == .reset)
        #expect(output == Self.expectedOutput)
        print("rate limit none: 8 MiB in \(elapsed) s")
        #expect(elapsed < Double(Self.streamBytes) / Self.limitBytesPerSecond / 2)
    }

    @Test("a snapshot keeps the disk's limit (not its bucket): the restored guest finishes its stream under it")
    func snapshotKeepsTheLimit() throws {
        let limit = RateLimit(bandwidth: TokenBucketLimit(size: 512 << 10, refillTimeMilliseconds: 125, oneTimeBurst: 1))
        let image = try TemporaryFile(contents: [UInt8](repeating: 0x5A, count: Int(Self.streamBytes)))
        let directory = try TemporaryDirectory()
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-blk-stream.elf"), memorySize: 64 << 20, console: .output(console),
                disks: [DiskConfiguration(path: image.path, rateLimit: limit)]))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        try TestSupport.waitUntil("2 MiB streamed", within: TestSupport.guestDeadline) {
            machine.disks[0].withDevice { $0.statistics.bytesRead } >= 2 << 20
        }
        machine.pause()
        try machine.snapshot(to: directory.path)
        machine.stop()
        _ = machine.wait()
        let left = Self.streamBytes - machine.disks[0].withDevice { $0.statistics.bytesRead }

        let restoredConsole = BufferSerialOutput()
        let restored = try Machine(restoringFrom: directory.path, console: .output(restoredConsole))
        #expect(restored.configuration.disks[0].rateLimit == limit)
        #expect(restored.disks[0].withDevice { $0.rateLimiter?.limit } == limit)
        #expect(restored.disks[0].withDevice { $0.rateLimiter?.bandwidth?.burstRemaining } == 1, "buckets start full")
        restored.setDeadline(after: TestSupport.guestDeadline)
        let started = monotonicNanoseconds()
        try restored.start()
        #expect(restored.wait() == .reset)
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        #expect(restoredConsole.text.hasSuffix("stream: requests=128 bytes=\(Self.streamBytes) failures=0\ndone\n"))
        // What was left, less the full bucket, at 4 MiB/s (less 10 %).
        let limited = Double(left - (512 << 10)) / Self.limitBytesPerSecond
        #expect(seconds > 0.9 * limited, "\(left) bytes in \(seconds) s")
    }
}
