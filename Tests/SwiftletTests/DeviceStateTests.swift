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

private typealias Flag = Virtqueue.DescriptorFlag
private typealias Offset = VirtioMMIORegisters.Offset

// MARK: - Helpers

/// Encodes `value` as JSON and decodes it again: a saved state must survive an encoding.
private func throughJSON<T: Codable>(_ value: T) throws -> T {
    try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
}

/// A JSON document as a tree, so a test can corrupt one field of an encoded state.
private enum JSONValue: Codable, Equatable {
    case null
    case unsigned(UInt64)
    case signed(Int64)
    case double(Double)
    case bool(Bool)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(UInt64.self) {
            self = .unsigned(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .signed(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .unsigned(let value): try container.encode(value)
        case .signed(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    subscript(key: String) -> JSONValue {
        get {
            guard case .object(let members) = self else { return .null }
            return members[key] ?? .null
        }
        set {
            guard case .object(var members) = self else { return }
            members[key] = newValue
            self = .object(members)
        }
    }

    subscript(index: Int) -> JSONValue {
        get {
            guard case .array(let elements) = self, elements.indices.contains(index) else { return .null }
            return elements[index]
        }
        set {
            guard case .array(var elements) = self, elements.indices.contains(index) else { return }
            elements[index] = newValue
            self = .array(elements)
        }
    }

    var unsigned: UInt64? {
        if case .unsigned(let value) = self { return value }
        return nil
    }
}

/// `state` encoded as JSON, changed by `edit`, and decoded again: a corrupt saved state.
private func corrupted<T: Codable>(_ state: T, _ edit: (inout JSONValue) -> Void) throws -> T {
    var tree = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(state))
    let original = tree
    edit(&tree)
    #expect(tree != original, "the edit must change the encoded state")
    return try JSONDecoder().decode(T.self, from: JSONEncoder().encode(tree))
}

/// The error `body` throws, or nil if it succeeds.
private func restoreError(_ body: () throws(DeviceRestoreError) -> Void) -> DeviceRestoreError? {
    do {
        try body()
        return nil
    } catch {
        return error
    }
}

/// Whether `problem` is `.inconsistent`, whatever its explanation.
private func isInconsistent(_ problem: DeviceRestoreError.Problem?) -> Bool {
    if case .inconsistent = problem { return true }
    return false
}

/// An interrupt line that remembers every level driven on it.
private final class LevelRecorder: InterruptLine {
    private let levels = Mutex<[Bool]>([])
    func setLevel(_ high: Bool) { levels.withLock { $0.append(high) } }
    /// The level last driven, nil if none was.
    var level: Bool? { levels.withLock { $0.last } }
}

private func read(_ device: some BusDevice, _ offset: UInt64) -> UInt8 {
    var byte: UInt8 = 0xAA
    withUnsafeMutableBytes(of: &byte) { device.read(offset: offset, data: $0) }
    return byte
}

private func write(_ device: some BusDevice, _ offset: UInt64, _ value: UInt8) {
    withUnsafeBytes(of: value) { device.write(offset: offset, data: $0) }
}

/// A copy of `memory` (`size` bytes from 0) in fresh guest memory, as a snapshot restores it.
private func copyOfMemory(_ memory: GuestMemory, size: Int) throws -> GuestMemory {
    let copy = try virtioTestMemory(size: UInt64(size))
    try copy.write(try memory.readBytes(at: GuestAddress(0), count: size), at: GuestAddress(0))
    return copy
}

/// The same ring driver over another (copied) guest memory, at the same available index.
private func ringDriver(_ ring: RingDriver, over memory: GuestMemory) -> RingDriver {
    var copy = RingDriver(
        memory: memory, size: ring.size, descriptorTable: ring.descriptorTable, availableRing: ring.availableRing,
        usedRing: ring.usedRing)
    copy.availableIndex = ring.availableIndex
    return copy
}

/// Every register a driver can read, and the configuration space byte by byte, as a driver sees them.
private func registerReads<D: VirtioDevice>(_ transport: VirtioMMIOTransport<D>) -> [UInt64] {
    let driver = MMIODriver(transport: transport)
    let offsets: [UInt64] = [
        Offset.magic, Offset.version, Offset.deviceID, Offset.vendorID, Offset.deviceFeatures, Offset.queueSizeMaximum,
        Offset.queueReady, Offset.interruptStatus, Offset.status, Offset.configGeneration,
    ]
    let configuration = (0..<UInt64(transport.registerState.configuration.count)).map {
        driver.read(VirtioMMIORegisters.configurationOffset + $0, width: 1)
    }
    return offsets.map { driver.read($0) } + configuration
}

// MARK: - Legacy devices

/// Saving a device's state, encoding it, and restoring it into a fresh device with fresh
/// resources: the restored device answers exactly as the original would have. Corrupt states
/// are refused with the field named.
@Suite("Device state: save, encode, restore")
struct DeviceStateTests {
    @Test("UART: divisor, LCR, FIFO contents and a pending interrupt survive; both ports then answer alike")
    func serialRoundTrip() throws {
        let line = LevelRecorder()
        let output = BufferSerialOutput()
        let port = SerialPort(output: output, interruptLine: line)
        write(port, 3, 0x80)  // DLAB
        write(port, 0, 0x01)  // divisor 1: 115200 baud
        write(port, 1, 0x00)
        write(port, 3, 0x1B)  // 8 data bits, even parity, DLAB off
        write(port, 2, 0xC7)  // FIFOs on and cleared, trigger level 14
        write(port, 1, 0x05)  // received data and line status interrupts
        write(port, 4, 0x0B)  // DTR, RTS, OUT2
        write(port, 7, 0x5A)
        #expect(port.enqueueInput(Array("hello".utf8)) == 5)
        #expect(read(port, 0) == UInt8(ascii: "h"))
        #expect(line.level == true)

        let saved = port.saveState()
        #expect(saved.receivedBytes == Array("ello".utf8))
        #expect(saved.divisor == 1 && saved.lineControl == 0x1B && saved.fifoControl == 0xC1 && saved.interruptEnable == 0x05)
        let decoded = try throughJSON(saved)
        #expect(decoded == saved)

        let newLine = LevelRecorder()
        let newOutput = BufferSerialOutput()
        let restored = try SerialPort.restore(from: decoded, with: .init(output: newOutput, interruptLine: newLine))
        #expect(newLine.level == true, "the new line is raised for the pending interrupt")
        #expect(restored.saveState() == saved)

        // The same reads, in the same order, with their side effects, from both ports.
        let script: [UInt64] = [2, 5, 6, 3, 4, 7, 1, 0, 0, 0, 0, 0, 2, 5]
        let original = script.map { read(port, $0) }
        let answers = script.map { read(restored, $0) }
        #expect(answers == original)
        #expect(answers[0] == 0xC4, "IIR: received data, FIFOs enabled")
        #expect(answers[1] == 0x61, "LSR: data ready, transmitter empty")
        #expect(answers[3] == 0x1B && answers[4] == 0x0B && answers[5] == 0x5A && answers[6] == 0x05)
        #expect(Array(answers[7..<11]) == Array("ello".utf8) && answers[11] == 0)
        #expect(answers[12] == 0xC1 && answers[13] == 0x60, "drained: no interrupt, no data")
        #expect(newLine.level == false && line.level == false)
        // The divisor latch.
        for device in [port, restored] { write(device, 3, 0x9B) }
        #expect([read(restored, 0), read(restored, 1)] == [0x01, 0x00])
        #expect([read(port, 0), read(port, 1)] == [0x01, 0x00])
        // Transmission goes to the new sink.
        write(restored, 3, 0x1B)
        write(restored, 0, UInt8(ascii: "A"))
        #expect(newOutput.text == "A" && output.bytes.isEmpty)
    }

    @Test("UART: an overrun, a transmitter-empty interrupt and loopback survive")
    func serialInterruptSources() throws {
        let port = SerialPort(output: BufferSerialOutput(), interruptLine: LevelRecorder())
        write(port, 1, 0x07)  // received data, transmitter empty, line status
        write(port, 4, 0x1F)  // loopback with every modem output
        #expect(port.enqueueInput([UInt8](repeating: 0x33, count: 70)) == 64)
        let saved = port.saveState()
        #expect(saved.lineStatusErrors == 0x02 && saved.transmitterEmptyInterruptPending)
        let restored = try SerialPort.restore(
            from: try throughJSON(saved), with: .init(output: BufferSerialOutput(), interruptLine: LevelRecorder()))
        let script: [UInt64] = [2, 5, 2, 6, 6] + [UInt64](repeating: 0, count: 65) + [2, 2]
        let answers = script.map { read(restored, $0) }
        #expect(answers == script.map { read(port, $0) })
        #expect(answers[0] == 0x06 && answers[1] == 0x63, "overrun first, then LSR with the error")
        #expect(answers[2] == 0x04, "then received data")
        #expect(answers[3] == 0xF0 && answers[4] == 0xF0, "loopback: MCR outputs on the MSR lines")
        #expect(answers[68] == 0x33 && answers[69] == 0, "64 bytes queued, not 70")
        #expect(answers[70] == 0x02 && answers[71] == 0x01, "transmitter empty, acknowledged by the IIR read")
    }

    @Test("UART: corrupt states are refused, naming the field")
    func serialCorrupt() throws {
        let port = SerialPort(output: BufferSerialOutput(), interruptLine: LevelRecorder())
        write(port, 1, 0x01)
        port.enqueueInput([1, 2, 3])
        let good = port.saveState()
        let resources = SerialPort.Resources(output: BufferSerialOutput(), interruptLine: LevelRecorder())
        func attempt(_ state: SerialPort.State) -> DeviceRestoreError? {
            restoreError { () throws(DeviceRestoreError) in _ = try SerialPort.restore(from: state, with: resources) }
        }
        // A FIFO longer than the UART's, in the encoded state.
        let long = try corrupted(good) { $0["receivedBytes"] = .array([JSONValue](repeating: .unsigned(7), count: 65)) }
        let error = attempt(long)
        #expect(
            error == DeviceRestoreError(device: "8250 UART", field: "receivedBytes", problem: .tooLong(count: 65, capacity: 64)))
        #expect(
            error?.description
                == "cannot restore the 8250 UART state: receivedBytes holds 65 entries, more than its capacity of 64")

        var state = good
        state.interruptEnable = 0x11
        #expect(attempt(state)?.problem == .undefinedBits(0x11, allowed: 0x0F))
        state = good
        state.modemControl = 0x20
        #expect(attempt(state)?.field == "modemControl")
        state = good
        state.lineStatusErrors = 0x04
        #expect(
            attempt(state)
                == DeviceRestoreError(device: "8250 UART", field: "lineStatusErrors", problem: .undefinedBits(4, allowed: 2)))
        state = good
        state.fifoControl = 0xC0
        let fifo = attempt(state)
        #expect(fifo?.field == "fifoControl" && isInconsistent(fifo?.problem))
        state = good
        state.transmitterEmptyInterruptPending = true
        let pending = attempt(state)
        #expect(pending?.field == "transmitterEmptyInterruptPending" && isInconsistent(pending?.problem))
        #expect(attempt(good) == nil)
    }

