import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

// MARK: - Controller model

/// A minimal i8042 keyboard controller: just enough for Linux to probe it quickly and for a
/// guest to reset the machine through it. There is no keyboard or mouse behind it.
///
/// The controller has two ports: data (0x60) and command/status (0x64). A command written to
/// the command port may answer one byte on the data port (the output buffer, flagged by status
/// bit 0) or expect one parameter byte written to the data port next. Command 0xFE pulses the
/// CPU reset line; it is reported as `I8042Event.resetRequested`, which is how guests (Linux
/// with `reboot=k`) end the VM. Linux probes it well with `i8042.noaux`; `i8042.dumbkbd` (or
/// `i8042.nokbd`) keeps the keyboard driver from waiting for a keyboard that never answers.
///
///     0x20  read the command byte             → answers the command byte
///     0x60  write the command byte            ← takes the next data byte
///     0xA7 / 0xA8  disable / enable the aux port (command byte bit 5)
///     0xAD / 0xAE  disable / enable the keyboard (command byte bit 4)
///     0xAA  controller self-test              → answers 0x55 (passed)
///     0xAB  keyboard interface test           → answers 0x00 (no error)
///     0xD1-0xD4  write output port / buffers  ← take the next data byte, which is dropped
///     0xFE  pulse the reset line              → `I8042Event.resetRequested`
///     anything else                           ignored
public struct I8042: Equatable, Codable, Sendable {
    /// The controller command byte (configuration): interrupt enables, system flag, port
    /// disables, scan-code translation. Starts as a BIOS leaves it: keyboard interrupt on,
    /// system flag set, aux port disabled, translation on.
    package var commandByte: UInt8 =
        CommandByte.keyboardInterrupt | CommandByte.systemFlag
        | CommandByte.auxDisabled | CommandByte.translate
    /// The byte waiting to be read from the data port, if any (status bit 0).
    var outputBuffer: UInt8?
    /// The last byte read from the data port, which an empty output buffer reads as again.
    var lastOutput: UInt8 = 0
    /// A command that takes a parameter and is waiting for it on the data port.
    var commandAwaitingParameter: UInt8?
    /// Whether the last write was to the command port (status bit 3).
    var lastWriteWasCommand = false

    /// A controller as the firmware leaves it: idle, nothing to read.
    public init() {}

    // MARK: Guest access

    /// The status register (port 0x64). The input buffer is never full, since every write is
    /// handled at once, and the keyboard is never locked.
    public func readStatus() -> UInt8 {
        var status = Status.keyboardUnlocked
        if outputBuffer != nil { status |= Status.outputBufferFull }
        if commandByte & CommandByte.systemFlag != 0 { status |= Status.systemFlag }
        if lastWriteWasCommand { status |= Status.lastWriteWasCommand }
        return status
    }

    /// The data port (0x60): takes the byte in the output buffer. With nothing waiting it
    /// reads the last byte again, as the hardware latch does.
    public mutating func readData() -> UInt8 {
        if let byte = outputBuffer {
            outputBuffer = nil
            lastOutput = byte
        }
        return lastOutput
    }

    /// A byte written to the data port (0x60): the parameter of the pending command, if any.
    /// Otherwise it would go to the keyboard, and there is none, so it is dropped.
    public mutating func writeData(_ value: UInt8) {
        lastWriteWasCommand = false
        guard let command = commandAwaitingParameter else { return }
        commandAwaitingParameter = nil
        if command == Command.writeCommandByte {
            commandByte = value
        }
        // 0xD1-0xD4 (output port, keyboard/aux output buffers, aux device): nothing behind them.
    }

    /// A command written to the command port (0x64). Returns `.resetRequested` for 0xFE.
    @discardableResult
    public mutating func writeCommand(_ command: UInt8) -> I8042Event? {
        lastWriteWasCommand = true
        // A new command abandons a parameter the previous one was still waiting for.
        commandAwaitingParameter = nil
        switch command {
        case Command.readCommandByte:
            outputBuffer = commandByte
        case Command.writeCommandByte, Command.writeOutputPort, Command.writeKeyboardOutputBuffer,
            Command.writeAuxOutputBuffer, Command.writeToAux:
            commandAwaitingParameter = command
        case Command.disableAux:
            commandByte |= CommandByte.auxDisabled
        case Command.enableAux:
            commandByte &= ~CommandByte.auxDisabled
        case Command.disableKeyboard:
            commandByte |= CommandByte.keyboardDisabled
        case Command.enableKeyboard:
            commandByte &= ~CommandByte.keyboardDisabled
        case Command.selfTest:
            outputBuffer = Response.selfTestPassed
        case Command.keyboardInterfaceTest:
            outputBuffer = Response.interfaceTestPassed
        case Command.pulseResetLine:
            return .resetRequested
        default:
            break
        }
        return nil
    }

    // MARK: Commands and bits

    /// Commands written to the command port.
    enum Command {
        static let readCommandByte: UInt8 = 0x20
        static let writeCommandByte: UInt8 = 0x60
        static let disableAux: UInt8 = 0xA7
        static let enableAux: UInt8 = 0xA8
        static let selfTest: UInt8 = 0xAA
        static let keyboardInterfaceTest: UInt8 = 0xAB
        static let disableKeyboard: UInt8 = 0xAD
        static let enableKeyboard: UInt8 = 0xAE
        static let writeOutputPort: UInt8 = 0xD1
        static let writeKeyboardOutputBuffer: UInt8 = 0xD2
        static let writeAuxOutputBuffer: UInt8 = 0xD3
        static let writeToAux: UInt8 = 0xD4
        static let pulseResetLine: UInt8 = 0xFE
    }

