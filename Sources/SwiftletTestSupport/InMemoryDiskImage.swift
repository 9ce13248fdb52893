import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import Synchronization

/// An image held in host memory, for tests and fuzzing.
package final class InMemoryDiskImage: BlockBackend {
    private struct State {
        var bytes: [UInt8]
        var flushCount = 0
        var failure: Int32?
    }

    private let state: Mutex<State>
    /// The image's length in bytes, fixed at creation.
    package let size: UInt64

    /// An image holding `bytes`; it never grows, so requests past its end fail.
    package init(bytes: [UInt8]) {
        size = UInt64(bytes.count)
        state = Mutex(State(bytes: bytes))
    }

    /// The image's contents.
    package var bytes: [UInt8] { state.withLock { $0.bytes } }
    /// How often `flush()` was called.
    package var flushCount: Int { state.withLock { $0.flushCount } }
    /// When set, every read and write fails with this errno.
    package var failure: Int32? {
        get { state.withLock { $0.failure } }
        set { state.withLock { $0.failure = newValue } }
    }

    /// Copies the bytes from `offset` on into `vectors`. Throws `failure` when set, or EIO when the
    /// request runs past the end of the image.
    package func read(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError) {
        let range = try checkedRange(vectors, offset, "read")
        var cursor = VectorCursor(vectors)
        state.withLock { state in
            state.bytes.withUnsafeBytes { cursor.copy(range.count, from: $0.baseAddress! + range.lowerBound) }
        }
    }

    /// Copies `vectors` into the image at `offset`. Throws `failure` when set, or EIO when the request
    /// runs past the end of the image.
    package func write(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError) {
        let range = try checkedRange(vectors, offset, "write")
        var cursor = VectorCursor(vectors)
        state.withLock { state in
            state.bytes.withUnsafeMutableBytes { cursor.copy(range.count, to: $0.baseAddress! + range.lowerBound) }
        }
    }

    /// Counts the call in `flushCount`; never fails, even with `failure` set.
    package func flush() throws(SystemError) { state.withLock { $0.flushCount += 1 } }

    private func checkedRange(_ vectors: UnsafeMutableBufferPointer<iovec>, _ offset: UInt64, _ operation: String)
        throws(SystemError) -> Range<Int>
    {
        if let failure = self.failure { throw SystemError("\(operation) memory image", errno: failure) }
        let total = vectors.reduce(0) { $0 + UInt64($1.iov_len) }
        guard offset <= size, total <= size - offset else {
            throw SystemError("\(operation) memory image past its end", errno: EIO)
        }
        return Int(offset)..<Int(offset + total)
    }
}
