import Glibc
import Testing

/// The `swiftlet` executable as a user runs it: exit statuses, one-line errors, guest output.
@Suite("CLI", .serialized)
struct CLITests {
    /// The debug build of the CLI, next to the test bundle.
    static let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"

    static func swiftlet(_ arguments: String...) throws -> Subprocess.Result {
        guard access(binary, X_OK) == 0 else { throw TestFailure("\(binary) is missing: run `swift build` first") }
        return try Subprocess.run(binary, arguments, timeout: 60)
    }

    @Test("--version prints the version")
    func version() throws {
        let result = try Self.swiftlet("--version")
        #expect(result.status == 0)
        #expect(result.stdout == "0.1.0\n")
    }

    @Test("a missing kernel is a one-line error and exit status 1")
    func missingKernel() throws {
        let result = try Self.swiftlet("boot", "--kernel", "/nonexistent")
        #expect(result.status == 1)
        #expect(result.stderr == "swiftlet: cannot load the kernel: cannot read kernel: open /nonexistent failed: No such file or directory (errno 2)\n")
    }

    @Test("a file that is not a kernel is refused", arguments: ["/etc/hostname", "/dev/null", "/tmp"])
    func notAKernel(path: String) throws {
        let result = try Self.swiftlet("boot", "--kernel", path)
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("swiftlet: cannot load the kernel: "))
        #expect(result.stderr.filter { $0 == "\n" }.count == 1)
    }

    @Test("bad flags are usage errors", arguments: [
        ["--memory", "12Q"], ["--format", "pe"], ["--timeout", "-1"], ["--cpuid-mask", "sse9"], ["--disk", "path=x,colour=red"],
        ["--net", "tap=a/b"], ["--net", "tap=t,mac=01:00:00:00:00:01"], ["--net", "t0", "--net", "t0"],
    ])
    func badFlags(flags: [String]) throws {
        let result = try Subprocess.run(Self.binary, ["boot", "--kernel", "/nonexistent"] + flags)
        #expect(result.status == 64)
        #expect(result.stderr.contains("Error:"))
    }

    @Test("zero vCPUs or too little memory are refused before anything runs", arguments: [
        ["--cpus", "0"], ["--memory", "4K"],
    ])
    func invalidMachine(flags: [String]) throws {
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let result = try Subprocess.run(Self.binary, ["boot", "--kernel", kernel] + flags)
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("swiftlet: cannot validate the configuration: "))
    }

    @Test("a tap that cannot be opened is a one-line error and exit status 1 (run inside a namespace of the test's own)",
          .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .enabled(if: NetworkTestSupport.isRoot, NetworkTestSupport.notRootReason))
    func unopenableTap() throws {
        guard access(Self.binary, X_OK) == 0 else { throw TestFailure("\(Self.binary) is missing: run `swift build` first") }
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let result = try Subprocess.run(
            NetworkTestSupport.ip,
            ["netns", "exec", namespace.name, Self.binary, "boot", "--kernel", try TestSupport.guest("longmode-hello.elf"), "--net", "tap=lo"])
        #expect(result.status == 1)
        #expect(result.stderr == "swiftlet: cannot create the devices: network interface 0: cannot open tap 'lo': TUNSETIFF lo failed: Invalid argument (errno 22)\n")
    }

    @Test("a tiny guest's output reaches stdout and its reset exits 0",
          .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func bootTinyGuest() throws {
        let result = try Self.swiftlet("boot", "--kernel", try TestSupport.guest("longmode-hello.elf"), "--timeout", "20")
        #expect(result.status == 0)
        #expect(result.stdout == "Hello from 64-bit long mode\n")
        #expect(result.stderr == "")
    }

    @Test("a triple fault exits 3 and says where", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func tripleFault() throws {
        let result = try Self.swiftlet("boot", "--kernel", try TestSupport.guest("triple-fault.elf"), "--timeout", "20")
        #expect(result.status == 3)
        #expect(result.stderr.hasPrefix("swiftlet: triple fault (KVM_EXIT_SHUTDOWN) on vCPU 0 at RIP 0x"))
    }

    @Test("--timeout stops a spinning guest with exit status 124",
          .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func timeout() throws {
        let result = try Self.swiftlet(
            "boot", "--kernel", try TestSupport.guest("realmode-spin.bin"), "--format", "flat-real-mode", "--timeout", "0.3")
        #expect(result.status == 124)
        #expect(result.stderr == "swiftlet: stopped: deadline reached\n")
    }

    @Test("dump-dtb refuses an unknown architecture")
    func dumpDTBArch() throws {
        let result = try Self.swiftlet("dump-dtb", "--arch", "mips", "/tmp/x.dtb")
        #expect(result.status != 0)
        #expect(result.stderr.filter { $0 == "\n" }.count == 1)
    }
}
