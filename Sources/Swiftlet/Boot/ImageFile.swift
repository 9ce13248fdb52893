import Glibc

/// A kernel, initrd or disk image opened read-only, read with pread(2) without Foundation.
public final class ImageFile: Sendable {
    /// The path the file was opened from, as given (used in error messages).
    public let path: String
    /// The file's size in bytes when it was opened (`st_size`).
    public let size: UInt64
    let fd: OwnedFileDescriptor

    /// Opens `path`; fails with the errno (ENOENT, EACCES, EISDIR...) if it cannot be read.
    public init(path: String) throws(SystemError) {
        self.path = path
        fd = try OwnedFileDescriptor(opening: path, flags: O_RDONLY)
        var info = stat()
        if fstat(fd.rawValue, &info) != 0 { throw SystemError.current("stat \(path)") }
        if (info.st_mode & S_IFMT) == S_IFDIR { throw SystemError("read \(path)", errno: EISDIR) }
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
