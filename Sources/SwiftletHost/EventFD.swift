import CHost
import Glibc

/// An eventfd(2): a counter the kernel and threads signal each other through.
public final class EventFD: Sendable {
    /// The eventfd descriptor (owned: closed with this object).
    package let fd: OwnedFileDescriptor

    /// A new eventfd (close-on-exec; non-blocking when asked).
    public init(nonblocking: Bool = true) throws(SystemError) {
        let raw = swl_eventfd_create(nonblocking ? 1 : 0)
        if raw < 0 { throw SystemError.current("eventfd") }
        fd = OwnedFileDescriptor(taking: raw)
    }

    /// The raw descriptor, for epoll registration.
    public var rawValue: Int32 { fd.rawValue }

    /// Adds one to the counter (wakes a reader, or raises an irqfd's interrupt).
    public func signal() throws(SystemError) {
        if swl_eventfd_signal(fd.rawValue) != 0 { throw SystemError.current("eventfd write") }
    }

    /// Reads and clears the counter; nil when it was zero (non-blocking eventfd).
    public func consume() throws(SystemError) -> UInt64? {
        var value: UInt64 = 0
        if swl_eventfd_consume(fd.rawValue, &value) == 0 { return value }
        if Glibc.errno == EAGAIN { return nil }
        throw SystemError.current("eventfd read")
    }
}
