import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletMemory

/// A fresh directory in /tmp, removed (with what is in it) when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/swiftlet-snapshot-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TestFailure("mkdtemp failed: errno \(errno)")
        }
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { _ = system("rm -rf '\(path)'") }
}

/// Snapshot files: the binary payload encoding and the state file's header checks.
@Suite("Snapshot format")
struct SnapshotFormatTests {
    struct Sample: Codable, Equatable {
        var name: String
        var count: Int
        var negative: Int32
        var flag: Bool
        var bytes: [UInt8]
        var empty: [Inner]
        var inner: [Inner]
        var missing: UInt16?
        var present: UInt16?
        var ratio: Double
    }
    struct Inner: Codable, Equatable {
        var a: UInt64
        var b: [UInt8]?
    }

    static let sample = Sample(
        name: "vCPU ü", count: -5, negative: Int32.min, flag: true, bytes: [0, 1, 255], empty: [],
        inner: [Inner(a: UInt64.max, b: nil), Inner(a: 3, b: [])], missing: nil, present: 9, ratio: 0.25)

    @Test("a value survives encoding and decoding, optionals, empty lists and byte strings included")
    func roundTrip() throws {
        let bytes = try BinaryEncoder.encode(Self.sample)
        #expect(try BinaryDecoder.decode(Sample.self, from: bytes) == Self.sample)
        // Device states too.
        let serial = SerialPort(output: DiscardingSerialOutput(), interruptLine: NoInterruptLine()).saveState()
        #expect(try BinaryDecoder.decode(SerialPort.State.self, from: try BinaryEncoder.encode(serial)) == serial)
    }

    @Test("every truncation of a payload is refused with an error, never a crash")
    func truncatedPayload() throws {
        let bytes = try BinaryEncoder.encode(Self.sample)
        for length in 0..<bytes.count {
            #expect(throws: BinaryDecodingError.self) { try BinaryDecoder.decode(Sample.self, from: Array(bytes[0..<length])) }
        }
    }

    @Test("a value out of range for its field names the field")
    func outOfRange() throws {
        struct Wide: Codable { var value: UInt64 }
        struct Narrow: Codable { var value: UInt8 }
        let error = #expect(throws: BinaryDecodingError.self) {
            try BinaryDecoder.decode(Narrow.self, from: try BinaryEncoder.encode(Wide(value: 300)))
        }
        #expect(error?.description == "value: is 300, out of range for UInt8")
    }

    @Test("the state file header: CRC-32, magic, version, length")
    func header() throws {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        let payload: [UInt8] = Array(0..<100)
        let file = SnapshotFile.encode(payload: payload)
        #expect(try SnapshotFile.payload(of: file, path: "s") == payload)
        var corrupted = file
        corrupted[SnapshotFile.headerSize + 50] ^= 0x10
        #expect(throws: SnapshotError.self) { try SnapshotFile.payload(of: corrupted, path: "s") }
        var version = file
        version[8] = 9
        let wrong = #expect(throws: SnapshotError.self) { try SnapshotFile.payload(of: version, path: "s") }
        #expect(wrong?.description == "snapshot state file s has format version 9; this Swiftlet reads version 2")
        let short = #expect(throws: SnapshotError.self) { try SnapshotFile.payload(of: Array(file[0..<60]), path: "s") }
        #expect(short?.description == "snapshot state file s is truncated: 60 bytes, expected 124")
        var magic = file
        magic[0] = UInt8(ascii: "X")
        #expect(throws: SnapshotError.self) { try SnapshotFile.payload(of: magic, path: "s") }
    }
}

/// An interrupt line nobody watches.
struct NoInterruptLine: InterruptLine {
    func setLevel(_ high: Bool) {}
}

/// Snapshots of running tiny guests, restored in this process and through the CLI.
@Suite("KVM: snapshots", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(3)))
struct SnapshotKVMTests {
    static let counterAddress = GuestAddress(0x30_0000)

