import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

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
    ///
    /// The handlers are one-shot (`SA_RESETHAND`): they restore the mode, then the signal is
    /// raised again with its default action, so the process still dies of it. `restore()` puts
    /// back the actions that were installed before.
    public func enterRawMode() {
        guard isTerminal, saved == nil else { return }
        var original = termios()
        guard tcgetattr(inputDescriptor, &original) == 0 else { return }
        saved = original
        HostTerminal.signalRestore = (inputDescriptor, original)
        // The SIGSYS handler of the seccomp filters restores it too.
        swl_seccomp_set_terminal(inputDescriptor, &original)
        for (index, sig) in HostTerminal.restoringSignals.enumerated() {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in HostTerminal.restoreAndDie(of: signal) }
            sigemptyset(&action.sa_mask)
            // SA_RESETHAND is 0x80000000: as an Int32 it is negative, so convert its bits, not
            // its value (`Int32(SA_RESETHAND)` traps).
            action.sa_flags = HostTerminal.resetHandFlag
            sigaction(sig, &action, previousActions + index)
        }
        var raw = original
        cfmakeraw(&raw)
        // Keep output post-processing off as cfmakeraw sets it: the guest sends CR LF itself.
        _ = tcsetattr(inputDescriptor, TCSANOW, &raw)
    }

    /// Restores the mode saved by `enterRawMode()` and the signal actions it replaced (safe to
    /// call more than once).
    public func restore() {
        guard var original = saved else { return }
        _ = tcsetattr(inputDescriptor, TCSANOW, &original)
        for (index, sig) in HostTerminal.restoringSignals.enumerated() {
            sigaction(sig, previousActions + index, nil)
        }
        saved = nil
        HostTerminal.signalRestore = nil
        swl_seccomp_set_terminal(inputDescriptor, nil)
    }

    deinit {
        restore()
        previousActions.deallocate()
    }

    /// The signals whose handlers restore the terminal before the process dies.
    static let restoringSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    /// `SA_RESETHAND` (bit 31) as the `Int32` `sa_flags` wants.
    static let resetHandFlag = Int32(bitPattern: UInt32(SA_RESETHAND))

    /// The actions `enterRawMode()` replaced, in `restoringSignals` order.
    private let previousActions: UnsafeMutablePointer<sigaction> = {
        let actions = UnsafeMutablePointer<sigaction>.allocate(capacity: HostTerminal.restoringSignals.count)
        actions.initialize(repeating: sigaction(), count: HostTerminal.restoringSignals.count)
        return actions
    }()

    /// Restores the saved terminal mode, if raw mode is in effect, and ends the process by
    /// `signal` as if it had not been caught: default action back, the signal unblocked in the
    /// calling thread (a handler runs with it blocked; the signal stopper's thread blocks it),
    /// then raised. Only async-signal-safe calls, so it serves the raw-mode signal handlers and
    /// the signal stopper's second signal alike.
    static func restoreAndDie(of signal: Int32) -> Never {
        if let (fd, mode) = signalRestore {
            var copy = mode
            _ = tcsetattr(fd, TCSANOW, &copy)
        }
        Glibc.signal(signal, SIG_DFL)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        raise(signal)
        // A signal whose default action does not terminate: exit with the shell's status for it.
        _exit(128 + signal)
    }

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
