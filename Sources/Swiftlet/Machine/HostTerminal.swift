import Glibc

/// The host terminal as the guest's serial console: raw mode while stdin is a terminal, and the
/// original mode restored on every way out (normal end, error, or a terminating signal).
///
/// In raw mode every key goes to the guest, Ctrl-C included. `Ctrl-A x` stops the VM and
/// `Ctrl-A Ctrl-A` sends one Ctrl-A (see `ConsoleEscape`).
public final class HostTerminal: @unchecked Sendable {
    /// The descriptor keys are read from and whose terminal mode is switched (normally standard input).
    public let inputDescriptor: Int32
    private var saved: termios?

    /// Wraps `inputDescriptor` (normally 0). Nothing changes until `enterRawMode()`.
    public init(inputDescriptor: Int32 = STDIN_FILENO) {
        self.inputDescriptor = inputDescriptor
    }

    /// Whether the input is a terminal (raw mode applies only then).
    public var isTerminal: Bool { isatty(inputDescriptor) == 1 }

    /// Switches a terminal input to raw mode and arranges for it to be restored on SIGINT,
    /// SIGTERM, SIGHUP and SIGQUIT as well as by `restore()`. Does nothing for a non-terminal.
    public func enterRawMode() {
        guard isTerminal, saved == nil else { return }
        var original = termios()
        guard tcgetattr(inputDescriptor, &original) == 0 else { return }
        saved = original
        HostTerminal.signalRestore = (inputDescriptor, original)
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                if let (fd, mode) = HostTerminal.signalRestore {
                    var copy = mode
                    _ = tcsetattr(fd, TCSANOW, &copy)
                }
                // Then die of the signal as if it had not been caught.
                Glibc.signal(signal, SIG_DFL)
                raise(signal)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = Int32(SA_RESETHAND)
            sigaction(sig, &action, nil)
        }
        var raw = original
        cfmakeraw(&raw)
        // Keep output post-processing off as cfmakeraw sets it: the guest sends CR LF itself.
        _ = tcsetattr(inputDescriptor, TCSANOW, &raw)
    }

    /// Restores the mode saved by `enterRawMode()` (safe to call more than once).
    public func restore() {
        guard var original = saved else { return }
        _ = tcsetattr(inputDescriptor, TCSANOW, &original)
        saved = nil
        HostTerminal.signalRestore = nil
    }

    deinit { restore() }

    /// What the signal handler restores. Written only before handlers can run.
    nonisolated(unsafe) static var signalRestore: (Int32, termios)?
}

/// The console escape sequence: `Ctrl-A x` asks to stop the VM, `Ctrl-A Ctrl-A` sends a
/// literal Ctrl-A, and Ctrl-A followed by anything else sends both bytes.
public struct ConsoleEscape: Equatable, Sendable {
    /// The escape prefix byte: Ctrl-A (0x01).
    public static let prefix: UInt8 = 0x01

    private var pendingPrefix = false

    /// A decoder with no prefix pending.
    public init() {}

    /// What a typed byte turns into.
    public enum Outcome: Equatable, Sendable {
        /// Send these bytes to the guest: the byte typed, none while a prefix is pending, or the held
        /// Ctrl-A with what followed it.
        case forward([UInt8])
        /// Stop the VM (`Ctrl-A x` or `Ctrl-A X`); nothing goes to the guest.
        case stop
    }

    /// Feeds one input byte.
    public mutating func feed(_ byte: UInt8) -> Outcome {
        if pendingPrefix {
            pendingPrefix = false
            switch byte {
            case UInt8(ascii: "x"), UInt8(ascii: "X"): return .stop
            case ConsoleEscape.prefix: return .forward([ConsoleEscape.prefix])
            default: return .forward([ConsoleEscape.prefix, byte])
            }
        }
        if byte == ConsoleEscape.prefix {
            pendingPrefix = true
            return .forward([])
        }
        return .forward([byte])
    }
}