    /// Boots the counter guest (with `disks`), snapshots it into `directory` at its boot-timer
    /// write (count 20) and stops it; returns what it printed.
    static func snapshotCounter(into directory: String, disks: [DiskConfiguration] = []) throws -> String {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("snapshot-counter.elf"), memorySize: 64 << 20, console: .output(console),
                disks: disks, bootTimer: true))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        #expect(machine.pauseWhenReady())
        try machine.snapshot(to: directory)
        #expect(machine.isPaused)
        machine.stop()
        _ = machine.wait()
        return console.text
    }

    static func fileBytes(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open \(path): errno \(errno)") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard read == count else { throw TestFailure("short read of \(path)") }
        return bytes
    }

    @Test("a counting guest restored twice at once from one snapshot goes on from its count both times")
    func counterContinues() throws {
        let directory = try TemporaryDirectory()
        let before = try Self.snapshotCounter(into: directory.path)
        #expect(before.hasPrefix("snapshot-counter: start\ncount 1\n"))
        #expect(before.contains("count 20\n"))
        let memoryFile = directory.path + "/memory"
        let page = try Self.fileBytes(memoryFile, at: Int(Self.counterAddress.rawValue), count: 4096)
        #expect(page.withUnsafeBytes { $0.load(as: UInt64.self) } == 20, "the memory file holds the count at the snapshot")

        let consoles = [BufferSerialOutput(), BufferSerialOutput()]
        let machines = try consoles.map { console in
            try Machine(restoringFrom: directory.path, console: .output(console))
        }
        for machine in machines { machine.setDeadline(after: TestSupport.guestDeadline) }
        for machine in machines { try machine.start() }
        let exits = machines.map { $0.wait() }
        let expected = "ready\n" + (21...40).map { "count \($0)\n" }.joined() + "snapshot-counter: done at 40\n"
        for (index, machine) in machines.enumerated() {
            #expect(exits[index] == .commandExited(status: 40))
            #expect(consoles[index].text == expected, "restored guest \(index) went on from 20")
            #expect(try machine.memory.read(UInt64.self, at: Self.counterAddress) == 40)
        }
        // Copy on write: the guests' writes never reached the snapshot.
        #expect(try Self.fileBytes(memoryFile, at: Int(Self.counterAddress.rawValue), count: 4096) == page)
    }

    @Test("a virtio-blk guest snapshotted between requests finishes its checksums after restore")
    func virtioBlockBetweenRequests() throws {
        let image = try VirtioBlockKVMTests.makeImage()
        let before = try VirtioBlockKVMTests.fileBytes(image.path)
        let directory = try TemporaryDirectory()
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-blk-test.elf"), memorySize: 128 << 20, console: .output(console),
                disks: [DiskConfiguration(path: image.path, id: "swiftlet-test")]))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        // After the first request (the read) completed, while the guest checksums what it read.
        try TestSupport.waitUntil("the guest's first read", within: TestSupport.guestDeadline) {
            console.text.contains("isr=1")
        }
        machine.pause()
        try machine.snapshot(to: directory.path)
        machine.stop()
        _ = machine.wait()
        let printed = console.text

        let restoredConsole = BufferSerialOutput()
        let restored = try Machine(restoringFrom: directory.path, console: .output(restoredConsole))
        restored.setDeadline(after: TestSupport.guestDeadline)
        try restored.start()
        #expect(restored.wait() == .reset)
        let output = (printed + restoredConsole.text).split(separator: "\n").map(String.init)
        #expect(output == VirtioBlockKVMTests.expectedOutput(before, readOnly: false, id: "swiftlet-test"))
        #expect(!restoredConsole.text.contains("virtio-blk-test: magic"), "the restored guest did not start again")
    }

    @Test("a restore that fails after any of its steps leaves nothing behind")
    func restoreRollsBack() throws {
        let directory = try TemporaryDirectory()
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 20))
        _ = try Self.snapshotCounter(into: directory.path, disks: [DiskConfiguration(path: disk.path)])
        let steps: [BuildStep] = [
            .readSnapshot, .validateConfiguration, .openKVM, .createVM, .configureVM, .allocateMemory, .registerMemory,
            .createVCPUs, .createDevices, .restoreState,
        ]
        let attempts = MachineBuilderTests.attempts
        for step in steps {
            let before = try MachineBuilderTests.Holdings(paths: [disk.path, directory.path + "/memory"])
            for _ in 0..<attempts {
                do {
                    _ = try MachineBuilder.restore(
                        directory: directory.path, console: .none, diskPaths: [], taps: [], failingAfter: step)
                    Issue.record("the restore did not fail after \(step)")
                } catch {
                    #expect(error.step == step, "\(error)")
                }
            }
            let after = try MachineBuilderTests.Holdings(paths: [disk.path, directory.path + "/memory"])
            for kind in MachineBuilderTests.Holdings.kinds {
                let grown = (after.descriptors[kind] ?? 0) - (before.descriptors[kind] ?? 0)
                #expect(grown < attempts, "after \(step): \(kind) grew by \(grown)")
            }
            #expect(after.onPaths - before.onPaths < attempts, "after \(step): the disk or memory file stayed open")
        }
    }

    static var binary: String {
        get throws {
            let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"
            guard access(binary, X_OK) == 0 else { throw TestFailure("\(binary) is missing: run `swift build` first") }
            return binary
        }
    }

    @Test("swiftlet boot --snapshot-when-ready, then swiftlet restore, goes on from the count")
    func commandLine() throws {
        let directory = try TemporaryDirectory()
        let snapshot = directory.path + "/snap"
        let boot = try Subprocess.run(
            try Self.binary,
            [
                "boot", "--kernel", try TestSupport.guest("snapshot-counter.elf"), "--snapshot-when-ready", snapshot, "--timeout",
                "20",
            ],
            timeout: 60)
        #expect(boot.status == 0)
        #expect(boot.stdout.hasSuffix("count 20\n"))
        #expect(boot.stderr == "swiftlet: snapshot written to \(snapshot)\n")
        let restore = try Subprocess.run(try Self.binary, ["restore", snapshot, "--timeout", "20"], timeout: 60)
        #expect(restore.status == 40)
        #expect(restore.stdout.hasPrefix("ready\ncount 21\n"))
        #expect(restore.stdout.hasSuffix("snapshot-counter: done at 40\n"))
    }

    /// Waits until the file at `path` contains `text` (or `seconds` pass); returns its contents.
    static func waitForText(_ text: String, in path: String, within seconds: Double) throws -> String {
        let deadline = Subprocess.monotonicNow() + seconds
        var contents = try Subprocess.contents(of: path)
        while !contents.contains(text) && Subprocess.monotonicNow() < deadline {
            usleep(20_000)
            contents = try Subprocess.contents(of: path)
        }
        return contents
    }

    @Test("swiftlet boot --snapshot-on-signal: SIGUSR1 snapshots the running guest and stops; the restored guest echoes")
    func snapshotOnSignal() throws {
        let directory = try TemporaryDirectory()
        let snapshot = directory.path + "/snap"
        let output = directory.path + "/boot.out"
        guard creat(output, 0o644) >= 0 else { throw TestFailure("cannot create \(output)") }
        let echo = try TestSupport.guest("realmode-echo.bin")
        let boot = try SpawnedProgram(
            try Self.binary,
            ["boot", "--kernel", echo, "--format", "flat-real-mode", "--snapshot-on-signal", snapshot, "--timeout", "30"],
            stdinPath: "/dev/null", stdoutPath: output, newSession: true)
        // The guest waits for input once it has printed its banner: snapshot it then.
        #expect(try Self.waitForText("echo ready\n", in: output, within: 20).contains("echo ready\n"))
        kill(boot.pid, SIGUSR1)
        #expect(try boot.wait(within: 20) == 0)
        #expect(boot.stderr == "swiftlet: snapshot written to \(snapshot)\n")

        // Restored with its input on a FIFO: it echoes what is written and ends at 'q'.
        let fifo = directory.path + "/input"
        guard mkfifo(fifo, 0o600) == 0 else { throw TestFailure("mkfifo failed: errno \(errno)") }
        let restoredOutput = directory.path + "/restore.out"
        guard creat(restoredOutput, 0o644) >= 0 else { throw TestFailure("cannot create \(restoredOutput)") }
        let restore = try SpawnedProgram(
            try Self.binary, ["restore", snapshot, "--timeout", "30"], stdinPath: fifo, stdoutPath: restoredOutput,
            newSession: true)
        let writer = open(fifo, O_WRONLY)
        guard writer >= 0 else { throw TestFailure("open \(fifo) failed: errno \(errno)") }
        defer { close(writer) }
        let typed: [UInt8] = Array("restored-echo q".utf8)
        #expect(typed.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) } == typed.count)
        #expect(try restore.wait(within: 20) == 0)
        let echoed = try Subprocess.contents(of: restoredOutput)
        #expect(echoed.hasPrefix("restored-echo"), "restored output: \(echoed.debugDescription)")
        #expect(!echoed.contains("echo ready"), "the restored guest started again: \(echoed.debugDescription)")
    }

    @Test("--snapshot-on-signal with --continue-after-snapshot: each SIGUSR1 writes the snapshot and the guest runs on")
    func snapshotOnSignalContinues() throws {
        let directory = try TemporaryDirectory()
        let snapshot = directory.path + "/snap"
        let output = directory.path + "/boot.out"
        guard creat(output, 0o644) >= 0 else { throw TestFailure("cannot create \(output)") }
        let boot = try SpawnedProgram(
            try Self.binary,
            [
                "boot", "--kernel", try TestSupport.guest("realmode-echo.bin"), "--format", "flat-real-mode",
                "--snapshot-on-signal", snapshot, "--continue-after-snapshot", "--timeout", "30",
            ],
            stdinPath: "/dev/null", stdoutPath: output, newSession: true)
        #expect(try Self.waitForText("echo ready\n", in: output, within: 20).contains("echo ready\n"))
        let line = "swiftlet: snapshot written to \(snapshot)\n"
        for count in 1...2 {
            kill(boot.pid, SIGUSR1)
            let deadline = Subprocess.monotonicNow() + 20
            while boot.stderr.split(separator: "\n").count < count && Subprocess.monotonicNow() < deadline {
                usleep(20_000)
            }
        }
        #expect(boot.stderr == line + line)
        #expect(access(snapshot + "/state", R_OK) == 0)
        // Still running: SIGTERM stops it as usual.
        kill(boot.pid, SIGTERM)
        #expect(try boot.wait(within: 20) == 128 + SIGTERM)
    }

    /// Copies the snapshot `source` to a new directory in `parent` and applies `damage` to it.
    static func damaged(_ source: String, in parent: String, _ name: String, _ command: String) throws -> String {
        let target = parent + "/" + name
        guard system("cp -r '\(source)' '\(target)' && cd '\(target)' && \(command)") == 0 else {
            throw TestFailure("cannot prepare \(name)")
        }
        return target
    }

    @Test("a damaged snapshot or a disk of another size is one line on stderr and exit status 1")
    func errors() throws {
        let directory = try TemporaryDirectory()
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 20))
        let bigger = try TemporaryFile(contents: [UInt8](repeating: 0, count: 2 << 20))
        let snapshot = directory.path + "/snap"
        _ = try Self.snapshotCounter(into: snapshot, disks: [DiskConfiguration(path: disk.path)])
        let cases: [(String, String, [String], String)] = [
            ("truncated", "truncate -s 100 state", [], "is truncated"),
            ("corrupted", "printf '\\132' | dd of=state bs=1 seek=200 conv=notrunc status=none", [], "is corrupted: checksum"),
            ("no-memory", "rm memory", [], "memory: open failed"),
            ("version", "printf '\\007' | dd of=state bs=1 seek=8 conv=notrunc status=none", [], "has format version 7"),
            ("other-disk", "true", ["--disk", bigger.path], "has 2097152 bytes, but had 1048576"),
        ]
        for (name, damage, extra, message) in cases {
            let target = try Self.damaged(snapshot, in: directory.path, name, damage)
            let result = try Subprocess.run(try Self.binary, ["restore", target] + extra + ["--timeout", "20"], timeout: 60)
            #expect(result.status == 1, "\(name)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(name): \(result.stderr)")
            #expect(result.stderr.contains(message), "\(name): \(result.stderr)")
        }
        // The undamaged snapshot, with the same disk given explicitly, restores.
        let good = try Subprocess.run(
            try Self.binary, ["restore", snapshot, "--disk", disk.path, "--timeout", "20"], timeout: 60)
        #expect(good.status == 40)
    }
}
