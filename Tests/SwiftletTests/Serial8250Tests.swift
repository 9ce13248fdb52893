import Foundation
import Synchronization
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// An interrupt line that records every level it is driven to.
private final class RecordingInterruptLine: InterruptLine {
    private let recorded = Mutex<[Bool]>([])
    func setLevel(_ high: Bool) { recorded.withLock { $0.append(high) } }
    var levels: [Bool] { recorded.withLock { $0 } }
}

// Register offsets and bits, spelled out so the tests read like a datasheet.
private let rbr: UInt8 = 0, thr: UInt8 = 0, dll: UInt8 = 0, ier: UInt8 = 1, dlm: UInt8 = 1
private let iir: UInt8 = 2, fcr: UInt8 = 2, lcr: UInt8 = 3, mcr: UInt8 = 4, lsr: UInt8 = 5
private let msr: UInt8 = 6, scr: UInt8 = 7

private let ierReceivedData: UInt8 = 0x01, ierTransmitterEmpty: UInt8 = 0x02
private let ierLineStatus: UInt8 = 0x04, ierModemStatus: UInt8 = 0x08

private let iirNone: UInt8 = 0x01, iirLineStatus: UInt8 = 0x06, iirReceivedData: UInt8 = 0x04
private let iirTransmitterEmpty: UInt8 = 0x02, iirModemStatus: UInt8 = 0x00

private let lsrDataReady: UInt8 = 0x01, lsrOverrun: UInt8 = 0x02
private let lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40

private let mcrDTR: UInt8 = 0x01, mcrRTS: UInt8 = 0x02, mcrOUT1: UInt8 = 0x04
private let mcrOUT2: UInt8 = 0x08, mcrLoopback: UInt8 = 0x10

/// Drives a `SerialPort` the way the bus does, one byte at a time.
private struct PortHarness {
    let output = BufferSerialOutput()
    let line = RecordingInterruptLine()
    let port: SerialPort

    init(state: Serial8250 = Serial8250()) {
        port = SerialPort(output: output, interruptLine: line, state: state)
    }

    func read(_ offset: UInt64) -> UInt8 {
        var byte: UInt8 = 0xAB
        withUnsafeMutableBytes(of: &byte) { port.read(offset: offset, data: $0) }
        return byte
    }

    func write(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { port.write(offset: offset, data: $0) }
    }
}

@Suite("Serial8250 registers")
struct Serial8250RegisterTests {
    @Test("reset state: no interrupt, transmitter empty, nothing received")
    func resetState() {
        var uart = Serial8250()
        #expect(uart.read(offset: iir) == iirNone)
        #expect(uart.read(offset: lsr) == lsrTHRE | lsrTEMT)
        #expect(uart.read(offset: ier) == 0)
        #expect(uart.read(offset: lcr) == 0x03)
        #expect(uart.read(offset: mcr) == mcrOUT2)
        #expect(uart.interruptPending == false)
        #expect(uart.inputSpace == Serial8250.receiveFIFOCapacity)
        #expect(Serial8250.receiveFIFOCapacity == 64)
    }

    @Test("a THR write returns the byte to transmit; other writes return nothing")
    func transmitHoldingRegister() {
        var uart = Serial8250()
        #expect(uart.write(offset: thr, value: 0x41) == 0x41)
        #expect(uart.write(offset: thr, value: 0x00) == 0x00)
        for offset: UInt8 in 1...7 {
            #expect(uart.write(offset: offset, value: 0x41) == nil)
        }
        // The transmitter never fills: THRE and TEMT stay set.
        #expect(uart.read(offset: lsr) & (lsrTHRE | lsrTEMT) == lsrTHRE | lsrTEMT)
    }

    @Test("LSR data ready follows the receive FIFO")
    func lineStatusDataReady() {
        var uart = Serial8250()
        #expect(uart.read(offset: lsr) & lsrDataReady == 0)
        #expect(uart.enqueueInput([0x31, 0x32]) == 2)
        #expect(uart.read(offset: lsr) == lsrDataReady | lsrTHRE | lsrTEMT)
        #expect(uart.read(offset: rbr) == 0x31)
        #expect(uart.read(offset: lsr) & lsrDataReady != 0)
        #expect(uart.read(offset: rbr) == 0x32)
        #expect(uart.read(offset: lsr) == lsrTHRE | lsrTEMT)
        // Reading an empty RBR is harmless.
        #expect(uart.read(offset: rbr) == 0)
        #expect(uart.read(offset: lsr) == lsrTHRE | lsrTEMT)
    }

