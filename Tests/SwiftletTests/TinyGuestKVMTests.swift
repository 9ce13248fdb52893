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
        /// `Machine.exitCounts` once the machine has ended.
        let exitCounts: [ExitCounts]
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
        return Run(exit: exit, output: console.text, exitCounts: machine.exitCounts)
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

    // MARK: Exit counters

    @Test("the exit counters match the port and MMIO accesses the mmio-test guest makes")
    func exitCountsOfMMIOTest() throws {
        let run = try Self.boot("mmio-test.elf", mmioTestDevice: true)
        #expect(run.exit == .reset)
        #expect(run.exitCounts.count == 1)
        let counts = try #require(run.exitCounts.first)
        // Four loads (ID, scratch twice, write count) and two stores to the test device.
        #expect(counts.mmioRead == 4)
        #expect(counts.mmioWrite == 2)
        // Per console byte one line-status read (THRE is always set) and one data write; then
        // the i8042 reset write that ends the VM.
        let bytes = UInt64(run.output.utf8.count)
        #expect(bytes == 68)
        #expect(counts.portIn == bytes)
        #expect(counts.portOut == bytes + 1)
        // The reset stops the machine from inside that write; the next KVM_RUN returns EINTR at
        // once (immediate_exit) and the vCPU ends.
        #expect(counts.interrupted == 1)
        #expect(counts.halt == 0 && counts.shutdown == 0 && counts.internalError == 0 && counts.other == 0)
        #expect(counts.total == 2 * bytes + 1 + 6 + 1)
    }

    @Test("a triple fault is counted as one shutdown exit")
    func exitCountsOfTripleFault() throws {
        let run = try Self.boot("triple-fault.elf")
        #expect(run.exit.exitCode == 3)
        let counts = try #require(run.exitCounts.first)
        let bytes = UInt64(run.output.utf8.count)
        #expect(counts.shutdown == 1)
        #expect(counts.portIn == bytes && counts.portOut == bytes)
        #expect(counts.mmioRead == 0 && counts.mmioWrite == 0)
        // The vCPU stops at the shutdown exit itself: no further KVM_RUN.
        #expect(counts.interrupted == 0)
        #expect(counts.total == 2 * bytes + 1)
    }

    @Test("each vCPU has its own counters: an application processor nobody starts only waits")
    func exitCountsPerVCPU() throws {
        let run = try Self.boot("longmode-hello.elf", cpus: 2)
        #expect(run.exit == .reset)
        #expect(run.exitCounts.count == 2)
        let bytes = UInt64(run.output.utf8.count)
        #expect(run.exitCounts[0].portIn == bytes)
        #expect(run.exitCounts[0].portOut == bytes + 1)
        // vCPU 1 sits in wait-for-SIPI inside KVM_RUN until the machine's end kicks it out.
        var idle = ExitCounts()
        idle.interrupted = run.exitCounts[1].interrupted
        #expect(run.exitCounts[1] == idle)
        #expect(idle.interrupted >= 1)
    }

    @Test("the exit counters can be read while the guest runs, and only grow")
    func exitCountsDuringRun() throws {
        let run = try Self.boot("serial-flood.elf") { machine in
            var seen: [UInt64] = []
            let deadline = monotonicNanoseconds() + 10_000_000_000
            while seen.count < 5 && monotonicNanoseconds() < deadline {
                let written = machine.exitCounts[0].portOut
                if written > (seen.last ?? 0) { seen.append(written) }
                usleep(1000)
            }
            machine.stop()
            #expect(seen.count == 5, "the port-write count did not keep growing: \(seen)")
            #expect(seen == seen.sorted())
        }
        #expect(run.exit == .stopped(.requested))
        // Every 4 KiB block is one exit; the output the console took is at most what was written.
        let counts = try #require(run.exitCounts.first)
        #expect(UInt64(run.output.utf8.count) <= counts.portOut * 4096)
        #expect(counts.interrupted >= 1)
    }

    @Test("building fails with the step and the reason for a missing kernel")
    func missingKernel() {
        do {
            _ = try Machine(MachineConfiguration(kernelPath: "/nonexistent/kernel", console: .none))
            Issue.record("a missing kernel was accepted")
        } catch {
            #expect(error.step == .loadKernel)
            #expect(
                "\(error)"
                    == "cannot load the kernel: cannot read kernel: open /nonexistent/kernel failed: No such file or directory (errno 2)"
            )
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
