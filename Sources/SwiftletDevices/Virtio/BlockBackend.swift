import CHost
import Glibc
import SwiftletHost
import SwiftletMemory

/// Where a block device's sectors live. Called only on the event-loop thread, under the
/// transport's lock for the device, one request at a time.
///
/// Requests arrive as I/O vectors over guest memory; an implementation may change the vectors
/// (they are the device's scratch space) but must read or write every byte, or throw.
public protocol BlockBackend: AnyObject, Sendable {
    /// Size of the image in bytes.
    var size: UInt64 { get }
    /// Fills `vectors` from the image starting at byte `offset`.
    func read(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError)
    /// Writes `vectors` to the image starting at byte `offset`; returns once the data was
    /// handed to the host kernel (or to the disk, with direct I/O).
    func write(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError)
    /// Makes earlier writes durable (fdatasync).
    func flush() throws(SystemError)
}

/// Walks a list of I/O vectors as one byte stream, copying to or from a flat buffer.
package struct VectorCursor {
    let vectors: UnsafeMutableBufferPointer<iovec>
    var index = 0
    var offset = 0

    /// A cursor at the start of `vectors`.
    package init(_ vectors: UnsafeMutableBufferPointer<iovec>) { self.vectors = vectors }

    /// Copies the next `count` bytes of the stream into `destination`.
    package mutating func copy(_ count: Int, to destination: UnsafeMutableRawPointer) {
        walk(count) { vector, done, piece in (destination + done).copyMemory(from: vector, byteCount: piece) }
    }

    /// Copies `count` bytes from `source` into the next bytes of the stream.
    package mutating func copy(_ count: Int, from source: UnsafeRawPointer) {
        walk(count) { vector, done, piece in vector.copyMemory(from: source + done, byteCount: piece) }
    }

    private mutating func walk(_ count: Int, _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) {
        var done = 0
        while done < count, index < vectors.count {
            let vector = vectors[index]
            let piece = min(vector.iov_len - offset, count - done)
            if piece > 0, let base = vector.iov_base { body(base + offset, done, piece) }
            done += piece
            offset += piece
            if offset == vector.iov_len {
                index += 1
                offset = 0
            }
        }
    }
}