    @Test("i8042: an answer in the output buffer and a command waiting for its parameter survive")
    func i8042RoundTrip() throws {
        let oldResets = CountingSignal()
        let controller = I8042Device(resetHandler: { oldResets.signal() })
        write(controller, I8042Device.commandOffset, 0xAA)  // self-test: 0x55 in the output buffer
        write(controller, I8042Device.commandOffset, 0x60)  // write command byte: parameter next
        let saved = controller.saveState()
        #expect(saved.commandAwaitingParameter == 0x60 && saved.outputBuffer == 0x55)
        let newResets = CountingSignal()
        let restored = try I8042Device.restore(from: try throughJSON(saved), with: .init(resetHandler: { newResets.signal() }))
        #expect(restored.saveState() == saved)

        func script(_ device: I8042Device) -> [UInt8] {
            var answers = [read(device, I8042Device.commandOffset)]
            write(device, I8042Device.dataOffset, 0x45)  // the pending command's parameter
            answers.append(read(device, I8042Device.commandOffset))
            answers.append(read(device, I8042Device.dataOffset))
            write(device, I8042Device.commandOffset, 0x20)
            answers.append(read(device, I8042Device.dataOffset))
            return answers
        }
        let answers = script(restored)
        #expect(answers == script(controller))
        #expect(answers == [0x1D, 0x15, 0x55, 0x45], "status with output and a command, then the new command byte")
        write(restored, I8042Device.commandOffset, 0xFE)
        #expect(newResets.count == 1 && oldResets.count == 0)
    }

