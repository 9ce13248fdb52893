import CHost
import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletMemory
import Synchronization

/// A raw disk image file (or host block device) opened for a virtio-blk device.
///
/// Reads and writes go straight between the file and guest memory with preadv/pwritev. With
/// direct I/O (`O_DIRECT`, bypassing the host page cache) they go through one aligned bounce
/// buffer instead, allocated once: guest buffers and request offsets need not be aligned to
/// the host's direct-I/O alignment, so a request is widened to aligned blocks, and a write
/// that covers blocks only partly reads them first.
///
/// Sendable by contract: every property is immutable except the bounce buffer's contents,
/// which only the thread serving the device (holding the transport's lock) touches.
public final class RawDiskImage: BlockBackend, @unchecked Sendable {
    /// Alignment of file offsets, lengths and memory for direct I/O (enough for every common
    /// host block device and file system).
    public static let directIOAlignment = 4096
    /// The direct-I/O bounce buffer: requests larger than this are done in pieces.
    public static let bounceBufferSize = 1 << 20
    /// `O_DIRECT` on x86_64 Linux (Glibc exposes it only with _GNU_SOURCE).
    static let openDirect: Int32 = 0o40000
    /// IOV_MAX on Linux: the most vectors one preadv/pwritev takes.
    static let vectorsPerCall = 1024

    /// The path the image was opened from, as given (named in error messages).
    public let path: String
    /// The image's size in bytes: the file's length, or the block device's capacity; at least one
    /// 512-byte sector, and a multiple of `directIOAlignment` with direct I/O.
    public let size: UInt64
    /// Opened `O_RDONLY`: `write` fails with EROFS and `flush` does nothing.
    public let isReadOnly: Bool
    /// Opened with `O_DIRECT`: every transfer goes through the aligned bounce buffer.
    public let usesDirectIO: Bool
    let fd: OwnedFileDescriptor
    private let bounce: UnsafeMutableRawBufferPointer?