    @Test("DLAB maps offsets 0 and 1 to the divisor latch")
    func divisorLatch() {
        var uart = Serial8250()
        uart.write(offset: ier, value: ierReceivedData)
        uart.write(offset: lcr, value: 0x80 | 0x03)
        #expect(uart.read(offset: dll) == 12)
        #expect(uart.read(offset: dlm) == 0)
        #expect(uart.write(offset: dll, value: 0x01) == nil)  // not transmitted
        uart.write(offset: dlm, value: 0x02)
        #expect(uart.read(offset: dll) == 0x01)
        #expect(uart.read(offset: dlm) == 0x02)
        #expect(uart.divisor == 0x0201)
        #expect(uart.read(offset: lcr) == 0x83)

        // With DLAB clear the same offsets are RBR/THR and IER again, untouched by the above.
        uart.write(offset: lcr, value: 0x03)
        #expect(uart.read(offset: ier) == ierReceivedData)
        #expect(uart.write(offset: thr, value: 0x55) == 0x55)
        uart.write(offset: lcr, value: 0x83)
        #expect(uart.read(offset: dll) == 0x01)
        #expect(uart.read(offset: dlm) == 0x02)
    }

    @Test("DLAB does not hide received bytes")
    func divisorLatchKeepsInput() {
        var uart = Serial8250()
        _ = uart.enqueueInput([0x7A])
        uart.write(offset: lcr, value: 0x80)
        #expect(uart.read(offset: dll) == 12)
        uart.write(offset: lcr, value: 0x00)
        #expect(uart.read(offset: rbr) == 0x7A)
    }

    @Test("IER keeps only its four enable bits")
    func interruptEnableMask() {
        var uart = Serial8250()
        uart.write(offset: ier, value: 0xFF)
        #expect(uart.read(offset: ier) == 0x0F)
        uart.write(offset: ier, value: 0x00)
        #expect(uart.read(offset: ier) == 0x00)
    }

    @Test("IIR bits 6-7 report enabled FIFOs (Linux detects a 16550A from them)")
    func fifoEnabledBits() {
        var uart = Serial8250()
        uart.write(offset: fcr, value: 0x01)
        #expect(uart.read(offset: iir) == 0xC0 | iirNone)
        // Linux's 16750 probe: 64-byte FIFO bit with DLAB set must not change bit 5.
        uart.write(offset: lcr, value: 0x80)
        uart.write(offset: fcr, value: 0x21)
        #expect(uart.read(offset: iir) >> 5 == 6)
        uart.write(offset: lcr, value: 0x03)
        uart.write(offset: fcr, value: 0x00)
        #expect(uart.read(offset: iir) == iirNone)
    }

    @Test("FCR clears the receive FIFO on request and when the FIFOs are switched")
    func fifoControlClearsReceiveFIFO() {
        var uart = Serial8250()
        uart.write(offset: fcr, value: 0x01)
        _ = uart.enqueueInput([1, 2, 3])
        uart.write(offset: fcr, value: 0x01)  // no clear bit, no change: kept
        #expect(uart.inputSpace == 61)
        uart.write(offset: fcr, value: 0x03)  // clear receive FIFO
        #expect(uart.inputSpace == 64)
        #expect(uart.read(offset: lsr) & lsrDataReady == 0)

        _ = uart.enqueueInput([4])
        uart.write(offset: fcr, value: 0x00)  // disabling the FIFOs clears them
        #expect(uart.inputSpace == 64)
    }

    @Test("the scratch register stores any byte and nothing else uses it")
    func scratchRegister() {
        var uart = Serial8250()
        for value in [UInt8(0x00), 0x5A, 0xA5, 0xFF] {
            uart.write(offset: scr, value: value)
            #expect(uart.read(offset: scr) == value)
        }
        #expect(uart.read(offset: iir) == iirNone)
        #expect(uart.read(offset: lsr) == lsrTHRE | lsrTEMT)
    }

