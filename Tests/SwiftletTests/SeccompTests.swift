import CHost
import CKVM
import Glibc
import SwiftletHost
import Testing

@testable import Swiftlet

/// A classic-BPF interpreter for the instructions the seccomp compiler emits (ld w abs, and k,
/// jeq/jge k, ja, ret k), over a `struct seccomp_data` built in the test. Anything else fails.
struct BPFInterpreter {
    struct Call {
        var number: UInt32
        var arch: UInt32 = SWL_SECCOMP_AUDIT_ARCH
        var arguments: [UInt64] = [0, 0, 0, 0, 0, 0]

        init(_ call: SystemCall, _ arguments: UInt64...) {
            number = call.number
            for (index, value) in arguments.enumerated() { self.arguments[index] = value }
        }

        /// The 32-bit word at `offset` of struct seccomp_data (little-endian).
        func word(at offset: UInt32) throws -> UInt32 {
            switch offset {
            case SWL_SECCOMP_DATA_NR: return number
            case SWL_SECCOMP_DATA_ARCH: return arch
            case 8, 12: return 0
            case SWL_SECCOMP_DATA_ARGS..<(SWL_SECCOMP_DATA_ARGS + 48) where offset % 4 == 0:
                let argument = arguments[Int((offset - SWL_SECCOMP_DATA_ARGS) / 8)]
                return offset % 8 == 0 ? UInt32(truncatingIfNeeded: argument) : UInt32(truncatingIfNeeded: argument >> 32)
            default: throw TestFailure("load from offset \(offset)")
            }
        }
    }

    /// Runs `program` on `call`; returns the value of the `ret` reached. Counts the
    /// instructions executed in `steps`.
    static func run(_ program: [sock_filter], _ call: Call, steps: inout Int) throws -> UInt32 {
        var pc = 0
        var accumulator: UInt32 = 0
        steps = 0
        while pc < program.count {
            let instruction = program[pc]
            steps += 1
            pc += 1
            switch instruction.code {
            case SWL_BPF_LD_W_ABS: accumulator = try call.word(at: instruction.k)
            case SWL_BPF_ALU_AND_K: accumulator &= instruction.k
            case SWL_BPF_JMP_JA: pc += Int(instruction.k)
            case SWL_BPF_JMP_JEQ_K: pc += Int(accumulator == instruction.k ? instruction.jt : instruction.jf)
            case SWL_BPF_JMP_JGE_K: pc += Int(accumulator >= instruction.k ? instruction.jt : instruction.jf)
            case SWL_BPF_RET_K: return instruction.k
            default: throw TestFailure("unexpected instruction code \(instruction.code)")
            }
        }
        throw TestFailure("ran off the end of the program")
    }

    static func run(_ filter: SeccompFilter, _ call: Call) throws -> UInt32 {
        var steps = 0
        return try run(filter.instructions, call, steps: &steps)
    }
}

@Suite("Seccomp filter compiler")
struct SeccompCompilerTests {
    static let allow = SWL_SECCOMP_RET_ALLOW
    static let trap = SWL_SECCOMP_RET_TRAP
    static let kill = SWL_SECCOMP_RET_KILL_PROCESS

    static let sample: [SeccompRule] = [
        SeccompRule(.ioctl, where: .argument(1, isOneOf: [0xAE80, 0x4008_AE61])),
        SeccompRule(.read),
        SeccompRule(.mmap, where: .argument(2, hasNoneOf: UInt64(PROT_EXEC))),
        SeccompRule(
            .tgkill,
            whereAnyOf: [
                [.argument(0, isOneOf: [7]), .argument(2, isOneOf: [10])],
                [.argument(2, isOneOf: [15])],
            ]),
        SeccompRule(.lseek, where: SeccompCondition(argument: 1, width: .full64, values: [0x1_0000_0000])),
    ]

