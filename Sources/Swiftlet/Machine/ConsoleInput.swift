import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Console input → the guest's UART, on the event-loop thread: from the host terminal (with the
/// `Ctrl-A x` escape) and from `Machine.sendConsoleInput`.
///
/// Bytes move into the UART only while its receive FIFO has room; what does not fit waits here
/// (and the terminal is left unread) until the guest drains the FIFO, so typing, pasting or an
/// embedder's input never loses a byte.
final class ConsoleInput: Sendable {
    private struct State {
        var escape = ConsoleEscape()
        var pending: [UInt8] = []
        var paused = false
        /// The input is a regular file (not pollable): read it from the poller instead.
        var readFromPoller = false
        var endOfInput = false
    }

    let terminal: HostTerminal?
    let serial: SerialPort
    let loop: EventLoop
    let onStop: @Sendable () -> Void
    private let state = Mutex(State())

    init(terminal: HostTerminal?, serial: SerialPort, loop: EventLoop, onStop: @escaping @Sendable () -> Void) {
        self.terminal = terminal
        self.serial = serial
        self.loop = loop
        self.onStop = onStop
    }

    /// Starts watching the terminal (if any) and delivering queued input.
    func attach() throws(SystemError) {
        if terminal != nil {
            do {
                try watchTerminal()
            } catch where error.errno == EPERM {
                // Regular files and /dev/null cannot be polled; they are always readable.
                state.withLock { $0.readFromPoller = true }
            }
        }
        loop.addPoller { [self] in
            let readNow = state.withLock { $0.readFromPoller && !$0.endOfInput && $0.pending.isEmpty }
            if readNow { readable(0) }
            return flushPending() || state.withLock { $0.readFromPoller && !$0.endOfInput }
        }
        loop.wake()
    }

    /// Watches the terminal for input. Pausing and end of input remove it from the loop
    /// entirely: epoll reports a hang-up even for a descriptor watched for no events, which
    /// would wake the loop over and over.
    private func watchTerminal() throws(SystemError) {
        guard let terminal else { return }
        try loop.add(terminal.inputDescriptor, events: EPOLLIN.rawValue) { [self] events in readable(events) }
    }

    /// Queues `bytes` for the guest (from any thread); they reach the UART in order.
    package func send(_ bytes: [UInt8]) {
        state.withLock { $0.pending.append(contentsOf: bytes) }
        loop.wake()
    }

    private func readable(_ events: UInt32) {
        guard let terminal else { return }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(terminal.inputDescriptor, $0.baseAddress, $0.count) }
        if count <= 0 {
            if count < 0 && (Glibc.errno == EINTR || Glibc.errno == EAGAIN) { return }
            // End of input (or an error): stop watching; the guest keeps running.
            let polled = state.withLock { state -> Bool in
                state.endOfInput = true
                return !state.readFromPoller
            }
            if polled { loop.remove(terminal.inputDescriptor) }
            return
        }
        var stop = false
        state.withLock { state in
            for byte in buffer[0..<count] {
                switch state.escape.feed(byte) {
                case .forward(let bytes): state.pending.append(contentsOf: bytes)
                case .stop: stop = true
                }
            }
        }
        if stop {
            onStop()
            return
        }
        _ = flushPending()
    }

    /// Moves pending bytes into the UART; pauses or resumes reading the terminal. Returns
    /// whether bytes are still waiting.
    private func flushPending() -> Bool {
        let (waiting, changePause) = state.withLock { state -> (Bool, Bool?) in
            if !state.pending.isEmpty {
                // Offer only what fits: the UART flags an overrun for bytes it must drop.
                let room = min(serial.inputSpace, state.pending.count)
                let taken = room > 0 ? serial.enqueueInput(state.pending[0..<room]) : 0
                state.pending.removeFirst(taken)
            }
            let waiting = !state.pending.isEmpty
            guard waiting != state.paused else { return (waiting, nil) }
            state.paused = waiting
            return (waiting, waiting)
        }
        let polled = !state.withLock { $0.readFromPoller || $0.endOfInput }
        if let pause = changePause, let terminal, polled {
            if pause {
                loop.remove(terminal.inputDescriptor)
            } else if (try? watchTerminal()) == nil {
                state.withLock { $0.endOfInput = true }
            }
        }
        return waiting
    }
}