    /// Bytes the controller answers with.
    enum Response {
        static let selfTestPassed: UInt8 = 0x55
        static let interfaceTestPassed: UInt8 = 0x00
    }

    /// Status register bits.
    enum Status {
        static let outputBufferFull: UInt8 = 0x01
        static let systemFlag: UInt8 = 0x04
        static let lastWriteWasCommand: UInt8 = 0x08
        static let keyboardUnlocked: UInt8 = 0x10
    }

    /// Command byte bits.
    enum CommandByte {
        static let keyboardInterrupt: UInt8 = 0x01
        static let systemFlag: UInt8 = 0x04
        static let keyboardDisabled: UInt8 = 0x10
        static let auxDisabled: UInt8 = 0x20
        static let translate: UInt8 = 0x40
    }
}

/// Something the i8042 asks of the machine.
public enum I8042Event: Equatable, Sendable {
    /// The guest pulsed the CPU reset line (command 0xFE): it wants the machine reset, which
    /// Swiftlet treats as the guest ending the VM.
    case resetRequested
}

// MARK: - Bus device

/// The i8042 on the port I/O bus, registered at 0x60 with length 5: offset 0 is the data port
/// (0x60), offset 4 the command/status port (0x64). Offsets 1-3 (ports 0x61-0x63) are not
/// i8042 registers: they read all ones and ignore writes.
///
/// When the guest writes the reset command, `resetHandler` is called once per such write, on
/// the vCPU thread and outside the device's lock; it should only signal the machine to stop.
public final class I8042Device: BusDevice {
    /// Offset of the data port (0x60) from the registered base.
    public static let dataOffset: UInt64 = 0
    /// Offset of the command/status port (0x64) from the registered base.
    public static let commandOffset: UInt64 = 4
    /// The length to register the device with (0x60 through 0x64).
    public static let length: UInt64 = 5

    private let controller: Mutex<I8042>
    private let resetHandler: @Sendable () -> Void

    /// A controller in `state` (the power-on state unless restoring) that calls `resetHandler`
    /// when the guest asks for a reset.
    public init(state: I8042 = I8042(), resetHandler: @escaping @Sendable () -> Void) {
        self.controller = Mutex(state)
        self.resetHandler = resetHandler
    }

    /// Reads the data port or the status register into the first byte of `data`; any further
    /// bytes of a wider access read 0. Other offsets read all ones.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count > 0 else { return }
        let value: UInt8
        switch offset {
        case Self.dataOffset: value = controller.withLock { $0.readData() }
        case Self.commandOffset: value = controller.withLock { $0.readStatus() }
        default:
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return
        }
        data.initializeMemory(as: UInt8.self, repeating: 0)
        data[0] = value
    }

    /// Writes the first byte of `data` to the data or command port; other offsets are ignored.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        switch offset {
        case Self.dataOffset:
            controller.withLock { $0.writeData(data[0]) }
        case Self.commandOffset:
            let event = controller.withLock { $0.writeCommand(data[0]) }
            if event == .resetRequested { resetHandler() }
        default:
            break
        }
    }

    /// A copy of the controller's state, for a snapshot.
    public var state: I8042 { controller.withLock { $0 } }

    /// Replaces the controller's state (restoring a snapshot).
    public func restore(_ state: I8042) {
        controller.withLock { $0 = state }
    }
}

// MARK: - Saved state

extension I8042Device: PersistentDevice {
    /// The controller's saved state is the controller model itself, a plain value.
    public typealias State = I8042

    /// What a controller is attached to: what to call when the guest asks for a reset.
    public struct Resources: Sendable {
        /// Called on the vCPU thread for every reset command (0xFE); it should only signal the
        /// machine to stop.
        public var resetHandler: @Sendable () -> Void

        /// Resources calling `resetHandler` on a reset command.
        public init(resetHandler: @escaping @Sendable () -> Void) {
            self.resetHandler = resetHandler
        }
    }

    /// The controller's command byte, output buffer and pending command now.
    public func saveState() -> I8042 { state }

    /// A controller in `state`. Throws when the command waiting for a parameter is not one that
    /// takes one, or the status says the last write went to the data port although a command is
    /// still waiting for its parameter there.
    public static func restore(from state: I8042, with resources: Resources) throws(DeviceRestoreError) -> I8042Device {
        try state.validate()
        return I8042Device(state: state, resetHandler: resources.resetHandler)
    }
}

extension I8042 {
    /// The commands that wait for a parameter byte on the data port.
    static let commandsTakingParameter: Set<UInt8> = [
        Command.writeCommandByte, Command.writeOutputPort, Command.writeKeyboardOutputBuffer,
        Command.writeAuxOutputBuffer, Command.writeToAux,
    ]

    /// Throws unless this is a state the controller can reach.
    func validate() throws(DeviceRestoreError) {
        let check = StateValidator(device: "i8042")
        guard let command = commandAwaitingParameter else { return }
        guard Self.commandsTakingParameter.contains(command) else {
            throw check.error(
                "commandAwaitingParameter", .inconsistent("command \(hex(UInt64(command))) takes no parameter"))
        }
        // Only a command write leaves a command waiting; a data write takes the parameter.
        try check.require(lastWriteWasCommand, "lastWriteWasCommand", "false while a command waits for its parameter")
    }
}
