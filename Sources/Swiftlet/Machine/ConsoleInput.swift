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
///
/// Nothing polls. One eventfd, `work`, says "console input has something to do"; the loop
/// watches it. It is signalled by the UART when its full receive FIFO gets room
/// (`SerialInputRoomSignal`, wired by the machine as `EventFDInputRoomSignal`), by `send`, and
/// once by `attach`. While bytes are waiting the terminal is not watched at all; the next
/// `work` event moves what fits and watches the terminal again once nothing is left waiting.
///
/// Why no byte waits forever: bytes stay waiting only after `flushPending` saw the FIFO full
/// (`inputSpace == 0`, read under the port's lock). The guest's next read of RBR then turns that
/// full FIFO into one with room, which signals `work`; and an eventfd keeps its count until
/// it is read, so a signal that comes before the loop gets to it is not lost.
final class ConsoleInput: Sendable {
    private struct State {
        var escape = ConsoleEscape()
        var pending: [UInt8] = []
        /// The terminal is unwatched because bytes are waiting for room.
        var paused = false
        /// The input is a regular file or a device epoll refuses (EPERM; /dev/null): always
        /// readable, so it is read whenever the FIFO has room, on `work` events.
        var readWhenRoom = false
        var endOfInput = false
        /// `Ctrl-A x` was typed: nothing more is read.
        var stopped = false
    }

    let terminal: HostTerminal?
    let serial: SerialPort
    let loop: EventLoop
    /// Signalled when there is work: the UART's FIFO got room, or `send` queued bytes.
    let work: EventFD
    let onStop: @Sendable () -> Void
    private let state = Mutex(State())

    /// Input for `serial` from `terminal` (if any) and `send`, handled on `loop`. `work` is the
    /// eventfd the UART signals when its full FIFO gets room (give `serial` an
    /// `EventFDInputRoomSignal` over the same eventfd).
    init(
        terminal: HostTerminal?, serial: SerialPort, loop: EventLoop, work: EventFD,
        onStop: @escaping @Sendable () -> Void
    ) {
        self.terminal = terminal
        self.serial = serial
        self.loop = loop
        self.work = work
        self.onStop = onStop
    }

    /// Starts watching the terminal (if any) and the work eventfd, and delivers queued input.
    func attach() throws(SystemError) {
        try loop.add(work.rawValue, events: EPOLLIN.rawValue) { [self] _ in
            // Consume first: a signal that comes while we work stays counted for the next turn.
            _ = try? work.consume()
            serviceWork()
        }
        if terminal != nil {
            do {
                try watchTerminal()
            } catch  where error.errno == EPERM {
                // Regular files and /dev/null cannot be polled; they are always readable.
                state.withLock { $0.readWhenRoom = true }
            }
        }
        // Input sent before the machine started, and a file input's first bytes.
        try work.signal()
    }

    /// Watches the terminal for input. Pausing and end of input remove it from the loop
    /// entirely: epoll reports a hang-up even for a descriptor watched for no events, which
    /// would wake the loop over and over.
    private func watchTerminal() throws(SystemError) {
        guard let terminal else { return }
        try loop.add(terminal.inputDescriptor, events: EPOLLIN.rawValue) { [self] events in _ = readable(events) }
    }

    /// Queues `bytes` for the guest (from any thread); they reach the UART in order.
    package func send(_ bytes: [UInt8]) {
        state.withLock { $0.pending.append(contentsOf: bytes) }
        try? work.signal()
    }

    /// A `work` event: move what fits; then, for an always-readable input, read more while
    /// everything read so far has fitted (the FIFO holds 64 bytes, so this ends quickly, with
    /// bytes waiting for the next room signal, or at end of input).
    private func serviceWork() {
        _ = flushPending()
        while state.withLock({ $0.readWhenRoom && !$0.endOfInput && !$0.stopped && $0.pending.isEmpty }) {
            if !readable(0) { break }
        }
    }

    /// Reads the terminal once and moves what fits into the UART. Returns false when nothing
    /// more should be read now (end of input, an error, the escape, or EAGAIN).
    private func readable(_ events: UInt32) -> Bool {
        guard let terminal else { return false }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(terminal.inputDescriptor, $0.baseAddress, $0.count) }
        if count <= 0 {
            if count < 0 && Glibc.errno == EINTR { return true }
            if count < 0 && Glibc.errno == EAGAIN { return false }
            // End of input (or an error): stop watching; the guest keeps running.
            let watched = state.withLock { state -> Bool in
                state.endOfInput = true
                return !state.readWhenRoom && !state.paused
            }
            if watched { loop.remove(terminal.inputDescriptor) }
            return false
        }
        var stop = false
        state.withLock { state in
            for byte in buffer[0..<count] {
                switch state.escape.feed(byte) {
                case .forward(let bytes): state.pending.append(contentsOf: bytes)
                case .stop:
                    stop = true
                    state.stopped = true
                }
                if stop { break }
            }
        }
        if stop {
            onStop()
            return false
        }
        return !flushPending()
    }

    /// Moves pending bytes into the UART; pauses or resumes watching the terminal. Returns
    /// whether bytes are still waiting (then the FIFO was seen full, and its next drain signals
    /// `work`).
    private func flushPending() -> Bool {
        let (waiting, changePause) = state.withLock { state -> (Bool, Bool?) in
            // Offer only what fits: the UART flags an overrun for bytes it must drop. Loop until
            // the FIFO is seen full: the guest may read between `inputSpace` and the enqueue,
            // and only a full FIFO signals when it gets room.
            while !state.pending.isEmpty {
                let room = min(serial.inputSpace, state.pending.count)
                if room == 0 { break }
                state.pending.removeFirst(serial.enqueueInput(state.pending[0..<room]))
            }
            let waiting = !state.pending.isEmpty
            guard waiting != state.paused else { return (waiting, nil) }
            state.paused = waiting
            return (waiting, waiting)
        }
        let watched = !state.withLock { $0.readWhenRoom || $0.endOfInput || $0.stopped }
        if let pause = changePause, let terminal, watched {
            if pause {
                loop.remove(terminal.inputDescriptor)
            } else if (try? watchTerminal()) == nil {
                state.withLock { $0.endOfInput = true }
            }
        }
        return waiting
    }
}

/// The UART's "receive FIFO has room again" as a write to console input's `work` eventfd.
struct EventFDInputRoomSignal: SerialInputRoomSignal {
    let eventfd: EventFD
    /// Adding to an eventfd fails only when its counter would overflow, which the loop prevents
    /// by reading it; the wake-up is then already pending anyway.
    func inputRoomAvailable() { try? eventfd.signal() }
}