    /// Opens `path` for reading (and writing unless `readOnly`), with `O_DIRECT` when
    /// `directIO`. It must be a regular file or a block device (a directory, FIFO, socket or
    /// character device is refused without blocking or opening it:
    /// `OwnedFileDescriptor(openingHostFile:)`). The image must hold at least one 512-byte
    /// sector; with direct I/O its size must be a multiple of `directIOAlignment`.
    public init(path: String, readOnly: Bool = false, directIO: Bool = false) throws(DiskImageError) {
        self.path = path
        self.isReadOnly = readOnly
        self.usesDirectIO = directIO
        let flags = (readOnly ? O_RDONLY : O_RDWR) | (directIO ? Self.openDirect : 0)
        do { fd = try OwnedFileDescriptor(openingHostFile: path, flags: flags, accepting: [.regularFile, .blockDevice]) } catch {
            switch error {
            case .system(let error):
                if directIO, error.errno == EINVAL, error.operation.hasPrefix("open ") { throw .directIOUnsupported(path: path) }
                throw .cannotOpen(path: path, error)
            case .unsupportedKind(_, let kind, _): throw .notAFileOrBlockDevice(path: path, kind: kind)
            }
        }
        // lseek to the end gives the size of block devices as well as of files.
        let end = lseek(fd.rawValue, 0, SEEK_END)
        if end < 0 { throw .cannotOpen(path: path, SystemError.current("seek \(path)")) }
        size = UInt64(end)
        guard size >= VirtioBlock.sectorSize else { throw .tooSmall(path: path, size: size) }
        if directIO {
            guard size % UInt64(Self.directIOAlignment) == 0 else {
                throw .directIOSize(path: path, size: size, alignment: Self.directIOAlignment)
            }
            bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bounceBufferSize, alignment: Self.directIOAlignment)
        } else {
            bounce = nil
        }
    }

    deinit { bounce?.deallocate() }

    /// Fills `vectors` from byte `offset` on with preadv (through the bounce buffer with direct I/O),
    /// retrying on EINTR and after short reads. Throws EIO if the image ends first, or the read's error.
    public func read(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError) {
        if let bounce {
            try transferDirect(vectors, at: offset, writing: false, bounce: bounce)
        } else {
            try transfer(vectors, at: offset, writing: false)
        }
    }

    /// Writes `vectors` at byte `offset` with pwritev, or with direct I/O through the bounce buffer
    /// (reading partly covered blocks first). Throws EROFS on a read-only image, EIO if the image ends
    /// first, or the write's error.
    public func write(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(SystemError) {
        guard !isReadOnly else { throw SystemError("write \(path) (read-only disk)", errno: EROFS) }
        if let bounce {
            try transferDirect(vectors, at: offset, writing: true, bounce: bounce)
        } else {
            try transfer(vectors, at: offset, writing: true)
        }
    }

    /// Makes earlier writes durable with fdatasync(2), retrying on EINTR; a no-op on a read-only image.
    public func flush() throws(SystemError) {
        guard !isReadOnly else { return }
        _ = try retryingOnInterrupt("fdatasync \(path)") { fdatasync(fd.rawValue) }
    }

    /// preadv/pwritev until every vector is done, advancing the vectors past partial transfers.
    private func transfer(_ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64, writing: Bool) throws(SystemError) {
        guard let base = vectors.baseAddress else { return }
        var index = 0
        var position = offset
        while index < vectors.count {
            if vectors[index].iov_len == 0 {
                index += 1
                continue
            }
            let batch = Int32(min(vectors.count - index, Self.vectorsPerCall))
            let done =
                writing
                ? pwritev(fd.rawValue, base + index, batch, off_t(truncatingIfNeeded: position))
                : preadv(fd.rawValue, base + index, batch, off_t(truncatingIfNeeded: position))
            if done < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("\(writing ? "write" : "read") \(path) at \(position)")
            }
            if done == 0 { throw SystemError("\(writing ? "write" : "read") \(path) at \(position) (end of file)", errno: EIO) }
            position += UInt64(done)
            var remaining = done
            while remaining > 0, index < vectors.count {
                if vectors[index].iov_len <= remaining {
                    remaining -= vectors[index].iov_len
                    index += 1
                } else {
                    vectors[index].iov_base = vectors[index].iov_base.map { $0 + remaining }
                    vectors[index].iov_len -= remaining
                    remaining = 0
                }
            }
        }
    }

    /// Direct I/O through the bounce buffer: each piece is widened to aligned blocks.
    private func transferDirect(
        _ vectors: UnsafeMutableBufferPointer<iovec>, at offset: UInt64, writing: Bool, bounce: UnsafeMutableRawBufferPointer
    ) throws(SystemError) {
        let alignment = UInt64(Self.directIOAlignment)
        let total = vectors.reduce(0) { $0 + UInt64($1.iov_len) }
        let end = offset + total
        var cursor = VectorCursor(vectors)
        var position = offset
        while position < end {
            let blockStart = position & ~(alignment - 1)
            let pieceEnd = min(end, blockStart + UInt64(bounce.count))
            let alignedEnd = (pieceEnd + alignment - 1) & ~(alignment - 1)
            let length = Int(alignedEnd - blockStart)
            let inner = Int(position - blockStart)
            let count = Int(pieceEnd - position)
            if !writing || inner != 0 || pieceEnd != alignedEnd {
                try whole(bounce.baseAddress!, count: length, at: blockStart, writing: false)
            }
            if writing {
                cursor.copy(count, to: bounce.baseAddress! + inner)
                try whole(bounce.baseAddress!, count: length, at: blockStart, writing: true)
            } else {
                cursor.copy(count, from: bounce.baseAddress! + inner)
            }
            position = pieceEnd
        }
    }

    /// pread/pwrite of exactly `count` bytes.
    private func whole(_ buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, writing: Bool) throws(SystemError) {
        var done = 0
        while done < count {
            let position = off_t(truncatingIfNeeded: offset + UInt64(done))
            let n =
                writing
                ? pwrite(fd.rawValue, buffer + done, count - done, position)
                : pread(fd.rawValue, buffer + done, count - done, position)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("\(writing ? "write" : "read") \(path) at \(position)")
            }
            if n == 0 { throw SystemError("\(writing ? "write" : "read") \(path) at \(position) (end of file)", errno: EIO) }
            done += n
        }
    }
}

/// A disk image that cannot be used.
public enum DiskImageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// open(2) of the image failed, or fstat/fcntl/lseek on it did.
    case cannotOpen(path: String, SystemError)
    /// The path names `kind` (a directory, FIFO, socket, character device...), neither a regular
    /// file nor a block device. Refused before it is opened, so nothing blocks or is touched.
    case notAFileOrBlockDevice(path: String, kind: HostFileKind)
    /// The image holds fewer than 512 bytes (`VirtioBlock.sectorSize`), so not one sector.
    case tooSmall(path: String, size: UInt64)
    /// open(2) with `O_DIRECT` failed with EINVAL: the file system holding the image has no direct I/O.
    case directIOUnsupported(path: String)
    /// With direct I/O the image's size must be a multiple of `alignment` (`RawDiskImage.directIOAlignment`).
    case directIOSize(path: String, size: UInt64, alignment: Int)

    /// A one-line explanation naming the image (through the system error for `cannotOpen`).
    public var description: String {
        switch self {
        case .cannotOpen(_, let error): "cannot open disk image: \(error)"
        case .notAFileOrBlockDevice(let path, let kind):
            "disk image \(path) is \(kind.rawValue), not a regular file or a block device"
        case .tooSmall(let path, let size): "disk image \(path) holds \(size) bytes, less than one 512-byte sector"
        case .directIOUnsupported(let path): "the file system holding \(path) does not support direct I/O (O_DIRECT)"
        case .directIOSize(let path, let size, let alignment):
            "disk image \(path) holds \(size) bytes; direct I/O needs a multiple of \(alignment)"
        }
    }
}
