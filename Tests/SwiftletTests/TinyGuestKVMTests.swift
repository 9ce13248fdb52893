import Glibc
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

/// Boots the tiny guests from Guests/ on the host's /dev/kvm and checks what they print and how
/// they end. Each run has a deadline, so a hung guest fails its test instead of hanging CI.
@Suite("KVM: tiny guests", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(2)))
struct TinyGuestKVMTests {
    struct Run {
        let exit: GuestExit
        let output: String
    }

    static func boot(
        _ guest: String, format: KernelFormat = .automatic, cpus: Int = 1, mmioTestDevice: Bool = false,
        while running: (Machine) throws -> Void = { _ in }
    ) throws -> Run {
        let console = BufferSerialOutput()
        var configuration = MachineConfiguration(
            kernelPath: guest.hasPrefix("/") ? guest : try TestSupport.guest(guest), kernelFormat: format, memorySize: 128 << 20,
            vcpuCount: cpus, console: .output(console))
        configuration.mmioTestDevice = mmioTestDevice
        let machine = try Machine(configuration)
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        try running(machine)
        let exit = machine.wait()
        return Run(exit: exit, output: console.text)
    }

    @Test("a real-mode flat binary prints over serial and resets")
    func realModeHello() throws {
        let run = try Self.boot("realmode-hello.bin", format: .flatRealMode)
        #expect(run.output == "Hello from real mode\n")
        #expect(run.exit == .reset)
    }

    @Test("a 64-bit ELF guest entered in long mode prints and resets")
    func longModeHello() throws {
        let run = try Self.boot("longmode-hello.elf")
        #expect(run.output == "Hello from 64-bit long mode\n")
        #expect(run.exit == .reset)
    }

    @Test("a guest reads and writes the MMIO test device and reports what it read")
    func mmioTestDevice() throws {
        let run = try Self.boot("mmio-test.elf", mmioTestDevice: true)
        #expect(run.output == "mmio-test: id=53574c54 scratch1=a5a5f00d scratch2=12345678 writes=2\n")
        #expect(run.exit == .reset)
        // Without the device (every production machine) the window is unclaimed: reads are all ones.
        let absent = try Self.boot("mmio-test.elf")
        #expect(absent.output.hasPrefix("mmio-test: id=ffffffff"), "got: \(absent.output)")
    }

    @Test("host input reaches the guest through the UART receive FIFO")
    func consoleInput() throws {
        let text = String(repeating: "abcdefgh", count: 40)
        let run = try Self.boot("realmode-echo.bin", format: .flatRealMode) { machine in
            // Five times the 64-byte FIFO in one go: the rest waits in console input and moves
            // in each time the guest's reads give the full FIFO room (the room signal), with
            // nothing dropped and no overrun.
            machine.sendConsoleInput(Array((text + "q").utf8))
        }
        #expect(run.output == "echo ready\n" + text)
        #expect(run.exit == .reset)
    }

    @Test("a triple fault ends the VM with the exit reason and RIP")
    func tripleFault() throws {
        let run = try Self.boot("triple-fault.elf")
        #expect(run.output == "triple-fault: faulting now\n")
        guard case .tripleFault(let vcpu, let rip) = run.exit else {
            Issue.record("expected a triple fault, got \(run.exit)")
            return
        }
        #expect(vcpu == 0)
        #expect(rip >= 0x100_0000 && rip < 0x100_1000, "RIP \(rip) should be inside the guest image")
        #expect(run.exit.exitCode == 3)
    }

    @Test("the host stops a guest that spins forever")
    func stopSpinningGuest() throws {
        let image = try TemporaryFile(contents: PublicAPITests.counterGuest)
        let started = monotonicNanoseconds()
        let run = try Self.boot(image.path, format: .flatRealMode) { machine in
            // Stop it while it runs: once its counter moves, the guest is executing.
            try TestSupport.waitUntil("the guest's counter moves") {
                try machine.memory.read(UInt32.self, at: PublicAPITests.counterAddress) > 0
            }
            machine.stop()
        }
        #expect(run.exit == .stopped(.requested))
        #expect(monotonicNanoseconds() - started < 10_000_000_000)
    }

    @Test("a deadline stops a guest that spins forever")
    func deadlineStopsGuest() throws {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("realmode-spin.bin"), kernelFormat: .flatRealMode,
                memorySize: 64 << 20, console: .output(console)))
        let started = monotonicNanoseconds()
        machine.setDeadline(after: 0.3)
        try machine.start()
        let exit = machine.wait()
        let took = Double(monotonicNanoseconds() - started) / 1e9
        #expect(exit == .stopped(.deadline))
        #expect(exit.exitCode == 124)
        // The deadline ends it no earlier than asked, and not long after.
        #expect(took >= 0.3, "stopped after \(took) s")
        #expect(took < 5, "stopped after \(took) s")
        #expect(console.text.isEmpty)
    }

    @Test("with two vCPUs the machine ends when the boot vCPU's guest resets")
    func twoVCPUs() throws {
        let run = try Self.boot("longmode-hello.elf", cpus: 2)
        #expect(run.output == "Hello from 64-bit long mode\n")
        #expect(run.exit == .reset)
    }

    @Test("two machines run in one process at once")
    func twoMachines() throws {
        let first = BufferSerialOutput()
        let second = BufferSerialOutput()
        let a = try Machine(
            MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .output(first)))
        let b = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("realmode-hello.bin"), kernelFormat: .flatRealMode,
                console: .output(second)))
        try a.start()
        try b.start()
        a.setDeadline(after: TestSupport.guestDeadline)
        b.setDeadline(after: TestSupport.guestDeadline)
        #expect(a.wait() == .reset)
        #expect(b.wait() == .reset)
        #expect(first.text == "Hello from 64-bit long mode\n")
        #expect(second.text == "Hello from real mode\n")
    }

    @Test("building fails with the step and the reason for a missing kernel")
    func missingKernel() {
        do {
            _ = try Machine(MachineConfiguration(kernelPath: "/nonexistent/kernel", console: .none))
            Issue.record("a missing kernel was accepted")
        } catch {
            #expect(error.step == .loadKernel)
            #expect("\(error)" == "cannot load the kernel: cannot read kernel: open /nonexistent/kernel failed: No such file or directory (errno 2)")
        }
    }
}

@Suite("KVM: stopping on signals", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .timeLimit(.minutes(2)))
struct SignalStopperKVMTests {
    @Test("a signal delivered to the stopper ends the machine as stopped(.signal)")
    func signalStopsMachine() throws {
        let image = try TemporaryFile(contents: PublicAPITests.counterGuest)
        let machine = try Machine(MachineConfiguration(kernelPath: image.path, kernelFormat: .flatRealMode, console: .none))
        // Thread-directed, so no other thread of the test runner can receive it.
        let stopper = try SignalStopper(stopping: machine, on: [SIGUSR1])
        defer {
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGUSR1)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
        }
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        // Signal it while it runs: once its counter moves, the guest is executing.
        try TestSupport.waitUntil("the guest's counter moves") {
            try machine.memory.read(UInt32.self, at: PublicAPITests.counterAddress) > 0
        }
        pthread_kill(stopper.waiter.id, SIGUSR1)
        let exit = machine.wait()
        stopper.cancel()
        #expect(exit == .stopped(.signal(SIGUSR1)))
        #expect(exit.isClean)
        #expect(exit.exitCode == 128 + SIGUSR1)
    }
}