    @Test("Linux's existence probe: IER reads back 0 then 0x0F")
    func linuxExistenceProbe() {
        var uart = Serial8250()
        uart.write(offset: ier, value: 0)
        #expect(uart.read(offset: ier) & 0x0F == 0)
        uart.write(offset: ier, value: 0x0F)
        #expect(uart.read(offset: ier) & 0x0F == 0x0F)
    }

    @Test("LSR and MSR ignore writes; offsets past 7 read 0xFF and ignore writes")
    func readOnlyAndUndecodedOffsets() {
        var uart = Serial8250()
        let before = uart
        uart.write(offset: lsr, value: 0xFF)
        uart.write(offset: msr, value: 0xFF)
        for offset in UInt8(8)...UInt8.max {
            #expect(uart.write(offset: offset, value: 0xFE) == nil)
            #expect(uart.read(offset: offset) == 0xFF)
        }
        #expect(uart == before)
    }
}

@Suite("Serial8250 interrupts")
struct Serial8250InterruptTests {
    @Test("THRE interrupt: raised by enabling it, cleared by reading IIR, re-raised by THR")
    func transmitterEmptyInterrupt() {
        var uart = Serial8250()
        uart.write(offset: ier, value: ierTransmitterEmpty)
        #expect(uart.interruptPending)
        #expect(uart.read(offset: iir) == iirTransmitterEmpty)
        // Reading IIR while THRE is the reported source acknowledges it.
        #expect(uart.interruptPending == false)
        #expect(uart.read(offset: iir) == iirNone)

        // Writing THR: the byte leaves at once, THR is empty again, the interrupt comes back.
        #expect(uart.write(offset: thr, value: 0x41) == 0x41)
        #expect(uart.interruptPending)
        #expect(uart.read(offset: iir) == iirTransmitterEmpty)
        #expect(uart.read(offset: iir) == iirNone)

        // Re-writing IER with the bit already set does not re-arm it.
        uart.write(offset: ier, value: ierTransmitterEmpty)
        #expect(uart.interruptPending == false)

        // Disabling it clears a pending one; enabling it again raises it.
        _ = uart.write(offset: thr, value: 0x42)
        #expect(uart.interruptPending)
        uart.write(offset: ier, value: 0)
        #expect(uart.interruptPending == false)
        uart.write(offset: ier, value: ierTransmitterEmpty)
        #expect(uart.read(offset: iir) == iirTransmitterEmpty)
    }

    @Test("THR writes with the interrupt disabled leave nothing pending")
    func transmitWithoutInterrupt() {
        var uart = Serial8250()
        _ = uart.write(offset: thr, value: 0x41)
        #expect(uart.interruptPending == false)
        // Enabling later still raises it: THR is empty.
        uart.write(offset: ier, value: ierTransmitterEmpty)
        #expect(uart.interruptPending)
    }

    @Test("Linux's THRE re-assert test sees a working UART")
    func linuxTransmitterEmptyReassertTest() {
        var uart = Serial8250()
        uart.write(offset: ier, value: ierTransmitterEmpty)
        let first = uart.read(offset: iir)
        uart.write(offset: ier, value: 0)
        uart.write(offset: ier, value: ierTransmitterEmpty)
        let second = uart.read(offset: iir)
        uart.write(offset: ier, value: 0)
        #expect(first & iirNone == 0)
        #expect(second & iirNone == 0)
        #expect(uart.interruptPending == false)
    }

    @Test("reading IIR does not acknowledge THRE while a higher source is reported")
    func transmitterEmptySurvivesHigherPriorityRead() {
        var uart = Serial8250()
        uart.write(offset: ier, value: ierReceivedData | ierTransmitterEmpty)
        _ = uart.enqueueInput([0x61])
        #expect(uart.read(offset: iir) == iirReceivedData)
        #expect(uart.read(offset: iir) == iirReceivedData)
        #expect(uart.read(offset: rbr) == 0x61)
        #expect(uart.read(offset: iir) == iirTransmitterEmpty)
        #expect(uart.read(offset: iir) == iirNone)
    }

