import Glibc
import Swiftlet
import Testing

/// The `swiftlet` executable as a user runs it: exit statuses, one-line errors, guest output.
/// Some tests boot tiny guests through it (on /dev/kvm), hence the time limit.
@Suite("CLI", .serialized, .timeLimit(.minutes(3)))
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
        #expect(result.stdout == "Swiftlet v" + SwiftletVersion.string + "\n")
    }

    @Test("a missing kernel is a one-line error and exit status 1")
    func missingKernel() throws {
        let result = try Self.swiftlet("boot", "--kernel", "/nonexistent")
        #expect(result.status == 1)
        #expect(
            result.stderr
                == "swiftlet: cannot load the kernel: cannot read kernel: open /nonexistent failed: No such file or directory (errno 2)\n"
        )
    }

    @Test("a file that is not a kernel is refused", arguments: ["/etc/hostname", "/dev/null", "/tmp"])
    func notAKernel(path: String) throws {
        let result = try Self.swiftlet("boot", "--kernel", path)
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("swiftlet: cannot load the kernel: "))
        #expect(result.stderr.filter { $0 == "\n" }.count == 1)
        if path == "/dev/null" {
            #expect(
                result.stderr == "swiftlet: cannot load the kernel: kernel /dev/null is a character device, not a regular file\n")
        }
    }

    /// Where a bad host file is given on the command line.
    enum HostFileRole: String, CaseIterable, CustomTestStringConvertible {
        case kernel = "--kernel", initrd = "--initrd", disk = "--disk"
        var testDescription: String { rawValue }
    }

    @Test(
        "a FIFO nobody writes, a socket, a directory, /dev/null or /dev/zero as --kernel, --initrd or --disk is a one-line error at once",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .timeLimit(.minutes(2)), arguments: HostFileRole.allCases)
    func unusableHostFile(role: HostFileRole) throws {
        guard access(Self.binary, X_OK) == 0 else { throw TestFailure("\(Self.binary) is missing: run `swift build` first") }
        let files = try SpecialFiles()
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let cases: [(String, String)] = [
            (files.fifo, "a FIFO"), (files.socket, "a socket"), (files.subdirectory, "a directory"),
            ("/dev/null", "a character device"), ("/dev/zero", "a character device"),
        ]
        for (path, kind) in cases {
            let arguments: [String]
            let expected: String
            switch role {
            case .kernel:
                arguments = ["boot", "--kernel", path]
                expected = "swiftlet: cannot load the kernel: kernel \(path) is \(kind), not a regular file\n"
            case .initrd:
                arguments = ["boot", "--kernel", kernel, "--initrd", path, "--timeout", "20"]
                expected = "swiftlet: cannot write the boot structures: initrd \(path) is \(kind), not a regular file\n"
            case .disk:
                arguments = ["boot", "--kernel", kernel, "--disk", "path=\(path)", "--timeout", "20"]
                expected =
                    "swiftlet: cannot create the devices: disk 0: disk image \(path) is \(kind), not a regular file or a block device\n"
            }
            // A blocking open of the FIFO would hang here until the deadline kills swiftlet (the run throws).
            let start = Subprocess.monotonicNow()
            let result = try Subprocess.run(Self.binary, arguments, timeout: 15)
            #expect(result.status == 1, "\(arguments)")
            #expect(result.stderr == expected)
            #expect(result.stdout.isEmpty)
            #expect(Subprocess.monotonicNow() - start < 10, "\(arguments) took too long")
        }
    }

    @Test(
        "bad flags are usage errors",
        arguments: [
            ["--memory", "12Q"], ["--format", "pe"], ["--timeout", "-1"], ["--cpuid-mask", "sse9"],
            ["--disk", "path=x,colour=red"],
            ["--net", "tap=a/b"], ["--net", "tap=t,mac=01:00:00:00:00:01"], ["--net", "t0", "--net", "t0"],
        ])
    func badFlags(flags: [String]) throws {
        let result = try Subprocess.run(Self.binary, ["boot", "--kernel", "/nonexistent"] + flags)
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("swiftlet: "))
        #expect(result.stderr.hasSuffix("\nUsage: swiftlet boot --kernel <file> [options]\nSee 'swiftlet boot --help'.\n"))
    }

    /// A command line with one bad value (syntax or range), and the error's first line.
    static let badValues: [([String], String)] = [
        (
            ["boot", "--vsock", "cid=2,uds=/tmp/swiftlet-unused.sock"],
            "swiftlet: --vsock: cid 2 is reserved or too large; use 3 to 4294967294"
        ),
        (
            ["boot", "--vsock", "uds=/tmp/swiftlet-unused.sock"],
            "swiftlet: --vsock 'uds=/tmp/swiftlet-unused.sock': missing key 'cid' (cid=N)"
        ),
        (
            ["boot", "--vsock", "cid=-3,uds=/tmp/x"],
            "swiftlet: --vsock 'cid=-3,uds=/tmp/x': key 'cid' is '-3'; use a decimal number from 3"
        ),
        (["boot", "--cpus", "abc"], "swiftlet: --cpus 'abc': not a whole number"),
        (["boot", "--cpus", "0"], "swiftlet: --cpus: 0 vCPUs requested; between 1 and 254 are supported"),
        (["boot", "--cpus", "255"], "swiftlet: --cpus: 255 vCPUs requested; between 1 and 254 are supported"),
        (["boot", "--memory", "0"], "swiftlet: --memory: guest memory of 0 bytes is too small (at least 2 MiB)"),
        (["boot", "--memory", "4K"], "swiftlet: --memory: guest memory of 4096 bytes is too small (at least 2 MiB)"),
        (
            ["boot", "--memory", "1025G"],
            "swiftlet: --memory: guest memory of 1100585369600 bytes is too large (at most 1024 GiB)"
        ),
        (
            ["boot", "--disk", "path=KERNEL,colour=red"],
            "swiftlet: --disk 'path=KERNEL,colour=red': unknown key 'colour'; use path, readonly, id, direct, bw or ops"
        ),
        (
            ["boot", "--disk", "path=KERNEL,readonly=yes"],
            "swiftlet: --disk 'path=KERNEL,readonly=yes': key 'readonly' is 'yes'; use on or off"
        ),
        (
            ["boot", "--disk", "KERNEL,id=123456789012345678901"],
            "swiftlet: --disk: disk id '123456789012345678901' is longer than 20 bytes"
        ),
        (
            ["boot", "--disk", "KERNEL,bw=4M/0"],
            "swiftlet: --disk: disk KERNEL: bw: the refill time must be at least 1 ms"
        ),
        (
            ["boot", "--disk", "KERNEL,ops=lots"],
            "swiftlet: --disk 'KERNEL,ops=lots': key 'ops' is 'lots'; use COUNT/REFILL_MS[/BURST], e.g. 100/1000 (100 per second)"
        ),
        (["dump-dtb", "--cpus", "zz"], "swiftlet: --cpus 'zz': not a whole number"),
        (["dump-dtb", "--cpus", "0"], "swiftlet: --cpus: 0 vCPUs requested; between 1 and 512 are supported on aarch64"),
        (["dump-dtb", "--memory", "0"], "swiftlet: --memory: guest memory of 0 bytes is too small for aarch64 (at least 4 MiB)"),
        (
            ["dump-dtb", "--disk", "path=/x,direct=maybe"],
            "swiftlet: --disk 'path=/x,direct=maybe': key 'direct' is 'maybe'; use on or off"
        ),
        (
            ["dump-dtb", "--arch", "mips"],
            "swiftlet: --arch 'mips': unsupported architecture; device trees are built for aarch64 only"
        ),
    ]

    @Test(
        "every bad value, of boot and of dump-dtb, exits 64 with one 'swiftlet: ' error naming the option, the usage line and the help pointer",
        arguments: badValues)
    func badValueExitStatus(arguments: [String], firstLine: String) throws {
        // A real guest: had validation let the value through, it would boot and exit 0.
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let output = try TemporaryFile(contents: [])
        let command = arguments[0]
        let full =
            command == "boot"
            ? ["boot", "--kernel", kernel] + arguments.dropFirst().map { $0.replacingKernel(with: kernel) }
            : ["dump-dtb", "--arch", "aarch64"] + arguments.dropFirst() + [output.path]
        let result = try Subprocess.run(Self.binary, full)
        let usage =
            command == "boot" ? "swiftlet boot --kernel <file> [options]" : "swiftlet dump-dtb --arch <arch> [options] <OUT>"
        #expect(result.status == 64, "\(full)")
        #expect(result.stdout == "")
        #expect(
            result.stderr == "\(firstLine.replacingKernel(with: kernel))\nUsage: \(usage)\nSee 'swiftlet \(command) --help'.\n")
    }

    @Test("what cannot be built exits 1 with one 'swiftlet: ' line, in dump-dtb as in boot")
    func dumpDTBBuildFailures() throws {
        let missing = try Self.swiftlet("dump-dtb", "--arch", "aarch64", "--initrd", "/nonexistent", "/tmp/unused.dtb")
        #expect(missing.status == 1)
        #expect(
            missing.stderr == "swiftlet: cannot read the initrd: open /nonexistent failed: No such file or directory (errno 2)\n")
        let unwritable = try Self.swiftlet("dump-dtb", "--arch", "aarch64", "/nonexistent/dir/x.dtb")
        #expect(unwritable.status == 1)
        #expect(unwritable.stderr.hasPrefix("swiftlet: "))
        #expect(unwritable.stderr.filter { $0 == "\n" }.count == 1)
    }

    @Test(
        "a tap that cannot be opened is a one-line error and exit status 1 (run inside a namespace of the test's own)",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason),
        .enabled(if: NetworkTestSupport.isRoot, NetworkTestSupport.notRootReason))
    func unopenableTap() throws {
        guard access(Self.binary, X_OK) == 0 else { throw TestFailure("\(Self.binary) is missing: run `swift build` first") }
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let result = try Subprocess.run(
            NetworkTestSupport.ip,
            [
                "netns", "exec", namespace.name, Self.binary, "boot", "--kernel", try TestSupport.guest("longmode-hello.elf"),
                "--net", "tap=lo",
            ])
        #expect(result.status == 1)
        #expect(
            result.stderr
                == "swiftlet: cannot create the devices: network interface 0: cannot open tap 'lo': TUNSETIFF lo failed: Invalid argument (errno 22)\n"
        )
    }

    @Test(
        "a tiny guest's output reaches stdout and its reset exits 0",
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

    @Test(
        "--timeout stops a spinning guest with exit status 124",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func timeout() throws {
        let result = try Self.swiftlet(
            "boot", "--kernel", try TestSupport.guest("realmode-spin.bin"), "--format", "flat-real-mode", "--timeout", "0.3")
        #expect(result.status == 124)
        #expect(result.stderr == "swiftlet: stopped: deadline reached\n")
    }

    /// Every option of `swiftlet boot`, as its help lists them.
    static let bootOptions = [
        "--kernel <file>", "--format <format>", "--memory <size>", "--cpus <n>", "--initrd <file>", "--cmdline <text>",
        "--cpuid-mask <list>", "--boot-timer", "--report-boot-time", "--report-memory", "--report-exits", "--timeout <seconds>",
        "--disk <disk>", "--net <net>",
        "--rng",
    ]

    @Test("--help, -h and help exit 0 and list the commands", arguments: [["--help"], ["-h"], ["help"], []])
    func rootHelp(arguments: [String]) throws {
        let result = try Subprocess.run(Self.binary, arguments)
        #expect(result.status == 0)
        #expect(result.stderr == "")
        for text in ["USAGE: swiftlet <command>", "boot", "dump-dtb", "--version", "-h, --help"] {
            #expect(result.stdout.contains(text), "swiftlet \(arguments) does not mention \(text)")
        }
    }

    @Test(
        "boot's help lists every option, with defaults, and the discussion",
        arguments: [["boot", "--help"], ["boot", "-h"], ["help", "boot"]])
    func bootHelp(arguments: [String]) throws {
        let result = try Subprocess.run(Self.binary, arguments)
        #expect(result.status == 0)
        #expect(result.stderr == "")
        #expect(result.stdout.contains("USAGE: swiftlet boot --kernel <file> [options]"))
        for option in Self.bootOptions {
            #expect(result.stdout.contains("\n  \(option) "), "boot's help does not list \(option)")
        }
        #expect(result.stdout.contains("(default: 128M)"))
        // Lines generated from the declarations: --cpus (shared with dump-dtb) and --disk, whose
        // help is its key grammar's synopsis.
        #expect(result.stdout.contains("\n  --cpus <n>              Number of vCPUs. (default: 1)\n"))
        #expect(
            result.stdout.contains(
                "\n  --disk <disk>           A virtio-blk disk:\n                          path=FILE[,readonly=on][,id=NAME][,direct=on]\n"
            ))
        for paragraph in [
            "Image formats (--format):", "Disks (--disk, repeatable)", "Network (--net, repeatable)", "Entropy (--rng)",
            "Boot timer (--boot-timer", "Ctrl-A x stops the VM", "bytes of guest output dropped (output stalled)",
            "Exit status of a guest command", "Exit status: the guest command's status",
        ] {
            #expect(result.stdout.contains(paragraph), "boot's help lacks \(paragraph)")
        }
        // The generated part (usage and options, before the preformatted discussion) fits 80 columns.
        let generated = result.stdout.split(separator: "\n").prefix { !$0.hasPrefix("Image formats") }
        #expect(generated.allSatisfy { $0.count <= 80 })
    }

    @Test("dump-dtb's help lists its options and OUT")
    func dumpDTBHelp() throws {
        let result = try Self.swiftlet("dump-dtb", "--help")
        #expect(result.status == 0)
        for text in ["USAGE: swiftlet dump-dtb", "<OUT>", "--arch <arch>", "--virtio-devices <n>", "dtc -I dtb -O dts"] {
            #expect(result.stdout.contains(text))
        }
        // The options boot shares, from the same declarations: the same lines.
        #expect(result.stdout.contains("\n  --cpus <n>              Number of vCPUs. (default: 1)\n"))
        for option in ["--memory <size>", "--cmdline <text>", "--initrd <file>", "--disk <disk>", "--net <net>", "--rng"] {
            #expect(result.stdout.contains("\n  \(option) "), "dump-dtb's help does not list \(option)")
        }
    }

    @Test(
        "usage errors exit 64 with the error, the usage line and a pointer to the help, and start nothing",
        arguments: [
            ["boot", "--bogus"], ["boot", "--kernel"], ["boot"], ["boot", "--kernel", "/nonexistent", "stray"],
            ["boot", "--kernel", "/nonexistent", "--cpus", "two"], ["boot", "--kernel", "/nonexistent", "--timeout", "soon"],
            ["boot", "--kernel", "/nonexistent", "--rng=on"], ["boot", "--kernel", "/nonexistent", "--memory="],
            ["boot", "--kernel", "/nonexistent", "--", "--rng"],
        ])
    func bootUsageErrors(arguments: [String]) throws {
        // A real guest: had a VM started, its output would be on stdout.
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let result = try Subprocess.run(Self.binary, arguments.map { $0 == "/nonexistent" ? kernel : $0 })
        #expect(result.status == 64)
        #expect(result.stdout == "")
        #expect(result.stderr.hasPrefix("swiftlet: "))
        #expect(result.stderr.hasSuffix("\nUsage: swiftlet boot --kernel <file> [options]\nSee 'swiftlet boot --help'.\n"))
        #expect(result.stderr.filter { $0 == "\n" }.count == 3)
    }

    @Test(
        "usage errors of swiftlet itself and of dump-dtb exit 64",
        arguments: [
            ["bogus"], ["--bogus"], ["help", "bogus"], ["dump-dtb", "/tmp/x.dtb"], ["dump-dtb", "--arch", "aarch64"],
            ["dump-dtb", "--arch", "aarch64", "a.dtb", "b.dtb"], ["dump-dtb", "--arch", "aarch64", "--kernel", "x", "a.dtb"],
        ])
    func otherUsageErrors(arguments: [String]) throws {
        let result = try Subprocess.run(Self.binary, arguments)
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("swiftlet: "))
        #expect(result.stderr.contains("\nUsage: swiftlet "))
    }

    @Test("--help wins over errors on the same line, and --version works after a command")
    func helpAndVersionFirst() throws {
        let help = try Self.swiftlet("boot", "--bogus", "--help")
        #expect(help.status == 0)
        #expect(help.stdout.hasPrefix("Boot a kernel image"))
        let version = try Self.swiftlet("boot", "--version")
        #expect(version.status == 0)
        #expect(version.stdout == "Swiftlet v" + SwiftletVersion.string + "\n")
    }

    @Test(
        "--name=value works as --name value; the last of a repeated option wins",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func equalsForm() throws {
        let result = try Self.swiftlet(
            "boot", "--kernel=/nonexistent", "--kernel=" + (try TestSupport.guest("longmode-hello.elf")), "--memory=256M",
            "--cpus=1",
            "--format=elf", "--timeout=20", "--report-memory")
        #expect(result.status == 0)
        #expect(result.stdout == "Hello from 64-bit long mode\n")
        #expect(result.stderr.hasPrefix("swiftlet: guest resident "))
    }

    @Test(
        "--report-exits prints one line per vCPU with its exits by reason",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func reportExits() throws {
        let result = try Self.swiftlet(
            "boot", "--kernel", try TestSupport.guest("longmode-hello.elf"), "--cpus", "2", "--timeout", "20", "--report-exits")
        #expect(result.status == 0)
        #expect(result.stdout == "Hello from 64-bit long mode\n")
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 3 && lines.last == "", "expected two lines, got \(result.stderr)")
        guard lines.count == 3 else { return }
        // vCPU 0: per console byte a line-status read and a data write, then the reset write;
        // after the reset its next KVM_RUN returns EINTR once.
        let bytes = "Hello from 64-bit long mode\n".utf8.count
        #expect(
            lines[0] == "swiftlet: vcpu 0 exits: pio-in \(bytes), pio-out \(bytes + 1), mmio-read 0, mmio-write 0, hlt 0, "
                + "shutdown 0, interrupted 1, internal-error 0, other 0")
        // vCPU 1 is never started: it only leaves KVM_RUN when the machine's end kicks it.
        #expect(
            lines[1].hasPrefix(
                "swiftlet: vcpu 1 exits: pio-in 0, pio-out 0, mmio-read 0, mmio-write 0, hlt 0, shutdown 0, interrupted "))
        #expect(lines[1].hasSuffix(", internal-error 0, other 0"))
        // Without the flag, nothing is printed.
        let quiet = try Self.swiftlet("boot", "--kernel", try TestSupport.guest("longmode-hello.elf"), "--timeout", "20")
        #expect(quiet.status == 0)
        #expect(quiet.stderr == "")
    }

    @Test("dump-dtb writes a device tree blob, to a file or to stdout")
    func dumpDTB() throws {
        let file = try TemporaryFile(contents: [])
        let result = try Self.swiftlet("dump-dtb", "--arch", "aarch64", "--memory=256M", "--cpus", "2", file.path)
        #expect(result.status == 0)
        #expect(result.stderr == "")
        let fd = open(file.path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open \(file.path) failed: errno \(errno)") }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 40)
        #expect(header.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } == 40)
        #expect(header.prefix(4) == [0xd0, 0x0d, 0xfe, 0xed])  // FDT magic, big-endian
        // The same blob on stdout (compared as both decode, since it is not text).
        let piped = try Self.swiftlet("dump-dtb", "--memory", "256M", "--cpus=2", "--arch=aarch64", "-")
        #expect(piped.status == 0)
        #expect(piped.stdout == (try Subprocess.contents(of: file.path)))
    }

    @Test("dump-dtb refuses an unknown architecture as a usage error")
    func dumpDTBArch() throws {
        let result = try Self.swiftlet("dump-dtb", "--arch", "mips", "/tmp/x.dtb")
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("swiftlet: --arch 'mips': "))
    }
}

extension String {
    /// The text with the placeholder `KERNEL` replaced by a real file's path.
    fileprivate func replacingKernel(with path: String) -> String {
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: "KERNEL") {
            result += rest[..<range.lowerBound] + path
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