    @Test("i8042: a parameter for a command that takes none, or a data write while one waits, is refused")
    func i8042Corrupt() throws {
        let controller = I8042Device(resetHandler: {})
        write(controller, I8042Device.commandOffset, 0xD1)
        let good = controller.saveState()
        let resources = I8042Device.Resources(resetHandler: {})
        let wrongCommand = try corrupted(good) { $0["commandAwaitingParameter"] = .unsigned(0x20) }
        let error = restoreError { () throws(DeviceRestoreError) in
            _ = try I8042Device.restore(from: wrongCommand, with: resources)
        }
        #expect(error?.device == "i8042" && error?.field == "commandAwaitingParameter" && isInconsistent(error?.problem))
        let dataWrite = try corrupted(good) { $0["lastWriteWasCommand"] = .bool(false) }
        let second = restoreError { () throws(DeviceRestoreError) in _ = try I8042Device.restore(from: dataWrite, with: resources)
        }
        #expect(second?.field == "lastWriteWasCommand")
    }

    @Test("boot timer and exit-status port keep what the guest reported")
    func bootTimerAndExitStatus() throws {
        let timer = BootTimer(startNanoseconds: 0)
        write(timer, 0, BootTimer.magic)
        let booted = try #require(timer.bootNanoseconds)
        let restored = try BootTimer.restore(from: try throughJSON(timer.saveState()), with: .init(startNanoseconds: 5))
        #expect(restored.bootNanoseconds == booted)
        write(restored, 0, BootTimer.magic)
        #expect(restored.bootNanoseconds == booted, "the first mark counts, also across a restore")
        // A timer saved before the mark records it after the restore, from the new reference.
        let waiting = try BootTimer.restore(
            from: try throughJSON(BootTimer(startNanoseconds: 0).saveState()), with: .init(startNanoseconds: 0))
        #expect(waiting.bootNanoseconds == nil)
        write(waiting, 0, BootTimer.magic)
        #expect((waiting.bootNanoseconds ?? 0) >= booted)

        let port = ExitStatusPort()
        write(port, 0, 3)
        let port2 = try ExitStatusPort.restore(from: try throughJSON(port.saveState()), with: ())
        #expect(port2.reportedStatus == 3)
        write(port2, 0, 9)
        #expect(port2.reportedStatus == 9)
        #expect(try ExitStatusPort.restore(from: try throughJSON(ExitStatusPort().saveState()), with: ()).reportedStatus == nil)
    }
}

