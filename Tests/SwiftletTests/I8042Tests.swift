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

/// Counts how often the guest asked for a reset.
private final class ResetCounter: Sendable {
    private let count = Mutex(0)
    func record() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

/// An `I8042Device` with a reset counter, accessed one byte at a time as the bus does.
private struct ControllerHarness {
    let resets = ResetCounter()
    let device: I8042Device

    init() {
        let resets = self.resets
        device = I8042Device { resets.record() }
    }

    func read(_ offset: UInt64) -> UInt8 {
        var byte: UInt8 = 0xAB
        withUnsafeMutableBytes(of: &byte) { device.read(offset: offset, data: $0) }
        return byte
    }

    func write(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { device.write(offset: offset, data: $0) }
    }

    func readStatus() -> UInt8 { read(4) }
    func readData() -> UInt8 { read(0) }
    func command(_ value: UInt8) { write(4, value) }
    func data(_ value: UInt8) { write(0, value) }
}

private let outputBufferFull: UInt8 = 0x01
private let inputBufferFull: UInt8 = 0x02

@Suite("I8042 controller")
struct I8042ControllerTests {
    @Test("0xFE on the command port reports a reset request")
    func resetEvent() {
        var controller = I8042()
        #expect(controller.writeCommand(0xFE) == .resetRequested)
        #expect(controller.writeCommand(0xFE) == .resetRequested)
    }

    @Test("no other command requests a reset")
    func otherCommandsDoNotReset() {
        for command in UInt8.min...UInt8.max where command != 0xFE {
            var controller = I8042()
            #expect(controller.writeCommand(command) == nil)
        }
    }

    @Test("after power-on the status says: nothing to read, ready for input, system flag")
    func initialStatus() {
        let controller = I8042()
        let status = controller.readStatus()
        #expect(status & outputBufferFull == 0)
        #expect(status & inputBufferFull == 0)
        #expect(status & 0x04 != 0)  // system flag
        #expect(status & 0x10 != 0)  // keyboard not locked
    }

    @Test("self-test answers 0x55 once, then the output buffer is empty")
    func selfTest() {
        var controller = I8042()
        controller.writeCommand(0xAA)
        #expect(controller.readStatus() & outputBufferFull != 0)
        #expect(controller.readData() == 0x55)
        #expect(controller.readStatus() & outputBufferFull == 0)
    }

    @Test("keyboard interface test answers 0x00")
    func keyboardInterfaceTest() {
        var controller = I8042()
        controller.writeCommand(0xAB)
        #expect(controller.readStatus() & outputBufferFull != 0)
        #expect(controller.readData() == 0x00)
    }

    @Test("command byte: 0x20 reads it, 0x60 writes it with the next data byte")
    func commandByte() {
        var controller = I8042()
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x65)
        controller.writeCommand(0x60)
        #expect(controller.readStatus() & outputBufferFull == 0)
        controller.writeData(0x47)
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x47)
        // The parameter was consumed: the next data byte goes nowhere.
        controller.writeData(0x00)
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x47)
    }

    @Test("the status system flag follows command byte bit 2")
    func systemFlag() {
        var controller = I8042()
        controller.writeCommand(0x60)
        controller.writeData(0x00)
        #expect(controller.readStatus() & 0x04 == 0)
        controller.writeCommand(0x60)
        controller.writeData(0x04)
        #expect(controller.readStatus() & 0x04 != 0)
    }

    @Test("status bit 3 tells whether the last write was a command")
    func lastWriteWasCommand() {
        var controller = I8042()
        controller.writeCommand(0x20)
        #expect(controller.readStatus() & 0x08 != 0)
        controller.writeData(0x00)
        #expect(controller.readStatus() & 0x08 == 0)
    }

    @Test("a new command abandons a pending parameter")
    func commandAbandonsParameter() {
        var controller = I8042()
        controller.writeCommand(0x60)
        controller.writeCommand(0xAA)
        #expect(controller.readData() == 0x55)
        controller.writeData(0x00)  // not a command byte any more
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x65)
    }

    @Test("port enable and disable commands flip command byte bits 4 and 5")
    func portEnableCommands() {
        var controller = I8042()
        controller.writeCommand(0xAD)
        controller.writeCommand(0xA8)
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x55)  // 0x65 + keyboard disabled - aux disabled
        controller.writeCommand(0xAE)
        controller.writeCommand(0xA7)
        controller.writeCommand(0x20)
        #expect(controller.readData() == 0x65)
    }

    @Test("commands with a parameter swallow it; data with no command is dropped")
    func parametersAndStrayData() {
        var controller = I8042()
        let initial = controller
        for command: UInt8 in [0xD1, 0xD2, 0xD3, 0xD4] {
            controller.writeCommand(command)
            controller.writeData(0xFE)
        }
        for value in UInt8.min...UInt8.max { controller.writeData(value) }
        #expect(controller.readStatus() & outputBufferFull == 0)
        #expect(controller.commandByte == initial.commandByte)
    }

    @Test("reading an empty output buffer repeats the last byte")
    func emptyDataReadRepeats() {
        var controller = I8042()
        #expect(controller.readData() == 0x00)
        controller.writeCommand(0xAA)
        #expect(controller.readData() == 0x55)
        #expect(controller.readData() == 0x55)
    }

    @Test("Linux's probe sequence gets sane answers")
    func linuxProbe() {
        var controller = I8042()
        // i8042_flush: read data while the output buffer is full; it must drain.
        var flushed = 0
        while controller.readStatus() & outputBufferFull != 0, flushed < 16 {
            _ = controller.readData()
            flushed += 1
        }
        #expect(flushed == 0)
        // Self-test, then two equal command byte reads, then a write.
        #expect(controller.readStatus() & inputBufferFull == 0)
        controller.writeCommand(0xAA)
        #expect(controller.readStatus() & outputBufferFull != 0)
        #expect(controller.readData() == 0x55)
        controller.writeCommand(0x20)
        let first = controller.readData()
        controller.writeCommand(0x20)
        let second = controller.readData()
        #expect(first == second)
        controller.writeCommand(0x60)
        #expect(controller.readStatus() & inputBufferFull == 0)
        controller.writeData(first & ~0x01 | 0x10)
        #expect(controller.readStatus() & outputBufferFull == 0)
    }

    @Test("Codable round trip keeps a pending answer and parameter")
    func codableRoundTrip() throws {
        var controller = I8042()
        controller.writeCommand(0xAA)
        controller.writeCommand(0x60)
        let data = try JSONEncoder().encode(controller)
        var decoded = try JSONDecoder().decode(I8042.self, from: data)
        #expect(decoded == controller)
        decoded.writeData(0x01)
        #expect(decoded.readData() == 0x55)
        decoded.writeCommand(0x20)
        #expect(decoded.readData() == 0x01)
    }
}

