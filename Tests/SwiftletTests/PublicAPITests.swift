import Glibc
import Swiftlet
import SwiftletBundle
import Synchronization
import Testing

/// A flag one task sets and another reads.
private final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// The embedding API, used exactly as a Swift program would: plain `import Swiftlet`, no
/// internal access.
@Suite("Public API", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(2)))
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
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
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
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
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
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        // Stop it while it runs: once its counter moves, the guest is executing.
        try await waitUntil("the guest's counter moves") {
            try machine.memory.read(UInt32.self, at: Self.counterAddress) > 0
        }
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
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        func counter() throws -> UInt32 { try machine.memory.read(UInt32.self, at: Self.counterAddress) }

        try await waitUntil("the guest's counter moves") { try counter() > 0 }
        machine.pause()
        #expect(machine.isPaused)
        let paused = try counter()
        // This sleep is the measurement: a counter that stays put for 200 ms, read again and
        // again, shows that no vCPU runs. (A running guest moves it millions of times a second.)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try counter() == paused, "the guest ran while paused")

        machine.resume()
        #expect(!machine.isPaused)
        try await waitUntil("the guest's counter moves again after resume") { try counter() > paused }
        machine.stop()
        #expect(await machine.waitUntilExit() == .stopped(.requested))
    }

    @Test("a machine starts once; wait() called before start() waits for the start and the end")
    func lifecycle() async throws {
        let machine = try Machine(
            MachineConfiguration(kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .none))
        machine.setDeadline(after: TestSupport.guestDeadline)
        let returned = Flag()
        async let early = { () async -> GuestExit in
            let exit = await machine.waitUntilExit()
            returned.set()
            return exit
        }()
        // This sleep is the measurement: a wait() begun before start() must still be waiting
        // 50 ms later, with nothing started.
        try await Task.sleep(for: .milliseconds(50))
        #expect(!returned.isSet, "wait() returned before start()")
        try machine.start()
        #expect(await early == .reset)
        do {
            try machine.start()
            Issue.record("a second start() was accepted")
        } catch {
            #expect(error.step == .startThreads)
            #expect("\(error)" == "cannot start the VMM threads: the machine was already started (a machine runs once)")
        }
    }

    /// Weak references to a machine and to parts its event loop's handlers hold: a reference
    /// cycle left in place (through handlers never dropped) would keep them alive.
    final class Released {
        weak var machine: Machine?
        weak var vm: AnyObject?
        weak var memory: GuestMemory?
        weak var serial: SerialPort?

        init(_ machine: Machine) {
            self.machine = machine
            vm = machine.vm
            memory = machine.memory
            serial = machine.serial
        }

        func expectReleased(sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(machine == nil, "the machine outlived its last reference", sourceLocation: sourceLocation)
            #expect(vm == nil, "the VM outlived its machine", sourceLocation: sourceLocation)
            #expect(memory == nil, "guest memory outlived its machine", sourceLocation: sourceLocation)
            #expect(serial == nil, "the UART outlived its machine", sourceLocation: sourceLocation)
        }
    }

    @Test("a machine that is never started goes away cleanly: it and its parts are released")
    func neverStarted() throws {
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let configurations = [
            MachineConfiguration(kernelPath: kernel, console: .none),
            MachineConfiguration(kernelPath: kernel, console: .stream(try ConsoleStream())),
            MachineConfiguration(kernelPath: kernel, console: .none, rng: true),
        ]
        for configuration in configurations {
            let released = Released(try Machine(configuration))
            released.expectReleased()
        }
    }

    @Test("a machine that ran goes away cleanly: it and its parts are released")
    func ranAndReleased() throws {
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let configurations = [
            MachineConfiguration(kernelPath: kernel, console: .output(BufferSerialOutput())),
            MachineConfiguration(kernelPath: kernel, console: .stream(try ConsoleStream()), rng: true),
        ]
        for configuration in configurations {
            let released = try { () throws -> Released in
                let machine = try Machine(configuration)
                machine.setDeadline(after: TestSupport.guestDeadline)
                try machine.start()
                #expect(machine.wait() == .reset)
                return Released(machine)
            }()
            released.expectReleased()
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
        a.setDeadline(after: TestSupport.guestDeadline)
        b.setDeadline(after: TestSupport.guestDeadline)
        try a.start()
        try b.start()
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
            (
                MachineConfiguration(kernelPath: kernel, console: .none, initrdPath: "/nonexistent"), .writeBootStructures,
                "initrd"
            ),
            (
                MachineConfiguration(kernelPath: kernel, console: .none, commandLine: String(repeating: "x", count: 70_000)),
                .writeBootStructures, "command line"
            ),
            (
                MachineConfiguration(
                    kernelPath: kernel, console: .none,
                    disks: [
                        DiskConfiguration(
                            path: kernel,
                            rateLimit: RateLimit(bandwidth: TokenBucketLimit(size: 1 << 20, refillTimeMilliseconds: 0)))
                    ]),
                .validateConfiguration, "bw: the refill time must be at least 1 ms"
            ),
            (
                MachineConfiguration(
                    kernelPath: kernel, console: .none,
                    networks: [
                        NetworkConfiguration(
                            tap: "tap0",
                            transmitRateLimit: RateLimit(operations: TokenBucketLimit(size: 0, refillTimeMilliseconds: 5)))
                    ]),
                .validateConfiguration, "tx-ops: the bucket size must be at least 1"
            ),
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

    @Test("a disk's rate limit and the privilege drop are plain configuration values")
    func rateLimitAndPrivilegeDropConfiguration() throws {
        let limit = RateLimit(
            bandwidth: TokenBucketLimit(size: 4 << 20, refillTimeMilliseconds: 1000, oneTimeBurst: 16 << 20),
            operations: TokenBucketLimit(size: 100, refillTimeMilliseconds: 1000))
        var configuration = MachineConfiguration(
            kernelPath: try TestSupport.guest("longmode-hello.elf"), console: .none,
            disks: [DiskConfiguration(path: "/nonexistent.img", rateLimit: limit)])
        configuration.privilegeDrop = PrivilegeDrop(userID: 65534, groupID: 65534)
        try configuration.validate()
        configuration.privilegeDrop = PrivilegeDrop(userID: 65534, groupID: 65534, rootDirectory: "relative")
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        // A limiter is usable on its own, with any clock.
        var limiter = RateLimiter(limit)
        #expect(limiter.consume(bytes: 20 << 20) == .allowed)
        guard case .throttled(let nanoseconds) = limiter.consume(bytes: 1 << 20) else {
            Issue.record("a spent bucket allowed more")
            return
        }
        #expect(nanoseconds > 0 && nanoseconds <= 1_000_000_000)
    }

    @Test("devices may not overlap on a bus")
    func overlappingDevices() throws {
        var bus = Bus()
        try bus.register(MMIOTestDevice(), base: 0x1000, length: 0x100, name: "first")
        #expect(throws: BusError.overlap(name: "second", base: 0x10F0, length: 0x100, existing: "first")) {
            try bus.register(MMIOTestDevice(), base: 0x10F0, length: 0x100, name: "second")
        }
    }

    /// Waits until `condition` holds, or throws after `seconds`. It checks every millisecond:
    /// what it watches (a word of guest memory written by a running guest) has no event to wait on.
    func waitUntil(_ what: String, within seconds: Double = 10, _ condition: () throws -> Bool) async throws {
        let deadline = Subprocess.monotonicNow() + seconds
        while try !condition() {
            guard Subprocess.monotonicNow() < deadline else { throw TestFailure("\(what): not within \(seconds) s") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}

/// What a Swift program does to run an OCI bundle (Docs/API.md), short of booting it: parse,
/// find the kernel, make the disks, get the machine's configuration.
@Suite("Public API: OCI bundles")
struct BundleAPITests {
    @Test("parse a bundle, build its root image and spec disk, and get a valid MachineConfiguration")
    func parseAndConvert() throws {
        let bundle = try TemporaryBundle(config: bundleConfig(root: #"{"path": "rootfs", "readonly": false}"#))
        try bundle.write("hello", to: "rootfs/work/file")
        let cache = try TemporaryBundle(config: nil, dirs: [])
        let parsed = try ContainerBundle(at: bundle.path, arguments: ["cat", "/work/file"])
        let kernel = GuestKernel(kernelPath: "/boot/vmlinux", initrdPath: "/boot/initramfs.cpio")
        let run = try parsed.prepare(
            kernel: kernel, base: MachineConfiguration(kernelPath: ""), name: "api-test", cacheDirectory: cache.path + "/c")
        defer { run.removeFiles() }
        try run.configuration.validate()
        #expect(run.configuration.disks.count == 2)
        // A writable root boots from a per-run copy; the cached image stays as built.
        #expect(run.configuration.disks[0].path.hasPrefix(cache.path + "/c/run/api-test-"))
        #expect(!run.configuration.disks[0].readOnly)
        #expect(run.files.count == 2)
        for file in run.files { #expect(access(file, R_OK) == 0) }
        var info = stat()
        #expect(stat(run.configuration.disks[0].path, &info) == 0 && info.st_size >= 32 << 20)
        // The same tree again: the cached image is used, not rebuilt.
        let images = try Subprocess.run("/bin/ls", [cache.path + "/c/rootfs"]).stdout
        #expect(images.hasSuffix(".ext4\n") && images.filter { $0 == "\n" }.count == 1)
        let again = try parsed.prepare(
            kernel: kernel, base: MachineConfiguration(kernelPath: ""), cacheDirectory: cache.path + "/c")
        again.removeFiles()
        #expect(try Subprocess.run("/bin/ls", [cache.path + "/c/rootfs"]).stdout == images)
        run.removeFiles()
        for file in run.files { #expect(access(file, F_OK) != 0) }
    }
}