// MARK: - Virtio devices

extension DeviceStateTests {
    static let blockHeader: UInt64 = 0x10000
    static let blockData: UInt64 = 0x10_0000
    static let blockMemorySize = 4 << 20

    /// Sends one virtio-blk request with head `head` (descriptors head, head+1, head+2: header,
    /// one data buffer, status) and serves the queue; returns the status byte.
    static func blockRequest(
        _ transport: VirtioMMIOTransport<VirtioBlock>, _ ring: inout RingDriver, head: UInt16, type: UInt32, sector: UInt64,
        data: UInt64, length: UInt32
    ) throws -> UInt8 {
        let memory = ring.memory
        let header = blockHeader + 0x100 * UInt64(head)
        let status = header + 0x20
        try memory.write(type.littleEndian, at: GuestAddress(header))
        try memory.write(UInt32(0), at: GuestAddress(header + 4))
        try memory.write(sector.littleEndian, at: GuestAddress(header + 8))
        try memory.write(UInt8(0xEE), at: GuestAddress(status))
        let dataFlags = type == VirtioBlock.RequestType.write ? Flag.next : Flag.next | Flag.write
        try ring.setDescriptor(Int(head), address: header, length: 16, flags: Flag.next, next: head + 1)
        try ring.setDescriptor(Int(head) + 1, address: data, length: length, flags: dataFlags, next: head + 2)
        try ring.setDescriptor(Int(head) + 2, address: status, length: 1, flags: Flag.write)
        try ring.publish(head)
        transport.processQueue(0)
        return try memory.read(UInt8.self, at: GuestAddress(status))
    }