    @Test("listed calls are allowed, others trap, another architecture kills, x32 numbers trap")
    func basics() throws {
        let filter = try SeccompFilter(rules: Self.sample)
        #expect(try BPFInterpreter.run(filter, .init(.read)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.write)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(SystemCall(SWL_SYS_execve))) == Self.trap)
        var foreign = BPFInterpreter.Call(.read)
        foreign.arch = 0x4000_00B7  // AUDIT_ARCH_AARCH64
        #expect(try BPFInterpreter.run(filter, foreign) == Self.kill)
        var x32 = BPFInterpreter.Call(.read)
        x32.number |= SWL_X32_SYSCALL_BIT
        #expect(try BPFInterpreter.run(filter, x32) == Self.trap)
        #expect(
            try SeccompFilter(rules: Self.sample, defaultAction: .error(EPERM)).instructions.last!.k == SWL_SECCOMP_RET_ERRNO | 1)
    }

    @Test("ioctl requests: listed ones pass, others trap; the upper half is ignored as the kernel does")
    func ioctlRequests() throws {
        let filter = try SeccompFilter(rules: Self.sample)
        #expect(try BPFInterpreter.run(filter, .init(.ioctl, 3, 0xAE80)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.ioctl, 3, 0x4008_AE61)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.ioctl, 3, 0xAE81)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.ioctl, 3, 0)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.ioctl, 3, 0xFFFF_FFFF_0000_AE80)) == Self.allow)
    }

    @Test("masked flags, alternatives of several conditions, and 64-bit values")
    func conditions() throws {
        let filter = try SeccompFilter(rules: Self.sample)
        let readWrite = UInt64(PROT_READ | PROT_WRITE)
        #expect(try BPFInterpreter.run(filter, .init(.mmap, 0, 4096, readWrite)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.mmap, 0, 4096, readWrite | UInt64(PROT_EXEC))) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.tgkill, 7, 8, 10)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.tgkill, 6, 8, 10)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.tgkill, 6, 8, 15)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.tgkill, 7, 8, 9)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.lseek, 3, 0x1_0000_0000)) == Self.allow)
        #expect(try BPFInterpreter.run(filter, .init(.lseek, 3, 0)) == Self.trap)
        #expect(try BPFInterpreter.run(filter, .init(.lseek, 3, 0x2_0000_0000)) == Self.trap)
    }

    @Test("bad allowlists are refused with the call named")
    func refusedAllowlists() {
        #expect(throws: SeccompCompileError.duplicateRule(.read)) {
            try SeccompFilter(rules: [SeccompRule(.read), SeccompRule(.write), SeccompRule(.read)])
        }
        #expect(throws: SeccompCompileError.badArgument(.ioctl, 6)) {
            try SeccompFilter(rules: [SeccompRule(.ioctl, where: .argument(6, isOneOf: [1]))])
        }
        #expect(throws: SeccompCompileError.self) {
            try SeccompFilter(rules: [SeccompRule(.ioctl, where: SeccompCondition(argument: 1, width: .low32, values: []))])
        }
        #expect(throws: SeccompCompileError.self) {
            try SeccompFilter(rules: [
                SeccompRule(.lseek, where: SeccompCondition(argument: 1, width: .full64, values: [1, 0x1_0000_0000]))
            ])
        }
        // 300 requests in one rule: its body is longer than an 8-bit jump can skip.
        #expect(throws: SeccompCompileError.jumpTooLong(.ioctl)) {
            try SeccompFilter(rules: [SeccompRule(.ioctl, where: .argument(1, isOneOf: Array(1...300)))])
        }
    }

    @Test("every thread kind's filter compiles, fits BPF_MAXINSNS and refuses what no thread needs")
    func allowlists() throws {
        for terminal in [nil, Int32(0)] {
            let filters = try SeccompAllowlists.filters(.init(terminalDescriptor: terminal))
            #expect(filters.count == SeccompThreadKind.allCases.count)
            for (kind, filter) in filters {
                #expect(filter.instructions.count < Int(SWL_BPF_MAXINSNS), "\(kind)")
                for forbidden in [
                    SWL_SYS_execve, SWL_SYS_clone, SWL_SYS_clone3, SWL_SYS_fork, SWL_SYS_socket, SWL_SYS_ptrace, SWL_SYS_setuid,
                    SWL_SYS_getppid,
                ] {
                    #expect(
                        try BPFInterpreter.run(filter, .init(SystemCall(forbidden))) == Self.trap,
                        "\(kind) \(SystemCall(forbidden))")
                }
                let exec = UInt64(PROT_READ | PROT_EXEC)
                #expect(try BPFInterpreter.run(filter, .init(.mmap, 0, 4096, exec)) == Self.trap, "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.mprotect, 0, 4096, exec)) == Self.trap, "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.futex)) == Self.allow, "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.exitGroup)) == Self.allow, "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.write, 2)) == Self.allow, "\(kind)")
                // The kick signal to another thread; not SIGKILL.
                let kick = UInt64(UInt32(bitPattern: __libc_current_sigrtmin() + 2))
                #expect(try BPFInterpreter.run(filter, .init(.tgkill, 1, 2, kick)) == Self.allow, "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.tgkill, 1, 2, UInt64(SIGKILL))) == Self.trap, "\(kind)")
                // Restoring the terminal mode: only on the terminal, only tcsetattr's requests.
                let restore = try BPFInterpreter.run(filter, .init(.ioctl, 0, UInt64(SWL_TCSETS)))
                #expect(restore == (terminal == nil ? Self.trap : Self.allow), "\(kind)")
                #expect(try BPFInterpreter.run(filter, .init(.ioctl, 5, UInt64(SWL_TCSETS))) == Self.trap, "\(kind)")
            }
            let vcpu = filters[.vcpu]!
            #expect(try BPFInterpreter.run(vcpu, .init(.ioctl, 9, UInt64(SWL_KVM_RUN))) == Self.allow)
            #expect(try BPFInterpreter.run(vcpu, .init(.ioctl, 9, UInt64(SWL_KVM_SET_REGS))) == Self.trap)
            #expect(try BPFInterpreter.run(vcpu, .init(.ioctl, 9, UInt64(SWL_TUNSETOFFLOAD))) == Self.trap)
            #expect(try BPFInterpreter.run(vcpu, .init(.openat)) == Self.trap)
            let loop = filters[.eventLoop]!
            #expect(try BPFInterpreter.run(loop, .init(.ioctl, 9, UInt64(SWL_TUNSETOFFLOAD))) == Self.allow)
            #expect(try BPFInterpreter.run(loop, .init(.ioctl, 9, UInt64(SWL_KVM_RUN))) == Self.trap)
            #expect(try BPFInterpreter.run(loop, .init(.ioctl, 9, UInt64(SWL_TUNSETIFF))) == Self.trap)
            #expect(try BPFInterpreter.run(loop, .init(.preadv)) == Self.allow)
            let writer = filters[.consoleWriter]!
            #expect(try BPFInterpreter.run(writer, .init(.read)) == Self.trap)
            #expect(try BPFInterpreter.run(writer, .init(.ioctl, 9, UInt64(SWL_KVM_RUN))) == Self.trap)
        }
    }

    @Test("KVM_RUN is the vCPU filter's first comparison after the architecture and x32 checks")
    func vcpuFastPath() throws {
        let vcpu = try SeccompAllowlists.filters(.init(terminalDescriptor: 0))[.vcpu]!
        var steps = 0
        let action = try BPFInterpreter.run(vcpu.instructions, .init(.ioctl, 9, UInt64(SWL_KVM_RUN)), steps: &steps)
        #expect(action == Self.allow)
        // ld arch, jeq, ld nr, jge, jeq ioctl, ld arg1, jeq KVM_RUN, ret.
        #expect(steps == 8)
    }
}

