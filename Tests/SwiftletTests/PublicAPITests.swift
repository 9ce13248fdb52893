import Glibc
import Swiftlet
import SwiftletBackends
import SwiftletDeviceTree
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import SwiftletTestSupport
import Testing

/// The embedding API, used exactly as a Swift program would: plain `import Swiftlet`, no
/// internal access.
@Suite("Public API", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized)
struct PublicAPITests {
    /// A real-mode guest that increments the 32-bit counter at guest physical 0x11000 forever
    /// (mov ax, cs; mov ds, ax; 1: inc dword [0x1000]; jmp 1b).
    static let counterGuest: [UInt8] = [0x8C, 0xC8, 0x8E, 0xD8, 0x66, 0xFF, 0x06, 0x00, 0x10, 0xEB, 0xF9]
    static let counterAddress = GuestAddress(0x11000)

    @Test("start, await the end asynchronously, read the console")
    func startAndAwait() async throws {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .output(console)))
        try machine.start()
        machine.setDeadline(after: TestSupport.guestDeadline)
        let exit = await machine.waitUntilExit()
        #expect(exit == .reset)
        #expect(exit.isClean)
        #expect(exit.exitCode == 0)
        #expect(console.text == "Hello from 64-bit long mode\n")
    }

    @Test("the console as a stream: read the guest's output, write its input")
    func consoleStream() async throws {
        let console = try ConsoleStream()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("realmode-echo.bin"), kernelFormat: .flatRealMode,
                console: .stream(console)))
        try machine.start()
        machine.setDeadline(after: TestSupport.guestDeadline)
        // More than the UART's 64-byte FIFO in one call: the rest waits, nothing is dropped.
        let text = String(repeating: "0123456789", count: 20)
        machine.sendConsoleInput(Array((text + "q").utf8))
        var received: [UInt8] = []
        for await chunk in console.output { received += chunk }
        #expect(String(decoding: received, as: UTF8.self) == "echo ready\n" + text)
        #expect(await machine.waitUntilExit() == .reset)
        #expect(console.droppedBytes == 0)
    }

    @Test("stop a guest that spins forever, from another task")
    func stopSpinningGuest() async throws {
        let image = try TemporaryFile(contents: Self.counterGuest)
        let machine = try Machine(
            MachineConfiguration(kernelPath: image.path, kernelFormat: .flatRealMode, console: .none))
        try machine.start()
        machine.setDeadline(after: TestSupport.guestDeadline)
        try await Task.sleep(for: .milliseconds(100))
        machine.stop()
        #expect(await machine.waitUntilExit() == .stopped(.requested))
        // Waiting again returns the same answer at once.
        #expect(machine.wait() == .stopped(.requested))
    }

    @Test("pause parks every vCPU: the guest's counter stops, and moves again after resume")
    func pauseAndResume() async throws {
        let image = try TemporaryFile(contents: Self.counterGuest)
        let machine = try Machine(
            MachineConfiguration(kernelPath: image.path, kernelFormat: .flatRealMode, vcpuCount: 2, console: .none))
        try machine.start()
        machine.setDeadline(after: TestSupport.guestDeadline)
        func counter() throws -> UInt32 { try machine.memory.read(UInt32.self, at: Self.counterAddress) }

        try await waitUntil { try counter() > 0 }
        machine.pause()
        #expect(machine.isPaused)
        let paused = try counter()
        try await Task.sleep(for: .milliseconds(200))
        #expect(try counter() == paused, "the guest ran while paused")

        machine.resume()
        #expect(!machine.isPaused)
        try await waitUntil { try counter() > paused }
        machine.stop()
        #expect(await machine.waitUntilExit() == .stopped(.requested))
    }

    @Test("a machine starts once; wait() called before start() waits for the start and the end")
    func lifecycle() async throws {
        let machine = try Machine(
            MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .none))
        async let early = machine.waitUntilExit()
        try await Task.sleep(for: .milliseconds(50))
        try machine.start()
        machine.setDeadline(after: TestSupport.guestDeadline)
        #expect(await early == .reset)
        do {
            try machine.start()
            Issue.record("a second start() was accepted")
        } catch {
            #expect(error.step == .startThreads)
            #expect("\(error)" == "cannot start the VMM threads: the machine was already started (a machine runs once)")
        }
    }

    @Test("a machine that is never started goes away cleanly")
    func neverStarted() throws {
        for _ in 0..<3 {
            _ = try Machine(
                MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .none))
        }
    }

    @Test("two machines run at once in one process")
    func twoMachines() async throws {
        let first = BufferSerialOutput()
        let second = BufferSerialOutput()
        var withTestDevice = MachineConfiguration(kernelPath: try TestSupport.guest("mmio-test.elf"), console: .output(first))
        withTestDevice.mmioTestDevice = true
        let a = try Machine(withTestDevice)
        let b = try Machine(
            MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .output(second)))
        try a.start()
        try b.start()
        a.setDeadline(after: TestSupport.guestDeadline)
        b.setDeadline(after: TestSupport.guestDeadline)
        async let exitA = a.waitUntilExit()
        async let exitB = b.waitUntilExit()
        #expect(await exitA == .reset)
        #expect(await exitB == .reset)
        #expect(first.text.hasPrefix("mmio-test: id=53574c54"))
        #expect(second.text == "Hello from 64-bit long mode\n")
    }

    @Test("invalid configurations are refused with the step and a reason")
    func invalidConfigurations() throws {
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let cases: [(MachineConfiguration, BuildStep, String)] = [
            (MachineConfiguration(kernelPath: kernel, memorySize: 0, console: .none), .validateConfiguration, "too small"),
            (MachineConfiguration(kernelPath: kernel, vcpuCount: 0, console: .none), .validateConfiguration, "vCPUs"),
            (MachineConfiguration(kernelPath: "", console: .none), .validateConfiguration, "no kernel"),
            (MachineConfiguration(kernelPath: "/nonexistent", console: .none), .loadKernel, "No such file"),
            (MachineConfiguration(kernelPath: kernel, console: .none, initrdPath: "/nonexistent"), .writeBootStructures, "initrd"),
            (MachineConfiguration(kernelPath: kernel, console: .none, commandLine: String(repeating: "x", count: 70_000)),
             .writeBootStructures, "command line"),
        ]
        for (configuration, step, words) in cases {
            do {
                _ = try Machine(configuration)
                Issue.record("accepted: \(configuration.kernelPath)")
            } catch {
                #expect(error.step == step)
                #expect("\(error)".contains(words), "\(error)")
                #expect(!"\(error)".contains("\n"))
            }
        }
    }

    @Test("devices may not overlap on a bus")
    func overlappingDevices() throws {
        var bus = Bus()
        try bus.register(MMIOTestDevice(), base: 0x1000, length: 0x100, name: "first")
        #expect(throws: BusError.overlap(name: "second", base: 0x10F0, length: 0x100, existing: "first")) {
            try bus.register(MMIOTestDevice(), base: 0x10F0, length: 0x100, name: "second")
        }
    }

    /// Polls `condition` every millisecond for up to five seconds.
    func waitUntil(_ condition: () throws -> Bool) async throws {
        for _ in 0..<5000 {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(1))
        }
        Issue.record("condition not met within 5 s")
    }
}
