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

/// Boots Guests/build/virtio-net-test.elf (it echoes every frame it receives) over a tap in a
/// network namespace, with a receive or transmit limit, sends it a burst of frames and measures,
/// from the device's counters sampled every millisecond, the rate at which frames reach the
/// guest or leave it: within 10 % of the limit, past the bucket's initial contents.
@Suite(
    "KVM: rate-limited virtio-net", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason),
    .enabled(if: NetworkTestSupport.isRoot, NetworkTestSupport.notRootReason), .serialized, .timeLimit(.minutes(2)))
struct RateLimitNetworkKVMTests {
    static let frames = 40
    static let frameLength = 500

    @Test(
        "a burst of frames to an echoing guest is held to the interface's limit within 10 %",
        arguments: [
            // 5 frames per 250 ms to the guest: 20 frames per second, counted in frames received.
            ("rx-ops=5/250", true, 20.0),
            // 2500 bytes per 250 ms from the guest: 10000 bytes per second, counted in bytes sent.
            ("tx-bw=2500/250", false, 10_000.0),
        ])
    func burstIsLimited(_ name: String, _ receive: Bool, _ perSecond: Double) throws {
        let limit =
            receive
            ? RateLimit(operations: TokenBucketLimit(size: 5, refillTimeMilliseconds: 250))
            : RateLimit(bandwidth: TokenBucketLimit(size: 2500, refillTimeMilliseconds: 250))
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let tapName = "swr\(getpid() % 100_000)"
        let guestMAC = MACAddress.generated(from: tapName).octets
        let console = BufferSerialOutput()
        let configuration = MachineConfiguration(
            kernelPath: try TestSupport.guest("virtio-net-test.elf"), memorySize: 64 << 20, console: .output(console),
            networks: [
                NetworkConfiguration(
                    tap: tapName, receiveRateLimit: receive ? limit : nil, transmitRateLimit: receive ? nil : limit)
            ])
        let (machine, socket) = try namespace.run { () throws -> (Machine, PacketSocket) in
            (try Machine(configuration), try PacketSocket(interface: tapName))
        }
        try namespace.ip("link", "set", "dev", tapName, "up")
        machine.setDeadline(after: 60)
        try machine.start()
        defer {
            machine.stop()
            _ = machine.wait()
        }
        // The guest's hello first: its receive buffers are ready then.
        let started = monotonicNanoseconds()
        var hello = false
        while !hello, monotonicNanoseconds() - started < 30_000_000_000 {
            if let frame = socket.receive(timeout: 0.5), frame.count >= 14, Array(frame[6..<12]) == guestMAC { hello = true }
        }
        try #require(hello, "no hello from the guest; console: \(console.text)")
        for index in 0..<Self.frames {
            try socket.send(
                VirtioNetKVMTests.frame(to: guestMAC, length: Self.frameLength, label: "frame \(index) ", seed: index))
        }
        try socket.send(VirtioNetKVMTests.frame(to: guestMAC, length: 60, label: "BYE", seed: 0))

        // The counted quantity: frames received, or bytes of echoes sent (after the 78-byte hello).
        func count() -> Double {
            let statistics = machine.networkInterfaces[0].networkStatistics
            return receive ? Double(statistics.receivedFrames) : Double(statistics.transmittedBytes)
        }
        let unit = receive ? 1.0 : Double(Self.frameLength)
        let (low, high) = (10 * unit, 35 * unit)
        var first: (Double, UInt64)?
        var last: (Double, UInt64)?
        while last == nil, monotonicNanoseconds() - started < 60_000_000_000 {
            let now = monotonicNanoseconds()
            let value = count()
            if first == nil && value >= low { first = (value, now) }
            if value >= high { last = (value, now) }
            usleep(1000)
        }
        let (a, b) = (try #require(first), try #require(last))
        let rate = (b.0 - a.0) / (Double(b.1 - a.1) / 1e9)
        print("rate limit \(name): measured \(rate) per second, \(rate / perSecond * 100) % of the limit")
        #expect(rate > 0.9 * perSecond && rate < 1.1 * perSecond, "\(name): \(rate) per second")
        #expect(machine.wait() == .reset)
        #expect(console.text.contains("done: echoed=\(Self.frames) ignored="), "\(console.text)")
        let statistics = machine.networkInterfaces[0].statistics
        #expect(statistics.throttled > 0 && statistics.failedChains == 0)
    }
}

/// The rate limits in the snapshot's configuration records.
@Suite("Rate limiter: snapshot configuration")
struct RateLimitSnapshotFormatTests {
    /// A disk record as format 1 wrote it before rate limits existed.
    struct DiskBeforeRateLimits: Codable {
        var path: String
        var readOnly: Bool
        var id: String?
        var directIO: Bool
        var size: UInt64
    }

    @Test("a disk record without a rate limit (older state files) reads as unlimited; one with a limit keeps it")
    func olderRecordsRead() throws {
        let old = DiskBeforeRateLimits(path: "/d", readOnly: true, id: nil, directIO: false, size: 4096)
        let decoded = try BinaryDecoder.decode(SavedDisk.self, from: try BinaryEncoder.encode(old))
        #expect(decoded.path == "/d" && decoded.readOnly && decoded.size == 4096)
        #expect(decoded.rateLimit == nil)
        let limit = RateLimit(
            bandwidth: TokenBucketLimit(size: 1 << 20, refillTimeMilliseconds: 10, oneTimeBurst: 7),
            operations: TokenBucketLimit(size: 3, refillTimeMilliseconds: 1))
        let saved = SavedDisk(path: "/d", readOnly: false, id: "x", directIO: true, size: 512, rateLimit: limit)
        #expect(try BinaryDecoder.decode(SavedDisk.self, from: try BinaryEncoder.encode(saved)).rateLimit == limit)
        let network = SavedNetwork(tap: "t", mac: nil, offloads: true, receiveRateLimit: nil, transmitRateLimit: limit)
        let again = try BinaryDecoder.decode(SavedNetwork.self, from: try BinaryEncoder.encode(network))
        #expect(again.receiveRateLimit == nil && again.transmitRateLimit == limit)
    }
}
