import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// The guest's serial console as an asynchronous stream of byte chunks, for embedders.
///
/// The UART hands bytes over on a vCPU thread; they go into a fixed ring buffer (no
/// allocation there) and the machine's event-loop thread turns them into chunks for `output`.
/// The stream finishes when the machine ends, after the bytes written until then. If the
/// ring ever fills because nobody drains it, further bytes are counted in `droppedBytes`.
public final class ConsoleStream: SerialOutput, @unchecked Sendable {
    /// Chunks of console output, in order.
    public let output: AsyncStream<[UInt8]>
    private let continuation: AsyncStream<[UInt8]>.Continuation
    private let ready: EventFD
    private let ring: Mutex<ByteRing>

    /// A stream whose ring holds up to `capacity` bytes not yet delivered.
    public init(capacity: Int = 1 << 20) throws(SystemError) {
        (output, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .unbounded)
        ready = try EventFD()
        ring = Mutex(ByteRing(capacity: max(1, capacity)))
    }

    /// Bytes lost because the ring was full.
    public var droppedBytes: Int { ring.withLock { $0.dropped } }

    /// Appends `bytes` to the ring (what does not fit is counted in `droppedBytes`) and, if the ring
    /// was empty, wakes the event loop to deliver them. Called on vCPU threads; never waits for a reader.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        let wasEmpty = ring.withLock { ring -> Bool in
            let empty = ring.count == 0
            ring.append(bytes)
            return empty
        }
        if wasEmpty { try? ready.signal() }
    }

    /// Delivers on `loop`'s thread whenever bytes arrive.
    func attach(to loop: EventLoop) throws(SystemError) {
        try loop.add(ready.rawValue, events: EPOLLIN.rawValue) { [self] _ in
            _ = try? ready.consume()
            deliver()
        }
    }

    /// Delivers what is buffered, then ends the stream.
    func finish() {
        ring.withLock { ring in
            let chunk = ring.removeAll()
            if !chunk.isEmpty { continuation.yield(chunk) }
            ring.finished = true
            continuation.finish()
        }
    }

    /// Takes and yields under the ring's lock, so a `finish()` on another thread can neither
    /// overtake a chunk already taken nor drop it.
    private func deliver() {
        ring.withLock { ring in
            guard !ring.finished else { return }
            let chunk = ring.removeAll()
            if !chunk.isEmpty { continuation.yield(chunk) }
        }
    }
}

/// A fixed-capacity FIFO of bytes: appending and taking never allocate.
///
/// The storage is allocated once and left uninitialised, so its pages cost resident memory only
/// once output has passed through them. Bytes that do not fit are counted in `dropped`.
struct ByteRing {
    private var storage: [UInt8]
    private var head = 0
    private(set) var count = 0
    private(set) var dropped = 0
    /// The stream was finished; nothing more is delivered.
    var finished = false

    init(capacity: Int) {
        // UInt8 needs no initialisation: every byte is written before it is read.
        storage = [UInt8](unsafeUninitializedCapacity: capacity) { _, initialized in initialized = capacity }
    }

    /// How many bytes the ring holds at most.
    var capacity: Int { storage.count }
    /// How many more bytes fit.
    var space: Int { storage.count - count }
    /// Whether no byte is waiting.
    var isEmpty: Bool { count == 0 }

    /// Appends what fits of `bytes`, oldest first; counts the rest in `dropped`.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let accepted = min(bytes.count, space)
        dropped += bytes.count - accepted
        guard accepted > 0, let source = bytes.baseAddress else { return }
        let capacity = storage.count
        let tail = (head + count) % capacity
        let first = min(accepted, capacity - tail)
        storage.withUnsafeMutableBytes { ring in
            (ring.baseAddress! + tail).copyMemory(from: source, byteCount: first)
            if accepted > first { ring.baseAddress!.copyMemory(from: source + first, byteCount: accepted - first) }
        }
        count += accepted
    }

    /// Moves up to `buffer.count` of the oldest bytes into `buffer`; returns how many.
    mutating func take(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let taken = min(buffer.count, count)
        guard taken > 0, let target = buffer.baseAddress else { return 0 }
        let capacity = storage.count
        let first = min(taken, capacity - head)
        storage.withUnsafeBytes { ring in
            target.copyMemory(from: ring.baseAddress! + head, byteCount: first)
            if taken > first { (target + first).copyMemory(from: ring.baseAddress!, byteCount: taken - first) }
        }
        head = (head + taken) % capacity
        count -= taken
        if count == 0 { head = 0 }
        return taken
    }

    /// Counts `lost` bytes that were taken but never delivered in `dropped`.
    mutating func noteDropped(_ lost: Int) { dropped += lost }

    /// Empties the ring, counting what it held in `dropped`.
    mutating func discardAll() {
        dropped += count
        head = 0
        count = 0
    }

    /// Everything buffered, oldest first; empties the ring.
    mutating func removeAll() -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        let taken = result.withUnsafeMutableBytes { take(into: $0) }
        assert(taken == result.count)
        return result
    }
}
