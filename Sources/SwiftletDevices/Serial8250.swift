import CHost
import Glibc
import SwiftletHost
import SwiftletMemory
import Synchronization

// MARK: - Register model

/// The register model of an 8250/16550A UART, the serial port Linux knows as `ttyS0`.
///
/// A plain value: the guest's register accesses go in through `read(offset:)` and
/// `write(offset:value:)`, host input through `enqueueInput(_:)`, and out come the bytes the
/// guest transmits and whether the interrupt line should be high (`interruptPending`). It knows
/// nothing of buses, threads or VMs, so every rule below is testable on its own, and it is
/// `Codable` so a snapshot can save it.
///
/// Registers, by offset from the base port (`DLAB` is bit 7 of LCR):
///
///     0  read: RBR (receive buffer)       write: THR (transmit holding)   DLAB=1: DLL
///     1  IER (interrupt enable)                                           DLAB=1: DLM
///     2  read: IIR (interrupt identity)   write: FCR (FIFO control)
///     3  LCR (line control)
///     4  MCR (modem control; bit 4 = loopback)
///     5  LSR (line status; writes ignored)
///     6  MSR (modem status; writes ignored)
///     7  SCR (scratch)
///
/// Transmission is instantaneous: a byte written to THR is handed to the caller at once, so
/// THR and the transmitter are always empty (LSR.THRE and LSR.TEMT always set). Received bytes
/// wait in a 64-byte FIFO. Interrupt sources, highest priority first: receiver line status
/// (an overrun), received data available, transmitter holding register empty, modem status.
/// The receive FIFO's trigger level is not modelled: received data is reported as soon as one
/// byte is waiting, which Linux's driver handles like a timeout interrupt.
public struct Serial8250: Equatable, Codable, Sendable {
    /// How many received bytes the UART holds before it overruns.
    public static let receiveFIFOCapacity = ReceiveFIFO.capacity

    /// Interrupt Enable Register, bits 0-3 (`InterruptEnable`).
    var interruptEnable: UInt8 = 0
    /// Line Control Register. The reset value selects 8 data bits, no parity, 1 stop bit.
    var lineControl: UInt8 = 0x03
    /// Modem Control Register, bits 0-4 (`ModemControl`). OUT2 set at reset, as QEMU and
    /// Firecracker do; OUT2 does not gate the interrupt here.
    var modemControl: UInt8 = ModemControl.out2
    /// FIFO control bits that persist: FIFO enable (bit 0), DMA mode (bit 3), trigger (6-7).
    var fifoControl: UInt8 = 0
    /// Divisor latch, low byte. The reset divisor 12 means 9600 baud; it has no effect here.
    var divisorLatchLow: UInt8 = 12
    /// Divisor latch, high byte.
    var divisorLatchHigh: UInt8 = 0
    /// Scratch register: 8 bits of storage for software, nothing else.
    var scratch: UInt8 = 0
    /// Error bits of LSR (only `LineStatus.overrunError` is ever set), cleared by reading LSR.
    var lineStatusErrors: UInt8 = 0
    /// Delta bits of MSR (bits 0-3), set by modem line changes and cleared by reading MSR.
    var modemStatusDeltas: UInt8 = 0
    /// Whether the "transmitter holding register empty" interrupt is armed. Set when the guest
    /// enables it while THR is empty or writes THR (the byte leaves at once); cleared when the
    /// guest reads IIR while it is the reported source, or disables it in IER.
    var transmitterEmptyInterruptPending = false
    /// Bytes received from the host (or looped back) and not yet read from RBR.
    var receiveFIFO = ReceiveFIFO()

    /// A UART in its reset state: no interrupts enabled, nothing received.
    public init() {}

    // MARK: Guest register access

    /// The guest reads the register at `offset` (0-7). Reads have side effects: RBR takes a byte
    /// from the receive FIFO, IIR acknowledges a transmitter-empty interrupt, LSR clears the
    /// error bits, MSR clears the delta bits. Offsets beyond 7 read `0xFF`.
    public mutating func read(offset: UInt8) -> UInt8 {
        switch offset {
        case Register.data:
            if divisorLatchAccess { return divisorLatchLow }
            return receiveFIFO.pop() ?? 0
        case Register.interruptEnable:
            if divisorLatchAccess { return divisorLatchHigh }
            return interruptEnable
        case Register.interruptIdentification:
            let identification = currentInterruptIdentification
            if identification == InterruptIdentification.transmitterEmpty {
                transmitterEmptyInterruptPending = false
            }
            return identification | (fifosEnabled ? InterruptIdentification.fifosEnabled : 0)
        case Register.lineControl:
            return lineControl
        case Register.modemControl:
            return modemControl
        case Register.lineStatus:
            let status = lineStatus
            lineStatusErrors = 0
            return status
        case Register.modemStatus:
            let status = modemStatus
            modemStatusDeltas = 0
            return status
        case Register.scratch:
            return scratch
        default:
            return 0xFF
        }
    }