/// Filters installed for real, in subprocesses (never in the test runner): the hidden
/// `swiftlet __seccomp-selftest` command, and machines whose threads are checked in /proc.
@Suite("Seccomp", .serialized, .timeLimit(.minutes(2)))
struct SeccompTests {
    @Test(
        "a forbidden call on a filtered thread ends the process with the report and status 159",
        arguments: SeccompThreadKind.allCases.map { "\($0.name)" })
    func forbiddenCall(kind: String) throws {
        let result = try CLITests.swiftlet("__seccomp-selftest", kind)
        #expect(result.status == 159)
        #expect(
            result.stderr
                == "filter installed; write(2) still works\nswiftlet: seccomp: \(kind) thread made a forbidden system call \(SWL_SYS_getppid) (getppid)\n"
        )
    }

    @Test("the report restores a raw-mode terminal")
    func restoresTerminal() throws {
        let terminal = try PseudoTerminal()
        let before = try terminal.setRecognisableCookedMode()
        let program = try SpawnedProgram(
            CLITests.binary, ["__seccomp-selftest", "vcpu", "--raw-terminal"], stdinPath: terminal.slavePath, newSession: true)
        let status = try program.wait(within: 20)
        #expect(status == 159)
        #expect(program.stderr.contains("swiftlet: seccomp: vcpu thread made a forbidden system call"))
        #expect(sameMode(try terminal.mode(), before), "the terminal's mode was not restored")
    }

    @Test("--seccomp takes on or off; a tiny guest runs with filters on and off")
    func option() throws {
        let guest = try TestSupport.guest("longmode-hello.elf")
        for value in ["on", "off"] {
            let result = try CLITests.swiftlet("boot", "--kernel", guest, "--seccomp", value, "--timeout", "20")
            #expect(result.status == 0, "--seccomp \(value): \(result.stderr)")
            #expect(result.stdout == "Hello from 64-bit long mode\n")
        }
        let bad = try CLITests.swiftlet("boot", "--kernel", guest, "--seccomp", "yes")
        #expect(bad.status == 64)
        #expect(bad.stderr.hasPrefix("swiftlet: --seccomp 'yes': use on or off\n"))
        let restore = try CLITests.swiftlet("restore", "/nonexistent", "--seccomp", "maybe")
        #expect(restore.status == 64)
    }

    /// The threads of this process that have a seccomp filter ("Seccomp: 2" in their status).
    static func filteredThreads() throws -> Int {
        guard let directory = opendir("/proc/self/task") else { throw TestFailure("opendir /proc/self/task") }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.first?.isNumber == true else { continue }
            guard let status = try? Subprocess.contents(of: "/proc/self/task/\(name)/status") else { continue }
            // KVM's own worker (kvm-nx-lpage-recovery) is a task of this process that the kernel
            // starts from the first vCPU thread, filter included; it is not a Swiftlet thread.
            let command = (try? Subprocess.contents(of: "/proc/self/task/\(name)/comm")) ?? ""
            if status.split(separator: "\n").contains("Seccomp:\t2") && !command.hasPrefix("kvm-") { count += 1 }
        }
        return count
    }

    @Test(
        "a running machine's vCPU and event-loop threads are filtered, the test runner's are not",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func machineThreadsFiltered() throws {
        let image = try TemporaryFile(contents: PublicAPITests.counterGuest)
        for seccomp in [true, false] {
            var configuration = MachineConfiguration(
                kernelPath: image.path, kernelFormat: .flatRealMode, vcpuCount: 2, console: .none)
            configuration.seccomp = seccomp
            let baseline = try Self.filteredThreads()
            let machine = try Machine(configuration)
            machine.setDeadline(after: TestSupport.guestDeadline)
            try machine.start()
            try TestSupport.waitUntil("the guest's counter moves") {
                try machine.memory.read(UInt32.self, at: PublicAPITests.counterAddress) > 0
            }
            // Two vCPUs and the event loop (no console writer with .none).
            var filtered = 0
            do {
                try TestSupport.waitUntil("the machine's threads have their filters") {
                    filtered = try Self.filteredThreads() - baseline
                    return filtered == (seccomp ? 3 : 0)
                }
            } catch {
                Issue.record("seccomp \(seccomp): \(filtered) filtered threads besides the \(baseline) before")
            }
            machine.stop()
            #expect(machine.wait() == .stopped(.requested))
            // A joined thread may stay listed in /proc for a moment.
            try TestSupport.waitUntil("the machine's filtered threads are gone") { try Self.filteredThreads() == baseline }
            #expect(try Subprocess.contents(of: "/proc/self/status").contains("Seccomp:\t0"))
        }
    }
}
