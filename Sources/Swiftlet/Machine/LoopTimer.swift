import CHost
import Glibc
import SwiftletHost

/// A one-shot timer the event loop watches: a CLOCK_MONOTONIC timerfd, readable once it has
/// expired. Arming it again replaces the earlier expiry. A rate-limited queue has one: when its
/// limiter refuses a request the queue is armed for the time the limiter names, and served again
/// when the descriptor becomes readable (no thread sleeps or spins meanwhile).
final class LoopTimer: Sendable {
    private let descriptor: OwnedFileDescriptor

    /// A disarmed timer.
    init() throws(SystemError) {
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        if fd < 0 { throw SystemError.current("timerfd_create") }
        descriptor = OwnedFileDescriptor(taking: fd)
    }

    /// The descriptor to watch for EPOLLIN.
    var fileDescriptor: Int32 { descriptor.rawValue }

    /// Makes the descriptor readable `nanoseconds` from now (at least 1 ns: 0 would disarm),
    /// replacing any earlier expiry. Cannot fail on a valid timerfd with a valid time.
    func arm(afterNanoseconds nanoseconds: UInt64) {
        let delay = max(1, min(nanoseconds, UInt64(Int64.max)))
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(delay / 1_000_000_000)
        spec.it_value.tv_nsec = Int(delay % 1_000_000_000)
        _ = timerfd_settime(descriptor.rawValue, 0, &spec, nil)
    }

    /// Reads the expiry count, so the descriptor is no longer readable (nothing to read: fine).
    func consume() {
        var expirations: UInt64 = 0
        _ = read(descriptor.rawValue, &expirations, MemoryLayout<UInt64>.size)
    }
}