    @Test("virtio-blk: after negotiation and three requests, the restored device completes the next at used index 3")
    func blockRoundTrip() throws {
        let memory = try virtioTestMemory(size: UInt64(Self.blockMemorySize))
        let image = InMemoryDiskImage(bytes: VirtioBlockTests.pattern(64 << 10))
        let interrupt = CountingSignal()
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(backend: image, readOnly: false, identifier: "state-disk"), memory: memory,
            notifiers: [CountingSignal()], interrupt: interrupt)
        let driver = MMIODriver(transport: transport)
        var ring = RingDriver(memory: memory, size: 16)
        let features = VirtioFeature.version1 | VirtioFeature.ringEventIndex | VirtioBlock.Feature.flush
        #expect(driver.negotiate(features) & VirtioDeviceStatus.featuresOK != 0)
        driver.setUpQueue(0, ring)
        driver.driverOK()
        // Three requests; the driver wants an interrupt once the used index passes 2.
        try ring.setUsedEvent(2)
        let written = VirtioBlockTests.pattern(512, seed: 9)
        try memory.write(written, at: GuestAddress(Self.blockData))
        let ok = VirtioBlock.Status.ok
        #expect(
            try Self.blockRequest(
                transport, &ring, head: 0, type: VirtioBlock.RequestType.write, sector: 4, data: Self.blockData, length: 512)
                == ok)
        #expect(
            try Self.blockRequest(
                transport, &ring, head: 3, type: VirtioBlock.RequestType.read, sector: 5, data: Self.blockData + 0x1000,
                length: 512) == ok)
        #expect(
            try Self.blockRequest(
                transport, &ring, head: 6, type: VirtioBlock.RequestType.getID, sector: 0, data: Self.blockData + 0x2000,
                length: 20) == ok)
        #expect(interrupt.count == 1 && driver.interruptStatus == VirtioInterruptBit.usedBuffer)
        // The next interrupt is wanted past used index 4; the driver reads the high feature word.
        try ring.setUsedEvent(4)
        driver.write(Offset.deviceFeaturesSelect, 1)

        let saved = transport.saveState()
        #expect(saved.transport.queues == [VirtqueuePosition(nextAvailable: 3, nextUsed: 3, usedAtLastInterruptCheck: 3)])
        #expect(saved.transport.isActive && saved.transport.requests == 3)
        #expect(
            saved.device.statistics.writes == 1 && saved.device.statistics.reads == 1 && saved.device.statistics.identifies == 1)
        let decoded = try throughJSON(saved)
        #expect(decoded == saved)

        // Fresh resources: a copy of guest memory and of the image, new signals.
        let newMemory = try copyOfMemory(memory, size: Self.blockMemorySize)
        let newImage = InMemoryDiskImage(bytes: image.bytes)
        let newInterrupt = CountingSignal()
        let restored = try VirtioMMIOTransport<VirtioBlock>.restore(
            from: decoded,
            with: .init(memory: newMemory, notifiers: [CountingSignal()], interrupt: newInterrupt, device: newImage))
        #expect(newInterrupt.count == 1, "the pending interrupt is raised on the new line")
        #expect(restored.saveState() == saved)
        #expect(registerReads(restored) == registerReads(transport))
        #expect(MMIODriver(transport: restored).read(Offset.deviceFeatures) == 1, "DeviceFeaturesSel 1: VERSION_1 in bit 32")
        var newRing = ringDriver(ring, over: newMemory)

        // The same two requests on both: a read of the sector written before the save, then a write.
        var results: [[UInt64]] = []
        for (target, ringIndex) in [(transport, 0), (restored, 1)] {
            var r = ringIndex == 0 ? ring : newRing
            let signal = ringIndex == 0 ? interrupt : newInterrupt
            let before = signal.count
            let read = try Self.blockRequest(
                target, &r, head: 9, type: VirtioBlock.RequestType.read, sector: 4, data: Self.blockData + 0x3000, length: 512)
            let afterFirst = signal.count - before
            let element = try r.usedElement(3)
            let data = try r.memory.readBytes(at: GuestAddress(Self.blockData + 0x3000), count: 512)
            #expect(data == written, "the sector written before the save")
            let write = try Self.blockRequest(
                target, &r, head: 12, type: VirtioBlock.RequestType.write, sector: 6, data: Self.blockData, length: 512)
            let afterSecond = signal.count - before
            results.append([
                UInt64(read), UInt64(afterFirst), UInt64(element.id), UInt64(element.length), UInt64(try r.usedIndex()),
                UInt64(try r.usedElement(4).id), UInt64(write), UInt64(afterSecond), UInt64(try r.availableEvent()),
            ])
            if ringIndex == 0 { ring = r } else { newRing = r }
        }
        #expect(results[1] == results[0])
        #expect(results[1] == [0, 0, 9, 513, 5, 12, 0, 1, 5], "used slots 3 and 4; one interrupt, past used index 4")
        #expect(newImage.bytes == image.bytes)
        #expect(restored.saveState() == transport.saveState())
    }

    @Test("virtio-net: link down and a receive queue half used survive; the waiting chain takes the next frame")
    func networkRoundTrip() throws {
        let memorySize = 4 << 20
        let memory = try virtioTestMemory(size: UInt64(memorySize))
        let backend = MemoryNetworkBackend(supportedOffloads: .all)
        let mac = MACAddress([0x02, 0x53, 0x57, 0x4C, 0x54, 0x07])
        let transport = VirtioMMIOTransport(
            device: VirtioNet(backend: backend, mac: mac), memory: memory, notifiers: [CountingSignal(), CountingSignal()],
            interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        var rx = RingDriver(memory: memory, size: 16)
        var tx = RingDriver(memory: memory, size: 16, descriptorTable: 0x8000, availableRing: 0x9000, usedRing: 0xA000)
        let features =
            VirtioFeature.version1 | VirtioNet.Feature.mac | VirtioNet.Feature.status | VirtioNet.Feature.checksum
            | VirtioNet.Feature.guestChecksum
        #expect(driver.negotiate(features) & VirtioDeviceStatus.featuresOK != 0)
        driver.setUpQueue(0, rx)
        driver.setUpQueue(1, tx)
        driver.driverOK()
        let buffers: UInt64 = 0x10_0000
        // Three receive buffers, two frames: the third buffer waits.
        for index in 0..<3 {
            try rx.setDescriptor(index, address: buffers + UInt64(index) * 0x1000, length: 1536, flags: Flag.write)
            try rx.publish(UInt16(index))
        }
        backend.push(testFrame(length: 60, seed: 1))
        backend.push(testFrame(length: 200, seed: 2))
        #expect(transport.processQueue(VirtioNet.receiveQueue) == .deferred)
        // One frame sent.
        let outgoing = VirtioNetHeader().bytes + testFrame(length: 80, seed: 3)
        try memory.write(outgoing, at: GuestAddress(0x20_0000))
        try tx.setDescriptor(0, address: 0x20_0000, length: UInt32(outgoing.count))
        try tx.publish(0)
        transport.processQueue(VirtioNet.transmitQueue)
        transport.setLinkUp(false)
        #expect(backend.offloadChanges == [[.checksum]])

        let saved = transport.saveState()
        #expect(saved.transport.queues[0] == VirtqueuePosition(nextAvailable: 2, nextUsed: 2, usedAtLastInterruptCheck: 2))
        #expect(saved.transport.registers.configGeneration == 1 && !saved.device.settings.linkUp)
        #expect(saved.device.negotiatedFeatures == features)
        let decoded = try throughJSON(saved)
        #expect(decoded == saved)

        let newMemory = try copyOfMemory(memory, size: memorySize)
        let newBackend = MemoryNetworkBackend(supportedOffloads: .all)
        let restored = try VirtioMMIOTransport<VirtioNet>.restore(
            from: decoded,
            with: .init(
                memory: newMemory, notifiers: [CountingSignal(), CountingSignal()], interrupt: CountingSignal(),
                device: newBackend))
        #expect(registerReads(restored) == registerReads(transport))
        let restoredDriver = MMIODriver(transport: restored)
        #expect(restoredDriver.read(VirtioMMIORegisters.configurationOffset + 6, width: 2) == 0, "link down")
        #expect(restoredDriver.read(Offset.configGeneration) == 1)

        // The same next frame, and the same next transmit, on both.
        let frame = testFrame(length: 100, seed: 4)
        let next = VirtioNetHeader().bytes + testFrame(length: 90, seed: 5)
        let newRx = ringDriver(rx, over: newMemory)
        let newTx = ringDriver(tx, over: newMemory)
        var outcomes: [[UInt64]] = []
        for (target, net, memory) in [(transport, backend, memory), (restored, newBackend, newMemory)] {
            let receive = target === transport ? rx : newRx
            var send = target === transport ? tx : newTx
            net.push(frame)
            let service = target.processQueue(VirtioNet.receiveQueue)
            let element = try receive.usedElement(2)
            let received = try memory.readBytes(at: GuestAddress(buffers + 0x2000), count: 112)
            #expect(received == VirtioNetHeader(bufferCount: 1).bytes + frame)
            try memory.write(next, at: GuestAddress(0x20_0000))
            try send.setDescriptor(1, address: 0x20_0000, length: UInt32(next.count))
            try send.publish(1)
            target.processQueue(VirtioNet.transmitQueue)
            outcomes.append([
                service == .drained ? 1 : 0, UInt64(element.id), UInt64(element.length), UInt64(try receive.usedIndex()),
                UInt64(try send.usedIndex()), UInt64(try send.usedElement(1).id),
            ])
            #expect(net.outgoing.last == next)
        }
        #expect(outcomes[1] == outcomes[0])
        #expect(outcomes[1] == [1, 2, 112, 3, 2, 1], "the waiting chain (head 2) at used slot 2; transmit at slot 1")
        #expect(newBackend.offloadChanges == [[.checksum]], "the new tap gets the negotiated offloads before its first read")
        #expect(restored.networkStatistics == transport.networkStatistics)
        #expect(restored.networkStatistics.receivedFrames == 3 && restored.networkStatistics.transmittedFrames == 2)
    }

    @Test("virtio-net: a tap without the offloads the saved device offered is refused")
    func networkFewerOffloads() throws {
        let memory = try virtioTestMemory()
        let transport = VirtioMMIOTransport(
            device: VirtioNet(
                backend: MemoryNetworkBackend(supportedOffloads: .all), mac: MACAddress(rawValue: 0x0253_574C_5408)),
            memory: memory, notifiers: [CountingSignal(), CountingSignal()], interrupt: CountingSignal())
        let saved = transport.saveState()
        let error = restoreError { () throws(DeviceRestoreError) in
            _ = try VirtioMMIOTransport<VirtioNet>.restore(
                from: saved,
                with: .init(
                    memory: memory, notifiers: [CountingSignal(), CountingSignal()], interrupt: CountingSignal(),
                    device: MemoryNetworkBackend(supportedOffloads: [.checksum])))
        }
        #expect(error?.device == "virtio-net" && error?.field == "settings.offloads" && isInconsistent(error?.problem))
        let wide = try corrupted(saved) { $0["device"]["settings"]["mac"]["rawValue"] = .unsigned(1 << 50) }
        let macError = restoreError { () throws(DeviceRestoreError) in
            _ = try VirtioMMIOTransport<VirtioNet>.restore(
                from: wide,
                with: .init(
                    memory: memory, notifiers: [CountingSignal(), CountingSignal()], interrupt: CountingSignal(),
                    device: MemoryNetworkBackend()))
        }
        #expect(macError?.field == "settings.mac" && macError?.problem == .undefinedBits(1 << 50, allowed: 0xFFFF_FFFF_FFFF))
    }

    /// A virtio-rng device that served two requests (heads 0 and 1, 32 bytes each).
    static func servedRNG(memory: GuestMemory) throws -> (VirtioMMIOTransport<VirtioRNG>, RingDriver) {
        let transport = VirtioMMIOTransport(
            device: VirtioRNG(), memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        var ring = RingDriver(memory: memory, size: 16)
        #expect(driver.negotiate(VirtioFeature.version1) & VirtioDeviceStatus.featuresOK != 0)
        driver.setUpQueue(0, ring)
        driver.driverOK()
        for head in 0..<2 {
            try ring.setDescriptor(head, address: 0x10_0000 + 0x1000 * UInt64(head), length: 32, flags: Flag.write)
            try ring.publish(UInt16(head))
        }
        transport.processQueue(0)
        #expect(try ring.usedIndex() == 2)
        return (transport, ring)
    }

    @Test("virtio-rng: after two requests the restored device serves the third at used index 2")
    func rngRoundTrip() throws {
        let memory = try virtioTestMemory()
        let (transport, ring) = try Self.servedRNG(memory: memory)
        let saved = try throughJSON(transport.saveState())
        #expect(saved == transport.saveState())
        let newMemory = try copyOfMemory(memory, size: 2 << 20)
        let restored = try VirtioMMIOTransport<VirtioRNG>.restore(
            from: saved, with: .init(memory: newMemory, notifiers: [CountingSignal()], interrupt: CountingSignal(), device: ()))
        #expect(registerReads(restored) == registerReads(transport))
        var newRing = ringDriver(ring, over: newMemory)
        try newRing.setDescriptor(5, address: 0x10_5000, length: 48, flags: Flag.write)
        try newRing.publish(5)
        restored.processQueue(0)
        #expect(try newRing.usedIndex() == 3)
        #expect(try newRing.usedElement(2) == (5, 48))
        #expect(try newMemory.readBytes(at: GuestAddress(0x10_5000), count: 48).contains { $0 != 0 })
        let statistics = restored.withDevice { $0.statistics }
        #expect(statistics.requests == 3 && statistics.bytes == 32 + 32 + 48)
        #expect(restored.statistics.requests == 3)
    }

    @Test("a device saved halfway through set-up (queue programmed, no DRIVER_OK) finishes it after the restore")
    func restoreBeforeDriverOK() throws {
        let memory = try virtioTestMemory()
        let transport = VirtioMMIOTransport(
            device: VirtioRNG(), memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        var ring = RingDriver(memory: memory, size: 8)
        #expect(driver.negotiate(VirtioFeature.version1) & VirtioDeviceStatus.featuresOK != 0)
        driver.setUpQueue(0, ring)
        let saved = try throughJSON(transport.saveState())
        #expect(!saved.transport.isActive && saved.transport.queues == [nil] && saved.transport.registers.queues[0].ready)
        let restored = try VirtioMMIOTransport<VirtioRNG>.restore(
            from: saved, with: .init(memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal(), device: ()))
        MMIODriver(transport: restored).driverOK()
        try ring.setDescriptor(0, address: 0x10_0000, length: 16, flags: Flag.write)
        try ring.publish(0)
        restored.processQueue(0)
        #expect(try ring.usedElement(0) == (0, 16))
    }

    @Test("virtio-mmio: corrupt transport states are refused, naming the field")
    func transportCorrupt() throws {
        let memory = try virtioTestMemory()
        let (transport, _) = try Self.servedRNG(memory: memory)
        let good = transport.saveState()
        func attempt(_ state: VirtioDeviceState<VirtioRNG>, notifiers: Int = 1) -> DeviceRestoreError? {
            restoreError { () throws(DeviceRestoreError) in
                _ = try VirtioMMIOTransport<VirtioRNG>.restore(
                    from: state,
                    with: .init(
                        memory: memory, notifiers: (0..<notifiers).map { _ in CountingSignal() }, interrupt: CountingSignal(),
                        device: ()))
            }
        }
        #expect(attempt(good) == nil)
        let cases: [(String, (inout JSONValue) -> Void, DeviceRestoreError.Problem?)] = [
            ("registers.queues[0].size", { $0["transport"]["registers"]["queues"][0]["size"] = .unsigned(3) }, .notPowerOfTwo(3)),
            (
                "registers.queues[0].size", { $0["transport"]["registers"]["queues"][0]["size"] = .unsigned(128) },
                .tooLarge(128, maximum: 64)
            ),
            (
                "registers.queues[0].usedRing",
                { $0["transport"]["registers"]["queues"][0]["usedRing"] = .unsigned((2 << 20) - 8) },
                .outsideGuestMemory(address: (2 << 20) - 8, length: 6 + 8 * 16)
            ),
            (
                "registers.queues[0].descriptorTable",
                { $0["transport"]["registers"]["queues"][0]["descriptorTable"] = .unsigned(0x1008) },
                .misaligned(address: 0x1008, alignment: 16)
            ),
            ("registers.deviceID", { $0["transport"]["registers"]["deviceID"] = .unsigned(2) }, .mismatch(saved: 2, current: 4)),
            (
                "registers.queueSizeMaximum", { $0["transport"]["registers"]["queueSizeMaximum"] = .unsigned(256) },
                .mismatch(saved: 256, current: 64)
            ),
            (
                "registers.status", { $0["transport"]["registers"]["status"] = .unsigned(0x10F) },
                .undefinedBits(0x10F, allowed: 0xCF)
            ),
            ("registers.status", { $0["transport"]["registers"]["status"] = .unsigned(0x07) }, nil),
            (
                "registers.driverFeatures",
                { $0["transport"]["registers"]["driverFeatures"] = .unsigned(VirtioFeature.version1 | 1) },
                .undefinedBits(VirtioFeature.version1 | 1, allowed: VirtioRNG().offeredFeatures)
            ),
            (
                "registers.interruptStatus", { $0["transport"]["registers"]["interruptStatus"] = .unsigned(4) },
                .undefinedBits(4, allowed: 3)
            ),
            ("registers.queues", { $0["transport"]["registers"]["queues"] = .array([]) }, .wrongCount(0, expected: 1)),
            ("queues", { $0["transport"]["queues"] = .array([]) }, .wrongCount(0, expected: 1)),
            ("queues[0]", { $0["transport"]["queues"][0] = .null }, nil),
            ("queues[0].nextUsed", { $0["transport"]["queues"][0]["nextUsed"] = .unsigned(3) }, nil),
            ("isActive", { $0["transport"]["isActive"] = .bool(false) }, nil),
            ("isBroken", { $0["transport"]["isBroken"] = .bool(true) }, nil),
            ("statistics.requests", { $0["transport"]["requests"] = .signed(-1) }, .negative(-1)),
            ("queueSizeMaximum", { $0["device"]["queueSizeMaximum"] = .unsigned(48) }, .notPowerOfTwo(48)),
        ]
        for (field, edit, problem) in cases {
            let error = attempt(try corrupted(good, edit))
            #expect(error?.field == field, "\(field)")
            if let problem {
                #expect(error?.problem == problem, "\(field)")
            } else {
                #expect(isInconsistent(error?.problem), "\(field): \(String(describing: error))")
            }
        }
        let notifiers = attempt(good, notifiers: 2)
        #expect(
            notifiers
                == DeviceRestoreError(device: "virtio-mmio", field: "resources.notifiers", problem: .wrongCount(2, expected: 1)))
    }

    @Test("virtio-blk: a disk of another size, or an id longer than 20 bytes, is refused")
    func blockCorrupt() throws {
        let memory = try virtioTestMemory()
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(
                backend: InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 64 << 10)), readOnly: false, identifier: "d"),
            memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        let good = transport.saveState()
        func attempt(_ state: VirtioDeviceState<VirtioBlock>, diskSize: Int = 64 << 10) -> DeviceRestoreError? {
            restoreError { () throws(DeviceRestoreError) in
                _ = try VirtioMMIOTransport<VirtioBlock>.restore(
                    from: state,
                    with: .init(
                        memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal(),
                        device: InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: diskSize))))
            }
        }
        #expect(attempt(good) == nil)
        #expect(
            attempt(good, diskSize: 32 << 10)
                == DeviceRestoreError(
                    device: "virtio-blk", field: "settings.capacity", problem: .mismatch(saved: 128, current: 64)))
        let long = try corrupted(good) {
            $0["device"]["settings"]["identifier"] = .array([JSONValue](repeating: .unsigned(65), count: 21))
        }
        #expect(attempt(long)?.problem == .tooLong(count: 21, capacity: 20))
        let block = try corrupted(good) { $0["device"]["settings"]["blockSize"] = .unsigned(256) }
        #expect(
            attempt(block)
                == DeviceRestoreError(device: "virtio-blk", field: "settings.blockSize", problem: .tooSmall(256, minimum: 512)))
        // The configuration space must be the one the restored device offers.
        let configuration = try corrupted(good) { $0["transport"]["registers"]["configuration"][0] = .unsigned(0x81) }
        #expect(attempt(configuration)?.field == "registers.configuration[0]")
    }
}