    @Test("IIR reports sources by priority: line status, data, THRE, modem status")
    func interruptPriority() {
        var uart = Serial8250()
        uart.write(offset: ier, value: 0x0F)  // everything; THRE now pending
        // A modem status change: loopback with RTS raises CTS.
        uart.write(offset: mcr, value: mcrLoopback | mcrRTS)
        // Data and an overrun.
        #expect(uart.enqueueInput([UInt8](repeating: 0x30, count: 65)) == 64)

        #expect(uart.read(offset: iir) == iirLineStatus)
        #expect(uart.read(offset: iir) == iirLineStatus)  // IIR does not clear it
        #expect(uart.read(offset: lsr) & lsrOverrun != 0)  // LSR does
        #expect(uart.read(offset: iir) == iirReceivedData)
        for _ in 0..<64 { _ = uart.read(offset: rbr) }
        #expect(uart.read(offset: iir) == iirTransmitterEmpty)
        #expect(uart.read(offset: iir) == iirModemStatus)
        #expect(uart.read(offset: iir) == iirModemStatus)  // IIR does not clear it
        #expect(uart.read(offset: msr) & 0x0F != 0)  // MSR does
        #expect(uart.read(offset: iir) == iirNone)
        #expect(uart.interruptPending == false)
    }

    @Test("pending conditions without their enable bit raise nothing")
    func disabledSourcesStayQuiet() {
        var uart = Serial8250()
        _ = uart.enqueueInput([UInt8](repeating: 1, count: 70))  // data + overrun
        uart.write(offset: mcr, value: mcrLoopback | mcrDTR)  // modem delta
        _ = uart.write(offset: thr, value: 0)
        #expect(uart.interruptPending == false)
        #expect(uart.read(offset: iir) == iirNone)

        uart.write(offset: ier, value: ierModemStatus)
        #expect(uart.read(offset: iir) == iirModemStatus)
        uart.write(offset: ier, value: ierLineStatus)
        #expect(uart.read(offset: iir) == iirLineStatus)
        uart.write(offset: ier, value: ierReceivedData)
        #expect(uart.read(offset: iir) == iirReceivedData)
    }

    @Test("received data interrupt lasts until the FIFO is drained")
    func receivedDataInterrupt() {
        var uart = Serial8250()
        uart.write(offset: ier, value: ierReceivedData)
        #expect(uart.interruptPending == false)
        _ = uart.enqueueInput([1, 2, 3])
        #expect(uart.interruptPending)
        _ = uart.read(offset: rbr)
        _ = uart.read(offset: rbr)
        #expect(uart.interruptPending)
        _ = uart.read(offset: rbr)
        #expect(uart.interruptPending == false)
    }
}

