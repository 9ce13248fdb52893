import CHost
import Glibc

/// A file descriptor with exactly one owner, closed exactly once when the owner goes away.
///
/// KVM objects (the system fd, VM fd, vCPU fds, eventfds) are wrapped in this class so a
/// descriptor can be shared by reference between the objects that use it without anyone
/// closing it twice or leaking it on an error path.
public final class OwnedFileDescriptor: Sendable {
    /// The raw descriptor. Valid for the lifetime of this object.
    public let rawValue: Int32

    /// Takes ownership of `rawValue`.
    public init(taking rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// Opens `path` with `flags` (O_CLOEXEC is always added).
    public convenience init(opening path: String, flags: Int32, mode: mode_t = 0) throws(SystemError) {
        let fd = try retryingOnInterrupt("open \(path)") { open(path, flags | O_CLOEXEC, mode) }
        self.init(taking: fd)
    }

    deinit {
        // close(2) must not be retried on EINTR on Linux: the descriptor is gone either way.
        _ = close(rawValue)
    }
}
