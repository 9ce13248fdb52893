import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// A kernel or initrd image opened read-only, read with pread(2) without Foundation.
///
/// Only regular files are accepted: a block device's `st_size` is 0 and a kernel or initrd on a
/// raw partition is not a use Swiftlet has, while a FIFO, socket, character device or directory
/// given by mistake is refused at once, naming what it is (`OwnedFileDescriptor(openingHostFile:)`).
public final class ImageFile: Sendable {
    /// The path the file was opened from, as given (used in error messages).
    public let path: String
    /// The file's size in bytes when it was opened (`st_size`).
    public let size: UInt64
    let fd: OwnedFileDescriptor

    /// Opens the regular file `path`; fails with `.unsupportedKind` for any other kind of file, or
    /// with the errno (ENOENT, EACCES, ...) if it cannot be opened.
    public init(path: String) throws(HostFileError) {
        self.path = path
        fd = try OwnedFileDescriptor(openingHostFile: path, flags: O_RDONLY, accepting: [.regularFile])
        var info = stat()
        if fstat(fd.rawValue, &info) != 0 { throw .system(SystemError.current("stat \(path)")) }
        size = UInt64(info.st_size)
    }

    /// Copies `count` bytes from file offset `offset` to `destination`; short files are an error.
    public func read(at offset: UInt64, count: Int, into destination: UnsafeMutableRawPointer) throws(SystemError) {
        var done = 0
        while done < count {
            let n = pread(fd.rawValue, destination + done, count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError.current("read \(path)")
            }
            if n == 0 { throw SystemError("read \(path) (file ends early)", errno: EIO) }
            done += n
        }
    }

    /// `count` bytes from `offset` (or fewer at the end of the file).
    public func bytes(at offset: UInt64, count: Int) throws(SystemError) -> [UInt8] {
        guard offset < size else { return [] }
        let available = Int(min(UInt64(count), size - offset))
        guard available > 0 else { return [] }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: available, alignment: 8)
        defer { buffer.deallocate() }
        try read(at: offset, count: available, into: buffer.baseAddress!)
        return Array(buffer)
    }
}