@Suite("Serial8250 receive FIFO")
struct Serial8250ReceiveTests {
    @Test("bytes come out in the order they went in, across the ring's wrap-around")
    func fifoOrder() {
        var uart = Serial8250()
        #expect(uart.enqueueInput(0..<60) == 60)
        for expected: UInt8 in 0..<30 { #expect(uart.read(offset: rbr) == expected) }
        #expect(uart.inputSpace == 34)
        #expect(uart.enqueueInput(60..<94) == 34)
        #expect(uart.inputSpace == 0)
        var received: [UInt8] = []
        while uart.read(offset: lsr) & lsrDataReady != 0 { received.append(uart.read(offset: rbr)) }
        #expect(received == Array(30..<94))
        #expect(uart.read(offset: lsr) & lsrOverrun == 0)
    }

    @Test("overflow: enqueueInput takes what fits and the overrun bit is set until LSR is read")
    func overflow() {
        var uart = Serial8250()
        #expect(uart.enqueueInput([UInt8](repeating: 0x41, count: 63)) == 63)
        #expect(uart.read(offset: lsr) & lsrOverrun == 0)
        #expect(uart.enqueueInput([0x42, 0x43, 0x44]) == 1)
        #expect(uart.inputSpace == 0)
        #expect(uart.enqueueInput([0x45]) == 0)
        let status = uart.read(offset: lsr)
        #expect(status & lsrOverrun != 0)
        #expect(status & lsrDataReady != 0)
        #expect(uart.read(offset: lsr) & lsrOverrun == 0)
        // The bytes that fit are intact; the last one is the 0x42 that squeezed in.
        for _ in 0..<63 { #expect(uart.read(offset: rbr) == 0x41) }
        #expect(uart.read(offset: rbr) == 0x42)
        #expect(uart.read(offset: lsr) & lsrDataReady == 0)
    }

    @Test("enqueueing exactly the free space never overruns")
    func enqueueWithinSpace() {
        var uart = Serial8250()
        #expect(uart.enqueueInput([UInt8](repeating: 7, count: uart.inputSpace)) == 64)
        #expect(uart.enqueueInput([UInt8]()) == 0)
        #expect(uart.read(offset: lsr) & lsrOverrun == 0)
    }
}

@Suite("Serial8250 loopback and modem status")
struct Serial8250LoopbackTests {
    @Test("in loopback mode THR bytes are received, not transmitted")
    func loopbackData() {
        var uart = Serial8250()
        uart.write(offset: mcr, value: mcrLoopback)
        #expect(uart.write(offset: thr, value: 0x5A) == nil)
        #expect(uart.write(offset: thr, value: 0xA5) == nil)
        #expect(uart.read(offset: lsr) & lsrDataReady != 0)
        #expect(uart.read(offset: rbr) == 0x5A)
        #expect(uart.read(offset: rbr) == 0xA5)
        uart.write(offset: mcr, value: 0)
        #expect(uart.write(offset: thr, value: 0x5A) == 0x5A)
    }

    @Test("a full FIFO in loopback mode overruns")
    func loopbackOverrun() {
        var uart = Serial8250()
        uart.write(offset: mcr, value: mcrLoopback)
        for value in 0..<65 { _ = uart.write(offset: thr, value: UInt8(value)) }
        #expect(uart.read(offset: lsr) & lsrOverrun != 0)
        #expect(uart.read(offset: rbr) == 0)
    }

    @Test("outside loopback the terminal is ready: CTS, DSR, DCD")
    func modemStatusOutsideLoopback() {
        var uart = Serial8250()
        #expect(uart.read(offset: msr) == 0xB0)
        uart.write(offset: mcr, value: mcrDTR | mcrRTS | mcrOUT1 | mcrOUT2)
        #expect(uart.read(offset: msr) == 0xB0)
    }

    @Test("in loopback MSR mirrors MCR: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD")
    func modemStatusInLoopback() {
        var uart = Serial8250()
        // Linux's loopback test: MCR = LOOP|OUT2|RTS expects MSR & 0xF0 == DCD|CTS.
        uart.write(offset: mcr, value: mcrLoopback | mcrOUT2 | mcrRTS)
        #expect(uart.read(offset: msr) & 0xF0 == 0x90)
        uart.write(offset: mcr, value: mcrLoopback | mcrDTR)
        #expect(uart.read(offset: msr) & 0xF0 == 0x20)
        uart.write(offset: mcr, value: mcrLoopback | mcrOUT1)
        #expect(uart.read(offset: msr) & 0xF0 == 0x40)
        uart.write(offset: mcr, value: mcrLoopback | 0x0F)
        #expect(uart.read(offset: msr) & 0xF0 == 0xF0)
        #expect(uart.read(offset: mcr) == mcrLoopback | 0x0F)
        uart.write(offset: mcr, value: 0xFF)
        #expect(uart.read(offset: mcr) == 0x1F)  // bits 5-7 do not exist
    }

    @Test("MSR delta bits record line changes and clear on read")
    func modemStatusDeltas() {
        var uart = Serial8250()
        uart.write(offset: mcr, value: mcrLoopback)  // CTS, DSR, DCD all drop
        #expect(uart.read(offset: msr) == 0x0B)  // DCTS | DDSR | DDCD, lines low
        #expect(uart.read(offset: msr) == 0x00)
        uart.write(offset: mcr, value: mcrLoopback | mcrOUT1)  // RI rises: no delta
        #expect(uart.read(offset: msr) == 0x40)
        uart.write(offset: mcr, value: mcrLoopback)  // RI falls: trailing edge
        #expect(uart.read(offset: msr) == 0x04)
        uart.write(offset: mcr, value: mcrLoopback)  // no change
        #expect(uart.read(offset: msr) == 0x00)
    }
}

@Suite("Serial8250 snapshots")
struct Serial8250SnapshotTests {
    @Test("Codable round trip keeps registers and queued input")
    func codableRoundTrip() throws {
        var uart = Serial8250()
        uart.write(offset: lcr, value: 0x80)
        uart.write(offset: dll, value: 0x01)
        uart.write(offset: lcr, value: 0x1B)
        uart.write(offset: ier, value: 0x07)
        uart.write(offset: fcr, value: 0xC7)
        uart.write(offset: scr, value: 0x99)
        // Move the ring's head so the queued bytes wrap around its end.
        _ = uart.enqueueInput([UInt8](repeating: 0, count: 50))
        for _ in 0..<50 { _ = uart.read(offset: rbr) }
        _ = uart.enqueueInput(Array("hello, snapshot".utf8))

        let data = try JSONEncoder().encode(uart)
        var decoded = try JSONDecoder().decode(Serial8250.self, from: data)
        #expect(decoded == uart)
        #expect(decoded.read(offset: iir) == uart.read(offset: iir))
        var text: [UInt8] = []
        while decoded.read(offset: lsr) & lsrDataReady != 0 { text.append(decoded.read(offset: rbr)) }
        #expect(String(decoding: text, as: UTF8.self) == "hello, snapshot")
        #expect(decoded.read(offset: scr) == 0x99)
        #expect(decoded.divisor == 0x0001)
    }

    @Test("equal queued bytes compare equal wherever they sit in the ring")
    func equalityIgnoresRingPosition() {
        var shifted = Serial8250()
        _ = shifted.enqueueInput([9, 9, 9])
        for _ in 0..<3 { _ = shifted.read(offset: rbr) }
        _ = shifted.enqueueInput([1, 2])
        var fresh = Serial8250()
        _ = fresh.enqueueInput([1, 2])
        #expect(shifted == fresh)
        _ = fresh.enqueueInput([3])
        #expect(shifted != fresh)
    }

    @Test("decoding a receive FIFO longer than 64 bytes fails instead of trapping")
    func decodingRejectsOversizedFIFO() throws {
        let data = try JSONEncoder().encode(Serial8250())
        var object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        object["receiveFIFO"] = [Int](repeating: 65, count: 65)
        let tampered = try JSONSerialization.data(withJSONObject: object)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Serial8250.self, from: tampered) }
    }
}