    /// The guest writes `value` to the register at `offset` (0-7); other offsets are ignored.
    ///
    /// Returns the byte to transmit when the write is to THR outside loopback mode, `nil`
    /// otherwise. In loopback mode a THR byte goes to the receive FIFO instead.
    @discardableResult
    public mutating func write(offset: UInt8, value: UInt8) -> UInt8? {
        switch offset {
        case Register.data:
            if divisorLatchAccess {
                divisorLatchLow = value
                return nil
            }
            // The byte leaves THR at once, so THR is empty again straight away: the
            // transmitter-empty interrupt is acknowledged by this write and re-raised by the
            // (instant) transmission, which is what lets Linux send its next burst.
            transmitterEmptyInterruptPending = interruptEnable & InterruptEnable.transmitterEmpty != 0
            if isLoopback {
                receive(value)
                return nil
            }
            return value
        case Register.interruptEnable:
            if divisorLatchAccess {
                divisorLatchHigh = value
                return nil
            }
            let wasEnabled = interruptEnable & InterruptEnable.transmitterEmpty != 0
            interruptEnable = value & InterruptEnable.writableBits
            let isEnabled = interruptEnable & InterruptEnable.transmitterEmpty != 0
            if !isEnabled {
                transmitterEmptyInterruptPending = false
            } else if !wasEnabled {
                // Enabling the interrupt while THR is empty (it always is) raises it at once.
                transmitterEmptyInterruptPending = true
            }
        case Register.fifoControl:
            let enable = value & FIFOControl.enable != 0
            if value & FIFOControl.clearReceiveFIFO != 0 || enable != fifosEnabled {
                receiveFIFO.removeAll()
            }
            // The other FCR bits only take effect while the FIFOs are enabled.
            fifoControl = enable ? value & FIFOControl.persistentBits : 0
        case Register.lineControl:
            lineControl = value
        case Register.modemControl:
            let previousLines = modemStatusLines
            modemControl = value & ModemControl.writableBits
            recordModemLineChanges(from: previousLines, to: modemStatusLines)
        case Register.scratch:
            scratch = value
        default:
            // LSR and MSR are read-only; anything past offset 7 is not a UART register.
            break
        }
        return nil
    }

    // MARK: Host input