@Suite("I8042Device bus device")
struct I8042DeviceTests {
    @Test("each 0xFE written to the command port calls the reset handler exactly once")
    func resetHandlerOncePerWrite() {
        let harness = ControllerHarness()
        #expect(harness.resets.value == 0)
        harness.command(0xFE)
        #expect(harness.resets.value == 1)
        harness.command(0xFE)
        #expect(harness.resets.value == 2)
        // A wide write counts once.
        [UInt8](arrayLiteral: 0xFE, 0xFE, 0xFE, 0xFE).withUnsafeBytes {
            harness.device.write(offset: I8042Device.commandOffset, data: $0)
        }
        #expect(harness.resets.value == 3)
    }

    @Test("no other write resets: other commands, any data byte, offsets 1-3")
    func otherWritesDoNotReset() {
        let harness = ControllerHarness()
        for value in UInt8.min...UInt8.max {
            if value != 0xFE { harness.command(value) }
            harness.data(value)
            for offset: UInt64 in 1...3 { harness.write(offset, value) }
            harness.write(5, value)
            harness.write(.max, value)
        }
        #expect(harness.resets.value == 0)
    }

    @Test("self-test and command byte through the ports")
    func portsRouteToController() {
        let harness = ControllerHarness()
        harness.command(0xAA)
        #expect(harness.readStatus() & outputBufferFull != 0)
        #expect(harness.readData() == 0x55)
        harness.command(0x60)
        harness.data(0x30)
        harness.command(0x20)
        #expect(harness.readData() == 0x30)
        #expect(harness.device.state.commandByte == 0x30)
    }

    @Test("offsets 1-3 are not i8042 registers: they read 0xFF and ignore writes")
    func unusedOffsets() {
        let harness = ControllerHarness()
        let before = harness.device.state
        for offset: UInt64 in 1...3 {
            #expect(harness.read(offset) == 0xFF)
            harness.write(offset, 0xAA)
            harness.write(offset, 0x60)
        }
        #expect(harness.device.state == before)
        #expect(harness.readStatus() & outputBufferFull == 0)
    }

    @Test("accesses of any width and offset never trap")
    func oddAccesses() {
        let harness = ControllerHarness()
        let offsets: [UInt64] = Array(0..<8) + [0x100, .max]
        for width in [0, 1, 2, 4, 8] {
            for offset in offsets {
                var buffer = [UInt8](repeating: 0xAB, count: width)
                buffer.withUnsafeMutableBytes { harness.device.read(offset: offset, data: $0) }
                if width > 0, offset != 0, offset != 4 {
                    #expect(buffer.allSatisfy { $0 == 0xFF })
                }
                let value = [UInt8](repeating: 0x20, count: width)
                value.withUnsafeBytes { harness.device.write(offset: offset, data: $0) }
            }
        }
        #expect(harness.resets.value == 0)
    }

    @Test("a wide read fills the first byte and zeroes the rest")
    func wideRead() {
        let harness = ControllerHarness()
        harness.command(0xAA)
        var buffer = [UInt8](repeating: 0xAB, count: 4)
        buffer.withUnsafeMutableBytes { harness.device.read(offset: 0, data: $0) }
        #expect(buffer == [0x55, 0, 0, 0])
    }

    @Test("state and restore")
    func stateAndRestore() {
        let original = ControllerHarness()
        original.command(0x60)
        original.data(0x11)
        original.command(0xAA)
        let restored = ControllerHarness()
        restored.device.restore(original.device.state)
        #expect(restored.device.state == original.device.state)
        #expect(restored.readData() == 0x55)
        #expect(I8042Device.length == 5)
    }
}