@Suite("SerialPort bus device")
struct Serial8250PortTests {
    @Test("THR writes reach the output sink")
    func transmitToOutput() {
        let harness = PortHarness()
        for byte in "Hello\n".utf8 { harness.write(0, byte) }
        #expect(harness.output.text == "Hello\n")
        #expect(harness.line.levels.isEmpty)
    }

    @Test("host input raises the interrupt and reading RBR lowers it")
    func inputRaisesAndReadLowers() {
        let harness = PortHarness()
        harness.write(1, ierReceivedData)
        #expect(harness.port.enqueueInput([0x61, 0x62]) == 2)
        #expect(harness.line.levels == [true])
        #expect(harness.read(2) == iirReceivedData)
        #expect(harness.read(0) == 0x61)
        #expect(harness.line.levels == [true])
        #expect(harness.read(0) == 0x62)
        #expect(harness.line.levels == [true, false])
        #expect(harness.port.inputSpace == 64)
    }

    @Test("input with the interrupt disabled leaves the line alone")
    func inputWithoutInterrupt() {
        let harness = PortHarness()
        #expect(harness.port.enqueueInput([1, 2, 3]) == 3)
        #expect(harness.line.levels.isEmpty)
        #expect(harness.port.inputSpace == 61)
    }

    @Test("the line is driven only on real transitions")
    func lineChangesOnlyOnTransitions() {
        let harness = PortHarness()
        harness.write(1, ierTransmitterEmpty)  // raise
        #expect(harness.line.levels == [true])
        for byte in "no change while THRE stays pending".utf8 { harness.write(0, byte) }
        harness.write(7, 1)
        _ = harness.read(5)
        _ = harness.read(6)
        #expect(harness.line.levels == [true])
        #expect(harness.read(2) == iirTransmitterEmpty)  // acknowledge: lower
        #expect(harness.line.levels == [true, false])
        #expect(harness.read(2) == iirNone)
        harness.write(1, ierTransmitterEmpty)  // already enabled: no change
        _ = harness.read(5)
        #expect(harness.line.levels == [true, false])
        harness.write(0, 0x2E)  // transmit: raise again
        #expect(harness.line.levels == [true, false, true])
        harness.write(1, 0)  // disable: lower
        #expect(harness.line.levels == [true, false, true, false])
        #expect(harness.port.enqueueInput([1]) == 1)  // ERBFI off: nothing
        #expect(harness.line.levels.count == 4)
    }