    /// Appends host input to the receive FIFO and returns how many of `bytes` fit.
    ///
    /// Bytes beyond the free space are not taken, and the UART records an overrun error (LSR
    /// bit 1) as real hardware does when it loses a byte. Callers that must not lose input
    /// enqueue at most `inputSpace` bytes and keep the rest for later.
    public mutating func enqueueInput<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        var accepted = 0
        for byte in bytes {
            guard receiveFIFO.push(byte) else {
                lineStatusErrors |= LineStatus.overrunError
                break
            }
            accepted += 1
        }
        return accepted
    }

    /// How many more bytes the receive FIFO can take before it overruns.
    public var inputSpace: Int { ReceiveFIFO.capacity - receiveFIFO.count }

    /// Whether the UART's interrupt output is asserted: some enabled source is pending.
    public var interruptPending: Bool {
        currentInterruptIdentification != InterruptIdentification.none
    }

    // MARK: Derived register values

    var divisorLatchAccess: Bool { lineControl & LineControl.divisorLatchAccess != 0 }
    var isLoopback: Bool { modemControl & ModemControl.loopback != 0 }
    var fifosEnabled: Bool { fifoControl & FIFOControl.enable != 0 }

    /// The 16-bit baud-rate divisor in DLM:DLL.
    package var divisor: UInt16 { UInt16(divisorLatchHigh) << 8 | UInt16(divisorLatchLow) }

    /// LSR: data ready, error bits, and a transmitter that is always empty.
    var lineStatus: UInt8 {
        var status = LineStatus.transmitterHoldingEmpty | LineStatus.transmitterEmpty | lineStatusErrors
        if !receiveFIFO.isEmpty { status |= LineStatus.dataReady }
        return status
    }

    /// MSR: the modem input lines (bits 4-7) and their change bits (0-3).
    var modemStatus: UInt8 { modemStatusLines | modemStatusDeltas }

    /// The modem input lines as MSR bits 4-7. In loopback mode they are wired to the modem
    /// control outputs (RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD); otherwise a terminal is
    /// connected and ready (CTS, DSR and DCD asserted, no ring).
    var modemStatusLines: UInt8 {
        guard isLoopback else {
            return ModemStatus.clearToSend | ModemStatus.dataSetReady | ModemStatus.dataCarrierDetect
        }
        var lines: UInt8 = 0
        if modemControl & ModemControl.requestToSend != 0 { lines |= ModemStatus.clearToSend }
        if modemControl & ModemControl.dataTerminalReady != 0 { lines |= ModemStatus.dataSetReady }
        if modemControl & ModemControl.out1 != 0 { lines |= ModemStatus.ringIndicator }
        if modemControl & ModemControl.out2 != 0 { lines |= ModemStatus.dataCarrierDetect }
        return lines
    }

    /// The highest-priority enabled pending source as IIR bits 0-3 (`InterruptIdentification`).
    var currentInterruptIdentification: UInt8 {
        if interruptEnable & InterruptEnable.receiverLineStatus != 0, lineStatusErrors != 0 {
            return InterruptIdentification.receiverLineStatus
        }
        if interruptEnable & InterruptEnable.receivedDataAvailable != 0, !receiveFIFO.isEmpty {
            return InterruptIdentification.receivedDataAvailable
        }
        if interruptEnable & InterruptEnable.transmitterEmpty != 0, transmitterEmptyInterruptPending {
            return InterruptIdentification.transmitterEmpty
        }
        if interruptEnable & InterruptEnable.modemStatus != 0, modemStatusDeltas != 0 {
            return InterruptIdentification.modemStatus
        }
        return InterruptIdentification.none
    }

    // MARK: Helpers

    /// A byte arrives on the receive side; with the FIFO full it is lost and overrun is set.
    private mutating func receive(_ byte: UInt8) {
        if !receiveFIFO.push(byte) { lineStatusErrors |= LineStatus.overrunError }
    }

    /// Sets the MSR delta bits for the modem input lines that changed.
    private mutating func recordModemLineChanges(from previous: UInt8, to current: UInt8) {
        let changed = previous ^ current
        if changed & ModemStatus.clearToSend != 0 { modemStatusDeltas |= ModemStatus.deltaClearToSend }
        if changed & ModemStatus.dataSetReady != 0 { modemStatusDeltas |= ModemStatus.deltaDataSetReady }
        if changed & ModemStatus.dataCarrierDetect != 0 {
            modemStatusDeltas |= ModemStatus.deltaDataCarrierDetect
        }
        // Ring indicator reports its trailing edge only: high to low.
        if previous & ModemStatus.ringIndicator != 0, current & ModemStatus.ringIndicator == 0 {
            modemStatusDeltas |= ModemStatus.trailingEdgeRingIndicator
        }
    }

    // MARK: Register numbers and bits

    /// Register offsets from the UART's base port.
    enum Register {
        static let data: UInt8 = 0  // RBR / THR, or DLL with DLAB
        static let interruptEnable: UInt8 = 1  // IER, or DLM with DLAB
        static let interruptIdentification: UInt8 = 2  // IIR on read
        static let fifoControl: UInt8 = 2  // FCR on write
        static let lineControl: UInt8 = 3
        static let modemControl: UInt8 = 4
        static let lineStatus: UInt8 = 5
        static let modemStatus: UInt8 = 6
        static let scratch: UInt8 = 7
        /// Number of register offsets the UART decodes.
        static let count: UInt8 = 8
    }

    /// IER bits.
    enum InterruptEnable {
        static let receivedDataAvailable: UInt8 = 0x01  // ERBFI
        static let transmitterEmpty: UInt8 = 0x02  // ETBEI
        static let receiverLineStatus: UInt8 = 0x04  // ELSI
        static let modemStatus: UInt8 = 0x08  // EDSSI
        static let writableBits: UInt8 = 0x0F
    }

    /// IIR values (bits 0-3) and the FIFO-enabled bits (6-7).
    enum InterruptIdentification {
        static let none: UInt8 = 0x01
        static let receiverLineStatus: UInt8 = 0x06
        static let receivedDataAvailable: UInt8 = 0x04
        static let transmitterEmpty: UInt8 = 0x02
        static let modemStatus: UInt8 = 0x00
        static let fifosEnabled: UInt8 = 0xC0
    }

    /// FCR bits.
    enum FIFOControl {
        static let enable: UInt8 = 0x01
        static let clearReceiveFIFO: UInt8 = 0x02
        static let clearTransmitFIFO: UInt8 = 0x04
        static let persistentBits: UInt8 = 0xC9
    }

    /// LCR bits.
    enum LineControl {
        static let divisorLatchAccess: UInt8 = 0x80
    }

    /// MCR bits.
    enum ModemControl {
        static let dataTerminalReady: UInt8 = 0x01
        static let requestToSend: UInt8 = 0x02
        static let out1: UInt8 = 0x04
        static let out2: UInt8 = 0x08
        static let loopback: UInt8 = 0x10
        static let writableBits: UInt8 = 0x1F
    }

    /// LSR bits.
    enum LineStatus {
        static let dataReady: UInt8 = 0x01
        static let overrunError: UInt8 = 0x02
        static let transmitterHoldingEmpty: UInt8 = 0x20
        static let transmitterEmpty: UInt8 = 0x40
    }

    /// MSR bits.
    enum ModemStatus {
        static let deltaClearToSend: UInt8 = 0x01
        static let deltaDataSetReady: UInt8 = 0x02
        static let trailingEdgeRingIndicator: UInt8 = 0x04
        static let deltaDataCarrierDetect: UInt8 = 0x08
        static let clearToSend: UInt8 = 0x10
        static let dataSetReady: UInt8 = 0x20
        static let ringIndicator: UInt8 = 0x40
        static let dataCarrierDetect: UInt8 = 0x80
    }
}

