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

/// The exit-status device (port 0x441) and how a reported status becomes the machine's ending
/// and the CLI's exit status.
@Suite("Exit status")
struct ExitStatusTests {
    @Test("nothing is reported until the guest writes; the last write counts")
    func lastWriteCounts() {
        let port = ExitStatusPort()
        #expect(port.reportedStatus == nil)
        withUnsafeBytes(of: UInt8(3)) { port.write(offset: 0, data: $0) }
        withUnsafeBytes(of: UInt8(255)) { port.write(offset: 0, data: $0) }
        #expect(port.reportedStatus == 255)
        #expect(port.currentState.reportedStatus == 255)
    }

    @Test("a wider write counts its low byte; writes at other offsets and empty writes are ignored")
    func widthsAndOffsets() {
        let port = ExitStatusPort()
        withUnsafeBytes(of: UInt32(0x1234_5607).littleEndian) { port.write(offset: 0, data: $0) }
        #expect(port.reportedStatus == 7)
        withUnsafeBytes(of: UInt8(9)) { port.write(offset: 1, data: $0) }
        port.write(offset: 0, data: UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(port.reportedStatus == 7)
        var value: UInt32 = 0xFFFF_FFFF
        withUnsafeMutableBytes(of: &value) { port.read(offset: 0, data: $0) }
        #expect(value == 0)
    }

    @Test("a restored state keeps its report")
    func restoredState() {
        var state = ExitStatusPort.State()
        state.reportedStatus = 17
        #expect(ExitStatusPort(state: state).reportedStatus == 17)
    }

    @Test("a reset or power-off after a report becomes commandExited; other endings are kept")
    func endingMapping() {
        #expect(GuestExit.ending(.reset, reportedStatus: 7) == .commandExited(status: 7))
        #expect(GuestExit.ending(.powerOff, reportedStatus: 0) == .commandExited(status: 0))
        #expect(GuestExit.ending(.reset, reportedStatus: nil) == .reset)
        #expect(GuestExit.ending(.guestPanic(vcpu: 0), reportedStatus: 7) == .guestPanic(vcpu: 0))
        #expect(GuestExit.ending(.stopped(.deadline), reportedStatus: 7) == .stopped(.deadline))
        #expect(GuestExit.ending(.stopped(.signal(15)), reportedStatus: 7) == .stopped(.signal(15)))
        #expect(GuestExit.commandExited(status: 137).exitCode == 137)
        #expect(GuestExit.commandExited(status: 3).isClean)
        #expect(GuestExit.commandExited(status: 3).description == "the guest's command exited with status 3")
    }
}

/// A tiny guest reports a status on the real port and ends with a reset.
@Suite("KVM: exit status", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(2)))
struct ExitStatusKVMTests {
    @Test("the machine ends with the status the guest reported last")
    func machineEnding() throws {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("exit-status.elf"), memorySize: 128 << 20, console: .output(console)))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        let exit = machine.wait()
        #expect(exit == .commandExited(status: 42))
        #expect(machine.exitStatus.reportedStatus == 42)
        #expect(console.text == "exit-status: reported 42\n")
    }

    @Test("swiftlet exits with the guest's status and prints no error")
    func cliExitStatus() throws {
        let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"
        guard access(binary, X_OK) == 0 else { throw TestFailure("\(binary) is missing: run `swift build` first") }
        let result = try Subprocess.run(
            binary, ["boot", "--kernel", try TestSupport.guest("exit-status.elf"), "--timeout", "20"], timeout: 60)
        #expect(result.status == 42)
        #expect(result.stdout == "exit-status: reported 42\n")
        #expect(result.stderr == "")
    }

    @Test("a guest that never reports keeps the plain reset (exit status 0)")
    func noReport() throws {
        let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"
        guard access(binary, X_OK) == 0 else { throw TestFailure("\(binary) is missing: run `swift build` first") }
        let result = try Subprocess.run(binary, ["boot", "--kernel", try TestSupport.guest("longmode-hello.elf")], timeout: 60)
        #expect(result.status == 0)
    }
}