    @Test("accesses of any width and any offset never trap")
    func oddAccesses() {
        let harness = PortHarness()
        let offsets: [UInt64] = Array(0..<16) + [0xFF, 0x100, 0x1_0000_0000, .max]
        for width in [0, 1, 2, 3, 4, 8] {
            for offset in offsets {
                var buffer = [UInt8](repeating: 0xAB, count: width)
                buffer.withUnsafeMutableBytes { harness.port.read(offset: offset, data: $0) }
                if width > 0 {
                    if offset >= 8 {
                        #expect(buffer.allSatisfy { $0 == 0xFF })
                    } else {
                        #expect(buffer.dropFirst().allSatisfy { $0 == 0 })
                    }
                }
                let value = [UInt8](repeating: 0x00, count: width)
                value.withUnsafeBytes { harness.port.write(offset: offset, data: $0) }
            }
        }
    }

    @Test("a wide THR write transmits only its first byte; a wide read takes one byte")
    func wideAccessUsesFirstByte() {
        let harness = PortHarness()
        let word: [UInt8] = [0x41, 0x42, 0x43, 0x44]
        word.withUnsafeBytes { harness.port.write(offset: 0, data: $0) }
        #expect(harness.output.bytes == [0x41])
        _ = harness.port.enqueueInput([0x31, 0x32])
        var buffer = [UInt8](repeating: 0xAB, count: 4)
        buffer.withUnsafeMutableBytes { harness.port.read(offset: 0, data: $0) }
        #expect(buffer == [0x31, 0, 0, 0])
        #expect(harness.read(0) == 0x32)
        // Writes past the registers are dropped.
        harness.write(8, 0x41)
        #expect(harness.read(8) == 0xFF)
        #expect(harness.output.bytes == [0x41])
    }

    @Test("state and restore round-trip, and restore drives the line")
    func stateAndRestore() {
        let original = PortHarness()
        original.write(1, ierReceivedData)
        _ = original.port.enqueueInput([0x10, 0x20])
        let saved = original.port.state
        #expect(saved.inputSpace == 62)

        let restored = PortHarness()
        restored.port.restore(saved)
        #expect(restored.port.state == saved)
        #expect(restored.line.levels == [true])
        #expect(restored.read(0) == 0x10)
        #expect(restored.read(0) == 0x20)
        #expect(restored.line.levels == [true, false])

        // Restoring into a new port through init raises the line too.
        let built = PortHarness(state: saved)
        #expect(built.line.levels == [true])
    }

    @Test("random guest accesses keep the line consistent with the UART")
    func randomAccesses() {
        var generator = SystemRandomNumberGenerator()
        let harness = PortHarness()
        for _ in 0..<20_000 {
            let offset = UInt64.random(in: 0..<10, using: &generator)
            switch Int.random(in: 0..<5, using: &generator) {
            case 0: _ = harness.port.enqueueInput([UInt8](repeating: 0x61, count: Int.random(in: 0..<8)))
            case 1, 2: _ = harness.read(offset)
            default: harness.write(offset, UInt8.random(in: 0...255, using: &generator))
            }
        }
        let levels = harness.line.levels
        for (previous, next) in zip(levels, levels.dropFirst()) { #expect(previous != next) }
        #expect((levels.last ?? false) == harness.port.state.interruptPending)
        if let first = levels.first { #expect(first == true) }
    }
}

@Suite("Serial output sinks")
struct Serial8250OutputTests {
    @Test("BufferSerialOutput collects bytes and text")
    func bufferOutput() {
        let output = BufferSerialOutput()
        Array("héllo".utf8).withUnsafeBytes { output.write($0) }
        #expect(output.text == "héllo")
        #expect(output.bytes.count == 6)
        output.removeAll()
        #expect(output.bytes.isEmpty)
    }

    @Test("FileDescriptorSerialOutput writes everything to the descriptor")
    func fileDescriptorOutput() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let output = FileDescriptorSerialOutput(fileDescriptor: fds[1])
        let message = [UInt8]("serial to a pipe\n".utf8)
        message.withUnsafeBytes { output.write($0) }
        output.write(UnsafeRawBufferPointer(start: nil, count: 0))
        close(fds[1])
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if count <= 0 { break }
            received += chunk[0..<count]
        }
        #expect(received == message)
    }

