import CHost
import Glibc

/// The moment the process started, as the boot timer measures from it.
///
/// A front end calls `ProcessClock.markStart()` first thing in `main`; only the dynamic loader's
/// work before `main` is then missed. Without that call the reference is the first use of this
/// type (when the first machine is built).
public enum ProcessClock {
    /// CLOCK_MONOTONIC in nanoseconds at the reference point (first use, or `markStart()`).
    public static let startNanoseconds: UInt64 = monotonicNanoseconds()

    /// Fixes the reference point now (idempotent).
    public static func markStart() { _ = startNanoseconds }
}

/// CLOCK_MONOTONIC in nanoseconds.
package func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// `0x` and the value in lowercase hex, for messages.
package func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
