import CHost
import Glibc
import SwiftletHost
import SwiftletMemory
import Synchronization

// MARK: - Receive room signal

/// Told when a UART's receive FIFO, having been full, has room again (the guest read a byte or
/// cleared the FIFO), so that whoever holds back host input can feed it: the machine passes an
/// eventfd that re-arms its console input on the event loop, tests a counter.
///
/// Called on a vCPU thread, after the port's lock is released. Must not block.
public protocol SerialInputRoomSignal: Sendable {
    /// The receive FIFO went from full to having room.
    func inputRoomAvailable()
}

// MARK: - Bus device

/// An 8250/16550A UART on a bus (COM1 is at port 0x3F8, IRQ 4): a `Serial8250` guarded by a
/// mutex, an output sink for what the guest transmits, and the interrupt line it drives.
///
/// vCPU threads call `read` and `write`; the event-loop thread calls `enqueueInput` with host
/// input. After every access the interrupt line is set to the UART's new level, only when that
/// level changed. The line is driven while the lock is held, so concurrent accesses cannot
/// leave it at a stale level; transmitted bytes go to the sink after the lock is released, so a
/// slow terminal never holds up the event loop.
public final class SerialPort: BusDevice {
    /// The UART and the level last driven on the line, guarded together.
    private struct Guarded {
        var uart: Serial8250
        var lineIsHigh: Bool
    }

    private let guarded: Mutex<Guarded>
    private let output: any SerialOutput
    private let interruptLine: any InterruptLine
    private let inputRoom: (any SerialInputRoomSignal)?

    /// A port in `state` (the reset state unless restoring) that transmits to `output` and
    /// interrupts through `interruptLine`. The line is assumed low at first and raised at once
    /// if `state` has an interrupt pending. `inputRoom`, if given, is told each time a guest
    /// access turns a full receive FIFO into one with room (not on every read).
    public init(
        output: any SerialOutput, interruptLine: any InterruptLine, state: Serial8250 = Serial8250(),
        inputRoom: (any SerialInputRoomSignal)? = nil
    ) {
        self.output = output
        self.interruptLine = interruptLine
        self.inputRoom = inputRoom
        let level = state.interruptPending
        self.guarded = Mutex(Guarded(uart: state, lineIsHigh: level))
        if level { interruptLine.setLevel(true) }
    }

    /// Reads the register at `offset`. Only the first byte of a wider access reaches the
    /// register (once, so read side effects happen once); the other bytes read 0. Offsets past
    /// the UART's 8 registers read all ones.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count > 0 else { return }
        guard offset < UInt64(Serial8250.Register.count) else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return
        }
        let (value, gotRoom) = guarded.withLock { guarded in
            let wasFull = guarded.uart.inputSpace == 0
            let value = guarded.uart.read(offset: UInt8(offset))
            updateLine(&guarded)
            return (value, wasFull && guarded.uart.inputSpace > 0)
        }
        if gotRoom { inputRoom?.inputRoomAvailable() }
        data.initializeMemory(as: UInt8.self, repeating: 0)
        data[0] = value
    }

    /// Writes the first byte of `data` to the register at `offset`; the other bytes of a wider
    /// access are ignored, as are offsets past the UART's 8 registers. A transmitted byte goes
    /// to the output sink. (Clearing a full receive FIFO through FCR gives it room.)
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count > 0, offset < UInt64(Serial8250.Register.count) else { return }
        let (transmitted, gotRoom) = guarded.withLock { guarded in
            let wasFull = guarded.uart.inputSpace == 0
            let transmitted = guarded.uart.write(offset: UInt8(offset), value: data[0])
            updateLine(&guarded)
            return (transmitted, wasFull && guarded.uart.inputSpace > 0)
        }
        if gotRoom { inputRoom?.inputRoomAvailable() }
        if let byte = transmitted {
            withUnsafeBytes(of: byte) { output.write($0) }
        }
    }

    /// Host input for the guest (called on the event-loop thread): queues what fits in the
    /// receive FIFO, raises the interrupt if the guest enabled it, and returns how many bytes
    /// were taken. Enqueue at most `inputSpace` bytes to never set the overrun error.
    @discardableResult
    public func enqueueInput<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        guarded.withLock { guarded in
            let accepted = guarded.uart.enqueueInput(bytes)
            updateLine(&guarded)
            return accepted
        }
    }

    /// How many bytes the receive FIFO can take now.
    public var inputSpace: Int { guarded.withLock { $0.uart.inputSpace } }

    /// A copy of the UART's registers and queued input, for a snapshot.
    public var state: Serial8250 { guarded.withLock { $0.uart } }

    /// Replaces the UART's state (restoring a snapshot) and drives the interrupt line to the
    /// restored level unconditionally, since the line may belong to a machine that never saw
    /// the previous level.
    public func restore(_ state: Serial8250) {
        guarded.withLock { guarded in
            guarded.uart = state
            guarded.lineIsHigh = state.interruptPending
            interruptLine.setLevel(guarded.lineIsHigh)
        }
    }

    /// Drives the line to the UART's level if it changed. Called with the lock held.
    @inline(__always)
    private func updateLine(_ guarded: inout Guarded) {
        let level = guarded.uart.interruptPending
        if level != guarded.lineIsHigh {
            guarded.lineIsHigh = level
            interruptLine.setLevel(level)
        }
    }
}
