import CKVM
import Glibc
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

/// A fixed-capacity FIFO of bytes; appending never allocates.
struct ByteRing {
    private var storage: [UInt8]
    private var head = 0
    private(set) var count = 0
    private(set) var dropped = 0
    /// The stream was finished; nothing more is delivered.
    var finished = false

    init(capacity: Int) { storage = [UInt8](repeating: 0, count: capacity) }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        for byte in bytes {
            guard count < storage.count else {
                dropped += 1
                continue
            }
            storage[(head + count) % storage.count] = byte
            count += 1
        }
    }

    /// Everything buffered, oldest first; empties the ring.
    mutating func removeAll() -> [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(count)
        for i in 0..<count { result.append(storage[(head + i) % storage.count]) }
        head = 0
        count = 0
        return result
    }
}
