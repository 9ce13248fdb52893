import Glibc
import Testing

/// `swiftlet boot` with its standard input and output a pseudo-terminal the test opens itself:
/// guest output on the terminal, typed input to the guest, the `Ctrl-A x` escape, signals, and
/// the terminal's mode put back exactly as it was on every way out.
///
/// Each test sets a recognisable cooked mode first, so "restored" cannot be confused with
/// "left raw" or "reset to the default", and has a deadline: the child is killed and the test
/// fails when it passes.
@Suite("TerminalCLI", .serialized, .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .timeLimit(.minutes(2)))
struct TerminalCLITests {
    static let deadline: Double = 20

    /// A started `swiftlet boot` on a fresh pty, and the mode the pty had before.
    struct Session {
        let terminal: PseudoTerminal
        let program: SpawnedProgram
        let before: termios

        /// Ends within the deadline with `status` and the terminal's mode as it was before.
        func expectEnd(
            status expected: Int32, within seconds: Double = TerminalCLITests.deadline,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let status = try program.wait(within: seconds)
            #expect(status == expected, "stderr: \(program.stderr)", sourceLocation: sourceLocation)
            let after = try terminal.mode()
            #expect(sameMode(after, before), "the terminal's mode was not restored", sourceLocation: sourceLocation)
        }