// MARK: - Receive FIFO

extension Serial8250 {
    /// The UART's receive FIFO: a fixed 64-byte ring stored inline, so queuing and taking bytes
    /// never allocates.
    ///
    /// Two FIFOs are equal, and encode the same, when they hold the same bytes in the same
    /// order; where in the ring those bytes happen to sit does not matter.
    struct ReceiveFIFO: Equatable, Codable, Sendable {
        private typealias Storage = InlineArray<64, UInt8>

        /// The number of bytes the ring holds.
        static let capacity = Storage.count

        private var storage = Storage(repeating: 0)
        /// Index of the oldest byte.
        private var head = 0
        /// Number of bytes queued.
        private(set) var count = 0

        /// An empty FIFO.
        init() {}

        /// Whether no byte is waiting.
        var isEmpty: Bool { count == 0 }

        /// Queues `byte`; returns `false`, leaving the FIFO unchanged, when it is full.
        mutating func push(_ byte: UInt8) -> Bool {
            guard count < Self.capacity else { return false }
            storage[(head + count) % Self.capacity] = byte
            count += 1
            return true
        }

        /// Takes the oldest byte, or `nil` when the FIFO is empty.
        mutating func pop() -> UInt8? {
            guard count > 0 else { return nil }
            let byte = storage[head]
            head = (head + 1) % Self.capacity
            count -= 1
            return byte
        }

        /// Drops every queued byte.
        mutating func removeAll() {
            head = 0
            count = 0
        }

        /// The `index`-th oldest queued byte (`0 ..< count`).
        func element(at index: Int) -> UInt8 { storage[(head + index) % Self.capacity] }

        /// Compares the queued bytes, in order.
        static func == (lhs: Self, rhs: Self) -> Bool {
            guard lhs.count == rhs.count else { return false }
            for index in 0..<lhs.count where lhs.element(at: index) != rhs.element(at: index) {
                return false
            }
            return true
        }

        /// Encodes the queued bytes, oldest first, as an array.
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode((0..<count).map { element(at: $0) })
        }

        /// Decodes an array of at most `capacity` queued bytes, oldest first.
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            let bytes = try container.decode([UInt8].self)
            guard bytes.count <= Self.capacity else {
                throw DecodingError.dataCorruptedError(
                    in: container,
                    debugDescription: "receive FIFO holds \(bytes.count) bytes, more than its \(Self.capacity)")
            }
            self.init()
            for byte in bytes { _ = push(byte) }
        }
    }
}
