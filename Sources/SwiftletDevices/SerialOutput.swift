import CHost
import Glibc
import SwiftletHost
import SwiftletMemory
import Synchronization

// MARK: - Output sinks

/// Where a serial port's transmitted bytes go: a terminal, a file, a buffer in tests.
///
/// `write` is called on vCPU threads, once per transmitted byte in the usual case, outside the
/// port's lock. An implementation must be safe to call from several threads at once.
public protocol SerialOutput: Sendable {
    /// Takes `bytes`, which are valid only during the call.
    func write(_ bytes: UnsafeRawBufferPointer)
}

/// Writes serial output to a file descriptor (for example standard output) with write(2).
///
/// The descriptor is borrowed, not owned: it must stay open while the port can transmit.
/// Interrupted and partial writes are retried; on any other error (a closed pipe, a
/// non-blocking descriptor that is full) the remaining bytes are dropped, as a UART whose
/// line is disconnected would lose them. A process writing to a pipe should ignore SIGPIPE.
public struct FileDescriptorSerialOutput: SerialOutput {
    /// The descriptor written to.
    public let fileDescriptor: Int32

    /// Output to `fileDescriptor`, which the caller keeps open.
    public init(fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
    }

    /// Output to the process's standard output.
    public static var standardOutput: FileDescriptorSerialOutput {
        FileDescriptorSerialOutput(fileDescriptor: STDOUT_FILENO)
    }

    /// Writes all of `bytes`, retrying on EINTR and after partial writes.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard var next = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let written = Glibc.write(fileDescriptor, next, remaining)
            if written > 0 {
                next += written
                remaining -= written
            } else if written < 0, errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

/// Collects serial output in memory, for tests and for embedders that show it themselves.
public final class BufferSerialOutput: SerialOutput {
    private let buffer = Mutex<[UInt8]>([])

    /// An empty buffer.
    public init() {}

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        buffer.withLock { $0.append(contentsOf: bytes) }
    }

    /// Everything written so far.
    public var bytes: [UInt8] { buffer.withLock { $0 } }

    /// Everything written so far, decoded as UTF-8 (invalid sequences become U+FFFD).
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// Forgets everything written so far.
    public func removeAll() {
        buffer.withLock { $0.removeAll() }
    }
}
