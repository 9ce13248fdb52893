// The serial port's saved state (`PersistentDevice`). Kept apart from Serial8250.swift, which
// holds the register model; this file only reads and sets its fields.

import SwiftletMemory
import Synchronization

extension SerialPort: PersistentDevice {
    /// The UART's saved state: every register the guest can set or observe, the interrupt
    /// sources still pending, and the bytes waiting in the receive FIFO, oldest first.
    ///
    /// The level of the interrupt line is not saved: it follows from these fields, and a
    /// restored port drives its (new) line to it at once.
    public struct State: Codable, Equatable, Sendable {
        /// IER: the enabled interrupt sources (bits 0-3).
        public var interruptEnable: UInt8
        /// LCR, including the divisor-latch access bit (7).
        public var lineControl: UInt8
        /// MCR (bits 0-4; bit 4 is loopback).
        public var modemControl: UInt8
        /// The FCR bits that persist (enable, DMA mode, trigger level); 0 with the FIFOs off.
        public var fifoControl: UInt8
        /// The baud-rate divisor, DLM:DLL.
        public var divisor: UInt16
        /// SCR.
        public var scratch: UInt8
        /// LSR error bits not yet read (only the overrun error, bit 1, exists).
        public var lineStatusErrors: UInt8
        /// MSR delta bits not yet read (bits 0-3).
        public var modemStatusDeltas: UInt8
        /// The transmitter-empty interrupt is raised and not yet acknowledged (needs IER bit 1).
        public var transmitterEmptyInterruptPending: Bool
        /// Bytes received and not yet read by the guest, oldest first; at most
        /// `Serial8250.receiveFIFOCapacity`.
        public var receivedBytes: [UInt8]

        /// A state with these fields (unchecked: `SerialPort.restore` checks them).
        public init(
            interruptEnable: UInt8, lineControl: UInt8, modemControl: UInt8, fifoControl: UInt8, divisor: UInt16,
            scratch: UInt8, lineStatusErrors: UInt8, modemStatusDeltas: UInt8, transmitterEmptyInterruptPending: Bool,
            receivedBytes: [UInt8]
        ) {
            self.interruptEnable = interruptEnable
            self.lineControl = lineControl
            self.modemControl = modemControl
            self.fifoControl = fifoControl
            self.divisor = divisor
            self.scratch = scratch
            self.lineStatusErrors = lineStatusErrors
            self.modemStatusDeltas = modemStatusDeltas
            self.transmitterEmptyInterruptPending = transmitterEmptyInterruptPending
            self.receivedBytes = receivedBytes
        }
    }

    /// What a port is attached to: where transmitted bytes go and the interrupt line it drives.
    public struct Resources: Sendable {
        /// The sink for bytes the guest transmits.
        public var output: any SerialOutput
        /// The interrupt input the port drives (IRQ 4 for COM1).
        public var interruptLine: any InterruptLine
        /// Signalled when a full receive FIFO gets room (console input waits on it), if anyone waits.
        public var inputRoom: (any SerialInputRoomSignal)?

        /// Resources with this sink, line and input-room signal.
        public init(output: any SerialOutput, interruptLine: any InterruptLine, inputRoom: (any SerialInputRoomSignal)? = nil) {
            self.output = output
            self.interruptLine = interruptLine
            self.inputRoom = inputRoom
        }
    }

    /// The UART's registers, pending interrupts and received bytes now.
    public func saveState() -> State { state.savedState }

    /// A port in `state`, transmitting to `resources.output`; its interrupt line is raised at once
    /// if `state` has an interrupt pending. Throws for a register bit the UART does not have, a
    /// FIFO longer than 64 bytes, or a pending interrupt whose source is disabled.
    public static func restore(from state: State, with resources: Resources) throws(DeviceRestoreError) -> SerialPort {
        SerialPort(
            output: resources.output, interruptLine: resources.interruptLine, state: try Serial8250(validating: state),
            inputRoom: resources.inputRoom)
    }
}

extension Serial8250 {
    /// The register model as a saved state.
    var savedState: SerialPort.State {
        SerialPort.State(
            interruptEnable: interruptEnable, lineControl: lineControl, modemControl: modemControl,
            fifoControl: fifoControl, divisor: divisor, scratch: scratch, lineStatusErrors: lineStatusErrors,
            modemStatusDeltas: modemStatusDeltas, transmitterEmptyInterruptPending: transmitterEmptyInterruptPending,
            receivedBytes: (0..<receiveFIFO.count).map { receiveFIFO.element(at: $0) })
    }

    /// The register model in a saved state, after checking every field is one the UART can be in.
    init(validating state: SerialPort.State) throws(DeviceRestoreError) {
        let check = StateValidator(device: "8250 UART")
        try check.bits(state.interruptEnable, allowed: InterruptEnable.writableBits, "interruptEnable")
        try check.bits(state.modemControl, allowed: ModemControl.writableBits, "modemControl")
        try check.bits(state.fifoControl, allowed: FIFOControl.persistentBits, "fifoControl")
        try check.require(
            state.fifoControl == 0 || state.fifoControl & FIFOControl.enable != 0, "fifoControl",
            "trigger or DMA bits set with the FIFOs disabled (bit 0 clear)")
        try check.bits(state.lineStatusErrors, allowed: LineStatus.overrunError, "lineStatusErrors")
        try check.bits(state.modemStatusDeltas, allowed: 0x0F, "modemStatusDeltas")
        try check.require(
            !state.transmitterEmptyInterruptPending || state.interruptEnable & InterruptEnable.transmitterEmpty != 0,
            "transmitterEmptyInterruptPending", "pending while IER bit 1 (transmitter empty) is clear")
        guard state.receivedBytes.count <= ReceiveFIFO.capacity else {
            throw check.error("receivedBytes", .tooLong(count: state.receivedBytes.count, capacity: ReceiveFIFO.capacity))
        }
        self.init()
        interruptEnable = state.interruptEnable
        lineControl = state.lineControl
        modemControl = state.modemControl
        fifoControl = state.fifoControl
        divisorLatchLow = UInt8(truncatingIfNeeded: state.divisor)
        divisorLatchHigh = UInt8(truncatingIfNeeded: state.divisor >> 8)
        scratch = state.scratch
        lineStatusErrors = state.lineStatusErrors
        modemStatusDeltas = state.modemStatusDeltas
        transmitterEmptyInterruptPending = state.transmitterEmptyInterruptPending
        for byte in state.receivedBytes { _ = receiveFIFO.push(byte) }
    }
}

extension SerialPort {
    /// A port in `state` as `restore(from:with:)` makes it, which also tells `inputRoom` when its
    /// full receive FIFO gets room (the console input of a restored machine waits on it).
    public static func restore(
        from state: State, with resources: Resources, inputRoom: (any SerialInputRoomSignal)?
    ) throws(DeviceRestoreError) -> SerialPort {
        SerialPort(
            output: resources.output, interruptLine: resources.interruptLine, state: try Serial8250(validating: state),
            inputRoom: inputRoom)
    }
}
