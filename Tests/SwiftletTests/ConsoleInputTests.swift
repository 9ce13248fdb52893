import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// An interrupt line nobody listens to.
private struct UnconnectedLine: InterruptLine {
    func setLevel(_ high: Bool) {}
}

/// `ConsoleInput` against a real `EventLoop` and `SerialPort`, with no VM: the test plays the
/// guest (reading RBR) and turns the loop by hand with `dispatch(waitingAtMost: 0)`, so it sees
/// exactly which handlers have something to do. No timer is involved anywhere: after every step
/// the loop has nothing left to run until the guest reads.
@Suite("ConsoleInput", .serialized)
struct ConsoleInputTests {
    let loop: EventLoop
    let work: EventFD
    let port: SerialPort

    init() throws {
        loop = try EventLoop()
        work = try EventFD()
        port = SerialPort(
            output: BufferSerialOutput(), interruptLine: UnconnectedLine(), inputRoom: EventFDInputRoomSignal(eventfd: work))
    }

    func makeInput(terminal: HostTerminal?, onStop: @escaping @Sendable () -> Void = {}) throws -> ConsoleInput {
        let input = ConsoleInput(terminal: terminal, serial: port, loop: loop, work: work, onStop: onStop)
        try input.attach()
        return input
    }

    /// Runs every handler that is ready now, until none is; returns how many ran.
    @discardableResult
    func settle() -> Int {
        var total = 0
        while let ran = loop.dispatch(waitingAtMost: 0), ran > 0 { total += ran }
        return total
    }

    /// The guest reads RBR `count` times (or until the FIFO is empty).
    func guestReads(_ count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for _ in 0..<count where port.inputSpace < Serial8250.receiveFIFOCapacity {
            var byte: UInt8 = 0
            withUnsafeMutableBytes(of: &byte) { port.read(offset: 0, data: $0) }
            bytes.append(byte)
        }
        return bytes
    }

    /// The guest reads everything, letting the loop refill the FIFO, until `total` bytes arrived
    /// or a refill brings nothing.
    func guestReadsAll(_ total: Int) -> [UInt8] {
        var received: [UInt8] = []
        while received.count < total {
            let bytes = guestReads(Serial8250.receiveFIFOCapacity)
            received += bytes
            if settle() == 0 && bytes.isEmpty { break }
        }
        return received
    }

    @Test("sent input beyond the FIFO waits, with nothing for the loop to do, and resumes when the guest reads")
    func sentInputResumesAfterGuestReads() throws {
        let input = try makeInput(terminal: nil)
        defer { loop.removeAllHandlers() }
        let text = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        input.send(text)
        #expect(settle() == 1, "one work event moves what fits")
        #expect(port.inputSpace == 0)
        // Blocked: no handler is ready, and none becomes ready without the guest.
        #expect(loop.dispatch(waitingAtMost: 0) == 0)

        // The guest reads ten bytes: the first read from the full FIFO signals once, and that
        // one event refills it.
        #expect(guestReads(10) == Array(text[0..<10]))
        #expect(loop.dispatch(waitingAtMost: 0) == 1)
        #expect(port.inputSpace == 0)
        #expect(loop.dispatch(waitingAtMost: 0) == 0)

        let rest = guestReadsAll(190)
        #expect(rest == Array(text[10...]))
        #expect(port.inputSpace == Serial8250.receiveFIFOCapacity)
        #expect(settle() == 0, "nothing is left to do once everything was delivered")
    }

    @Test("terminal input stays unwatched while the FIFO is full and is read again once the guest drained it")
    func terminalUnwatchedWhileFull() throws {
        let pipe = try TestPipe()
        let input = try makeInput(terminal: HostTerminal(inputDescriptor: pipe.readEnd))
        defer { loop.removeAllHandlers() }
        _ = input
        let first = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ 1) }
        let second = (0..<100).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ 2) }
        func typed(_ bytes: [UInt8]) {
            let written = bytes.withUnsafeBytes { write(pipe.writeEnd, $0.baseAddress, $0.count) }
            #expect(written == bytes.count)
        }
        typed(first)
        settle()
        #expect(port.inputSpace == 0)
        // The pipe is readable again, but stdin is not watched while bytes wait: nothing runs.
        typed(second)
        #expect(loop.dispatch(waitingAtMost: 0) == 0)
        var pending = 0
        #expect(ioctl(pipe.readEnd, UInt(FIONREAD), &pending) == 0)
        #expect(pending == second.count, "the terminal was read while the FIFO was full")

        let received = guestReadsAll(first.count + second.count)
        #expect(received == first + second)
        #expect(settle() == 0)
    }

    @Test("an always-readable input (a regular file, which epoll refuses) is read as the FIFO gets room, to its end")
    func regularFileReadAsRoomAppears() throws {
        let text = (0..<700).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ 3) }
        let file = try TemporaryFile(contents: text)
        let fd = open(file.path, O_RDONLY | O_CLOEXEC)
        #expect(fd >= 0)
        defer { close(fd) }
        let input = try makeInput(terminal: HostTerminal(inputDescriptor: fd))
        defer { loop.removeAllHandlers() }
        _ = input
        settle()
        #expect(port.inputSpace == 0)
        #expect(loop.dispatch(waitingAtMost: 0) == 0, "a full FIFO leaves nothing to do, file or not")
        #expect(guestReadsAll(text.count) == text)
        // At the end of the file nothing is ready any more: no busy loop on end of input.
        #expect(settle() == 0)
        #expect(loop.dispatch(waitingAtMost: 0) == 0)
    }

    @Test("Ctrl-A x on the terminal calls the stop handler, and what follows it is not delivered")
    func escapeStops() throws {
        let pipe = try TestPipe()
        let stops = CancellationFlag()
        let input = try makeInput(terminal: HostTerminal(inputDescriptor: pipe.readEnd)) { _ = stops.set() }
        defer { loop.removeAllHandlers() }
        _ = input
        let bytes: [UInt8] = Array("ab".utf8) + [0x01, UInt8(ascii: "x")] + Array("cd".utf8)
        _ = bytes.withUnsafeBytes { write(pipe.writeEnd, $0.baseAddress, $0.count) }
        settle()
        #expect(stops.isSet)
        // The machine is ending: neither the escape nor anything after it reaches the guest.
        let received = guestReads(10)
        #expect(!received.contains(0x01) && !received.contains(UInt8(ascii: "c")), "\(received)")
    }
}
