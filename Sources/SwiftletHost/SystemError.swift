import CHost
import Glibc

/// A failed system call: which operation failed and the `errno` it failed with.
///
/// Every KVM, memory and file operation in Swiftlet reports failures with this type, so an
/// error message always names what was attempted ("KVM_CREATE_VM", "mmap guest memory", ...)
/// and why the kernel refused it.
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What was attempted, e.g. `"KVM_SET_USER_MEMORY_REGION"` or `"open /dev/kvm"`.
    public let operation: String
    /// The `errno` value the kernel returned.
    public let errno: Int32

    /// An error for `operation` that failed with `errno`.
    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    /// Captures the calling thread's current `errno`.
    package static func current(_ operation: String) -> SystemError {
        SystemError(operation, errno: Glibc.errno)
    }

    /// `<operation> failed: <strerror text> (errno N)`.
    public var description: String {
        "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Retries `body` while it fails with EINTR; returns its result or throws `SystemError`.
@inline(__always)
package func retryingOnInterrupt(_ operation: @autoclosure () -> String, _ body: () -> Int32) throws(SystemError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        if Glibc.errno == EINTR { continue }
        throw SystemError.current(operation())
    }
}