        /// Reads the terminal until `text` has appeared (or the deadline passes); returns all read.
        func read(until text: String, seconds: Double = TerminalCLITests.deadline) -> String {
            let wanted = Array(text.utf8)
            let bytes = terminal.read(for: seconds) { received in
                received.count >= wanted.count
                    && (0...(received.count - wanted.count)).contains { start in
                        received[start..<(start + wanted.count)].elementsEqual(wanted)
                    }
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    static func boot(_ arguments: [String], through program: String = CLITests.binary, prefix: [String] = []) throws -> Session {
        guard access(CLITests.binary, X_OK) == 0 else {
            throw TestFailure("\(CLITests.binary) is missing: run `swift build` first")
        }
        let terminal = try PseudoTerminal()
        let before = try terminal.setRecognisableCookedMode()
        var raw = before
        cfmakeraw(&raw)
        #expect(!sameMode(raw, before), "the starting mode must differ from raw mode")
        let spawned = try SpawnedProgram(
            program, prefix + ["boot"] + arguments, stdinPath: terminal.slavePath, newSession: true)
        return Session(terminal: terminal, program: spawned, before: before)
    }

    static func echoGuest() throws -> [String] {
        ["--kernel", try TestSupport.guest("realmode-echo.bin"), "--format", "flat-real-mode", "--timeout", "\(deadline)"]
    }

    @Test("guest output appears on the terminal, unprocessed (raw mode), and a reset restores the mode")
    func guestOutput() throws {
        let session = try Self.boot(["--kernel", try TestSupport.guest("longmode-hello.elf"), "--timeout", "\(Self.deadline)"])
        let output = session.read(until: "long mode\n")
        // In the cooked mode ONLCR would have turned the newline into CR LF.
        #expect(output == "Hello from 64-bit long mode\n")
        try session.expectEnd(status: 0)
        #expect(session.program.stderr == "")
    }

    @Test("typed bytes reach an echo guest and come back")
    func typedInputEchoes() throws {
        let session = try Self.boot(try Self.echoGuest())
        #expect(session.read(until: "echo ready\n").hasSuffix("echo ready\n"))
        try session.terminal.type(Array("swiftlet\r".utf8))
        // Raw mode: no local echo and no CR to LF translation, only the guest's echo.
        #expect(session.read(until: "swiftlet\r") == "swiftlet\r")
        try session.terminal.type([UInt8(ascii: "q")])
        try session.expectEnd(status: 0)
    }

    @Test("Ctrl-A x stops the VM with exit status 0")
    func escapeStops() throws {
        let session = try Self.boot(try Self.echoGuest())
        #expect(session.read(until: "echo ready\n").hasSuffix("echo ready\n"))
        let typed = Subprocess.monotonicNow()
        try session.terminal.type([0x01, 0x78])
        try session.expectEnd(status: 0, within: 5)
        #expect(Subprocess.monotonicNow() - typed < 2)
    }

    @Test("SIGTERM to swiftlet gives exit status 143 and restores the mode")
    func sigterm() throws {
        let session = try Self.boot(try Self.echoGuest())
        #expect(session.read(until: "echo ready\n").hasSuffix("echo ready\n"))
        kill(session.program.pid, SIGTERM)
        try session.expectEnd(status: 143, within: 5)
    }

    @Test("SIGINT (not typed: raw mode sends Ctrl-C to the guest) gives exit status 130")
    func sigint() throws {
        let session = try Self.boot(try Self.echoGuest())
        #expect(session.read(until: "echo ready\n").hasSuffix("echo ready\n"))
        // Ctrl-C goes to the guest in raw mode: it is echoed and nothing stops.
        try session.terminal.type([0x03])
        #expect(session.read(until: "\u{03}") == "\u{03}")
        kill(session.program.pid, SIGINT)
        try session.expectEnd(status: 130, within: 5)
    }

    @Test("a guest panic ends with exit status 8 and restores the mode")
    func guestPanic() throws {
        let session = try Self.boot(["--kernel", try TestSupport.guest("panic-message.elf"), "--timeout", "\(Self.deadline)"])
        #expect(session.read(until: "panic\n").hasPrefix("Kernel panic - not syncing"))
        try session.expectEnd(status: 8)
        #expect(session.program.stderr == "swiftlet: guest panicked (reported on vCPU 0)\n")
    }

    @Test("a triple fault ends with exit status 3 and restores the mode")
    func tripleFault() throws {
        let session = try Self.boot(["--kernel", try TestSupport.guest("triple-fault.elf"), "--timeout", "\(Self.deadline)"])
        try session.expectEnd(status: 3)
    }

    @Test("--timeout ends with exit status 124 and restores the mode")
    func timeout() throws {
        let session = try Self.boot(
            ["--kernel", try TestSupport.guest("realmode-spin.bin"), "--format", "flat-real-mode", "--timeout", "0.5"])
        try session.expectEnd(status: 124, within: 10)
        #expect(session.program.stderr == "swiftlet: stopped: deadline reached\n")
    }

    /// Starting fails after raw mode was entered: with a stack limit of 1 TiB, glibc gives every
    /// thread created without an explicit stack size a 1 TiB stack, which the kernel refuses, so
    /// the event-loop thread (created after the terminal went raw; the signal-stopper and
    /// console-writer threads ask for small stacks and start) cannot be created.
    @Test(
        "a start that fails after raw mode was entered exits 1 and restores the mode",
        .enabled(if: access("/usr/bin/prlimit", X_OK) == 0, "needs prlimit (util-linux)"))
    func failureAfterRawMode() throws {
        let session = try Self.boot(
            ["--kernel", try TestSupport.guest("longmode-hello.elf"), "--timeout", "\(Self.deadline)"],
            through: "/usr/bin/prlimit", prefix: ["--stack=1099511627776", "--", CLITests.binary])
        try session.expectEnd(status: 1)
        #expect(session.program.stderr.hasPrefix("swiftlet: cannot start the VMM threads: pthread_create"))
    }

    @Test("Ctrl-A x stops a guest flooding a terminal nobody reads, within a second or two, and reports what was dropped")
    func escapeWithStalledOutput() throws {
        let session = try Self.boot(["--kernel", try TestSupport.guest("serial-flood.elf"), "--timeout", "\(Self.deadline)"])
        // Read a little to know the guest runs, then stop reading: the pty's buffer fills.
        #expect(session.read(until: "abcdefghijklmnopqrstuvwxyz").contains("abcdefghijklmnopqrstuvwxyz"))
        // This sleep is part of what is tested, not a stand-in for an event: the pty buffer and
        // the 256 KiB ring fill, then output counts as stalled (nothing outside the process
        // shows when), so the escape must work against stalled output.
        usleep(4_000_000)
        let typed = Subprocess.monotonicNow()
        try session.terminal.type([0x01, 0x78])
        try session.expectEnd(status: 0, within: 5)
        #expect(Subprocess.monotonicNow() - typed < 2)
        #expect(session.program.stderr.contains("bytes of guest output dropped (output stalled)"))
    }

    @Test("SIGTERM ends a guest flooding a terminal nobody reads with exit status 143, within a second or two")
    func sigtermWithStalledOutput() throws {
        let session = try Self.boot(["--kernel", try TestSupport.guest("serial-flood.elf"), "--timeout", "\(Self.deadline)"])
        #expect(session.read(until: "abcdefghijklmnopqrstuvwxyz").contains("abcdefghijklmnopqrstuvwxyz"))
        // This sleep is the scenario, not a stand-in for an event: a terminal nobody reads for
        // a while, so the pty buffer fills and the console writer is blocked when SIGTERM comes.
        usleep(1_500_000)
        let signalled = Subprocess.monotonicNow()
        kill(session.program.pid, SIGTERM)
        try session.expectEnd(status: 143, within: 5)
        #expect(Subprocess.monotonicNow() - signalled < 2)
    }
}
