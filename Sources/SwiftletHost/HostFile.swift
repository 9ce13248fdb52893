import CHost
import Glibc

/// What kind of file a path names (the `S_IFMT` bits of its mode), for saying why it was refused.
public enum HostFileKind: String, Equatable, Sendable, CaseIterable {
    /// A regular file.
    case regularFile = "a regular file"
    /// A block device (a disk, a partition, `/dev/loopN`).
    case blockDevice = "a block device"
    /// A directory.
    case directory = "a directory"
    /// A character device (`/dev/null`, `/dev/zero`, a terminal).
    case characterDevice = "a character device"
    /// A FIFO (named pipe).
    case fifo = "a FIFO"
    /// A Unix-domain socket.
    case socket = "a socket"
    /// A symbolic link (seen only by `lstat`; opening follows links).
    case symbolicLink = "a symbolic link"
    /// A mode with none of the kinds above.
    case unknown = "a file of unknown kind"

    /// The kind of a file with mode `mode` (`st_mode`).
    public init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .regularFile
        case S_IFBLK: self = .blockDevice
        case S_IFDIR: self = .directory
        case S_IFCHR: self = .characterDevice
        case S_IFIFO: self = .fifo
        case S_IFSOCK: self = .socket
        case S_IFLNK: self = .symbolicLink
        default: self = .unknown
        }
    }
}

/// A user-given host file (a kernel, initrd or disk image) that cannot be opened or is of a kind
/// that cannot be used.
public enum HostFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// open(2), fstat(2) or fcntl(2) failed; the error names the operation and the path.
    case system(SystemError)
    /// `path` names `kind`, which is not one of the kinds `accepted` (in the caller's order).
    case unsupportedKind(path: String, kind: HostFileKind, accepted: [HostFileKind])

    /// The system error's description, or `<path> is a FIFO, not a regular file or a block device`.
    public var description: String {
        switch self {
        case .system(let error): error.description
        case .unsupportedKind(let path, let kind, let accepted):
            "\(path) is \(kind.rawValue), not \(accepted.map(\.rawValue).joined(separator: " or "))"
        }
    }
}

extension OwnedFileDescriptor {
    /// Opens the user-given file `path` with `flags` only if it is one of the kinds `accepted`,
    /// without blocking and without side effects from opening a device node.
    ///
    /// A FIFO nobody writes would block open(2) for ever, opening a character device runs its
    /// driver (a terminal may become the controlling terminal, a tape rewinds), and a socket
    /// cannot be opened at all (ENXIO). So the path is first checked with stat(2), and a kind
    /// that is not accepted is refused before any open. The open adds `O_NONBLOCK | O_NOCTTY`
    /// (and `O_CLOEXEC`), and fstat(2) on the new descriptor checks the kind again, since the
    /// path may have been replaced in between. `O_NONBLOCK` is then cleared, so the descriptor
    /// behaves like one opened plainly (for regular files and block devices it changes nothing).
    /// Symbolic links are followed: a link to an image is normal.
    ///
    /// Throws `.unsupportedKind` naming the path and its kind, or `.system` with the failing call
    /// (`open <path>` with open(2)'s errno, such as ENOENT or EACCES, when the kind was acceptable
    /// or stat(2) could not tell it).
    public convenience init(
        openingHostFile path: String, flags: Int32, accepting accepted: [HostFileKind]
    ) throws(HostFileError) {
        /// Throws if `path` names a kind not accepted; does nothing if stat(2) fails.
        func refuseUnacceptedKind() throws(HostFileError) {
            var info = stat()
            guard stat(path, &info) == 0 else { return }
            let kind = HostFileKind(mode: info.st_mode)
            guard accepted.contains(kind) else { throw .unsupportedKind(path: path, kind: kind, accepted: accepted) }
        }
        try refuseUnacceptedKind()
        let fd: Int32
        do { fd = try retryingOnInterrupt("open \(path)") { open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) } } catch {
            // A path replaced since the stat: a socket fails with ENXIO, a directory opened for
            // writing with EISDIR. Say what it is now, else keep open(2)'s error.
            try refuseUnacceptedKind()
            throw .system(error)
        }
        var info = stat()
        self.init(taking: fd)
        if fstat(fd, &info) != 0 { throw .system(SystemError.current("stat \(path)")) }
        let kind = HostFileKind(mode: info.st_mode)
        guard accepted.contains(kind) else { throw .unsupportedKind(path: path, kind: kind, accepted: accepted) }
        let status = fcntl(fd, F_GETFL)
        if status < 0 || fcntl(fd, F_SETFL, status & ~O_NONBLOCK) != 0 {
            throw .system(SystemError.current("fcntl \(path)"))
        }
    }
}