    @Test("FileDescriptorSerialOutput drops bytes on a bad descriptor instead of trapping")
    func fileDescriptorOutputError() {
        let output = FileDescriptorSerialOutput(fileDescriptor: -1)
        [UInt8](repeating: 0x41, count: 3).withUnsafeBytes { output.write($0) }
    }
}

/// Counts how often a port says its full receive FIFO got room.
private final class CountingRoomSignal: SerialInputRoomSignal {
    private let count = Atomic<Int>(0)
    func inputRoomAvailable() { count.add(1, ordering: .relaxed) }
    var signals: Int { count.load(ordering: .relaxed) }
}

@Suite("SerialPort input-room signal")
struct Serial8250InputRoomTests {
    private let room = CountingRoomSignal()
    let port: SerialPort

    init() {
        port = SerialPort(output: BufferSerialOutput(), interruptLine: RecordingInterruptLine(), inputRoom: room)
    }

    func read(_ offset: UInt64) -> UInt8 {
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { port.read(offset: offset, data: $0) }
        return byte
    }

    func write(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { port.write(offset: offset, data: $0) }
    }

    func fill() {
        _ = port.enqueueInput([UInt8](repeating: 0x61, count: port.inputSpace))
        #expect(port.inputSpace == 0)
    }

    @Test("only the read that takes a byte from a full FIFO signals, not every read")
    func signalsOnceWhenFullGetsRoom() {
        #expect(port.enqueueInput(Array(0..<64) as [UInt8]) == 64)
        #expect(room.signals == 0, "queuing input never signals")
        // Registers other than RBR leave the FIFO full: no signal.
        for offset: UInt64 in [1, 2, 3, 4, 5, 6, 7, 9] { _ = read(offset) }
        #expect(room.signals == 0)
        #expect(read(0) == 0)
        #expect(room.signals == 1)
        // Reads from a FIFO that has room already do not signal again.
        for expected in 1..<40 as Range<UInt8> { #expect(read(0) == expected) }
        #expect(room.signals == 1)
        // Filled again, the next RBR read signals again.
        fill()
        #expect(room.signals == 1)
        _ = read(0)
        #expect(room.signals == 2)
        // Draining to empty, and reading an empty FIFO, add nothing.
        for _ in 0..<80 { _ = read(0) }
        #expect(port.inputSpace == 64)
        #expect(room.signals == 2)
    }

    @Test("a port restored from a saved full FIFO keeps its input-room signal")
    func restoredPortSignals() throws {
        fill()
        let restoredRoom = CountingRoomSignal()
        let restored = try SerialPort.restore(
            from: port.saveState(),
            with: .init(output: BufferSerialOutput(), interruptLine: RecordingInterruptLine(), inputRoom: restoredRoom))
        #expect(restored.inputSpace == 0)
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { restored.read(offset: 0, data: $0) }
        #expect(byte == 0x61)
        #expect(restoredRoom.signals == 1, "the restored port must wake console input when its full FIFO gets room")
        #expect(room.signals == 0, "the original port's signal stays untouched")
    }

    @Test("with DLAB set, offset 0 is DLL: reading it takes no byte and gives no room")
    func divisorLatchReadDoesNotSignal() {
        fill()
        write(3, 0x83)  // DLAB
        _ = read(0)
        #expect(room.signals == 0)
        #expect(port.inputSpace == 0)
        write(3, 0x03)
        _ = read(0)
        #expect(room.signals == 1)
    }

    @Test("clearing a full FIFO through FCR signals; clearing one with room does not")
    func fifoClearSignalsWhenFull() {
        write(2, 0x01)  // enable the FIFOs
        fill()
        write(2, 0x03)  // clear the receive FIFO
        #expect(port.inputSpace == 64)
        #expect(room.signals == 1)
        _ = port.enqueueInput([1, 2, 3])
        write(2, 0x03)
        #expect(room.signals == 1)
        // Disabling the FIFOs clears them too.
        fill()
        write(2, 0x00)
        #expect(room.signals == 2)
    }

    @Test("loopback bytes that fill the FIFO or overrun it do not signal")
    func loopbackFillDoesNotSignal() {
        write(4, mcrLoopback)
        for byte in 0..<70 as Range<UInt8> { write(0, byte) }
        #expect(port.inputSpace == 0)
        #expect(room.signals == 0)
        _ = read(0)
        #expect(room.signals == 1)
    }
}
