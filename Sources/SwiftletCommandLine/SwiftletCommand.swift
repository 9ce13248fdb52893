import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet`: the command-line front end. It reads the arguments (ArgumentReader: hand-written,
/// no Foundation, for start time and memory) and calls the library; nothing else happens here.
public enum SwiftletCommand {
    /// Runs `swiftlet` with `arguments` (those after the program name). Help and version return;
    /// a command ends the process with its exit status.
    public static func run(_ arguments: [String]) {
        let arguments = arguments[...]
        guard let first = arguments.first else { return Command.root.printHelp() }
        if first == "help" { return help(arguments.dropFirst()) }
        if first == SeccompSelfTest.name { SeccompSelfTest.run(arguments.dropFirst()) }
        guard let command = Command(named: first) else {
            // No command: Firecracker's options select API mode (swiftlet-api, Docs/API-SOCKET.md).
            if APIArguments.selects(arguments) && !ArgumentReader.contains("--version", in: arguments) {
                do { _ = try APIArguments.parse(arguments) } catch { Command.root.fail(error) }
                execSibling("swiftlet-api", arguments, needed: "swiftlet --api-sock")
            }
            // Otherwise only --help and --version are understood.
            if ArgumentReader.contains("-h", "--help", in: arguments) { return Command.root.printHelp() }
            if ArgumentReader.contains("--version", in: arguments) { return printVersion() }
            Command.root.fail(
                first.hasPrefix("-") ? ArgumentReader.unknownOption(first) : UsageError("unknown command '\(first)'"))
        }
        let rest = arguments.dropFirst()
        // Help and version win over anything else on the line, as in most tools.
        if ArgumentReader.contains("-h", "--help", in: rest) { return command.printHelp() }
        if ArgumentReader.contains("--version", in: rest) { return printVersion() }
        switch command {
        case .boot:
            let boot: Boot
            do { boot = try Boot.parse(rest) } catch { command.fail(error) }
            boot.run()
        case .run:
            // Parsed here (usage errors and help need no JSON), run by swiftlet-run.
            do { _ = try RunArguments.parse(rest) } catch { command.fail(error) }
            RunArguments.execRunner(rest)
        case .dumpDTB:
            let dump: DumpDTB
            do { dump = try DumpDTB.parse(rest) } catch { command.fail(error) }
            dump.run()
        case .restore:
            let restore: Restore
            do { restore = try Restore.parse(rest) } catch { command.fail(error) }
            restore.run()
        case .root:
            break
        }
    }

    /// `swiftlet help [<command>]`.
    private static func help(_ arguments: ArraySlice<String>) {
        guard let topic = arguments.first, topic != "-h", topic != "--help" else { return Command.root.printHelp() }
        guard let command = Command(named: topic) else { Command.root.fail(UsageError("unknown command '\(topic)'")) }
        guard arguments.count == 1 else {
            Command.root.fail(ArgumentReader.unexpectedArgument(arguments[arguments.startIndex + 1]))
        }
        command.printHelp()
    }

    /// `Swiftlet v0.1.0`: the form Firecracker prints (`Firecracker v1.7.0`), which its tools read.
    private static func printVersion() {
        writeAll("Swiftlet v" + SwiftletVersion.string + "\n", to: STDOUT_FILENO)
    }
}

/// `swiftlet boot`: its settings, as read from the command line and checked by the library.
struct Boot: MachineCommand, TimedCommand, PrivilegeDroppingCommand {
    var configuration = MachineConfiguration(kernelPath: "")
    /// `--uid`, `--gid`, `--chroot` (PrivilegeOptions.swift), combined in `parse`.
    var userID: UInt32?
    var groupID: UInt32?
    var rootDirectory: String?
    var timeout: Double?
    var reportBootTime = false
    var reportMemory = false
    var reportExits = false
    /// `--snapshot-when-ready`: where to save the snapshot (Snapshot.swift).
    var snapshotDirectory: String?
    /// `--snapshot-on-signal`: where SIGUSR1 saves the snapshot (Snapshot.swift).
    var signalSnapshotDirectory: String?
    /// `--continue-after-snapshot`.
    var continueAfterSnapshot = false

    /// Every option of `boot`, in the order its help lists them. `--memory`, `--cpus`, `--initrd`,
    /// `--cmdline`, `--disk`, `--net` and `--rng` are declared with `dump-dtb`'s (`MachineOptions.swift`).
    static let syntax = CommandSyntax<Boot>(options: [
        CommandOption("--kernel", value: "file", required: true, help: "The kernel image to boot.") { boot, text in
            boot.configuration.kernelPath = text
        },
        CommandOption(
            "--format", value: "format", default: KernelFormat.automatic.rawValue,
            help: "How to load the kernel image: \(KernelFormat.allCases.map(\.rawValue).joined(separator: ", "))."
        ) { boot, text throws(UsageError) in
            guard let format = KernelFormat(rawValue: text) else {
                throw UsageError("unknown format; use one of: \(KernelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            boot.configuration.kernelFormat = format
        },
        .memory, .cpus, .initrd, .cmdline,
        CommandOption("--cpuid-mask", value: "list", help: "CPUID features to hide, comma-separated names or templates.") {
            boot, text throws(UsageError) in
            do { boot.configuration.cpuidMask = try CPUIDFeature.parseMask(text) } catch { throw UsageError("\(error)") }
        },
        CommandOption(
            flag: "--boot-timer", help: "Attach the boot-timer device (port 0x\(String(X86Layout.bootTimerPort, radix: 16)))."
        ) { boot in
            boot.configuration.bootTimer = true
        },
        CommandOption(
            flag: "--report-boot-time",
            help: "Print the guest's boot time (boot-timer port write) on stderr at the end; implies --boot-timer."
        ) { boot in
            boot.reportBootTime = true
            boot.configuration.bootTimer = true
        },
        CommandOption(
            flag: "--report-memory", help: "Print the guest's resident memory and the process's peak RSS on stderr at the end."
        ) {
            boot in boot.reportMemory = true
        },
        CommandOption(flag: "--report-exits", help: "Print each vCPU's exits by reason on stderr at the end.") {
            boot in boot.reportExits = true
        },
        .timeout,
        .disk, .net, .rng, .vsock, .snapshotWhenReady, .snapshotOnSignal, .continueAfterSnapshot, .uid, .gid, .chroot,
        .seccomp,
    ])

    static let help = CommandHelp(
        abstract: "Boot a kernel image in a new microVM with the serial console on this terminal.",
        options: syntax.optionHelp,
        discussion: """
            Image formats (--format):
              auto            (default) ELF64 and bzImage are recognised by their magic numbers.
              elf             An ELF64 x86-64 executable (a vmlinux or a tiny test guest). Each
                              PT_LOAD segment is copied to its physical address (at or above 1 MiB)
                              and vCPU 0 starts at e_entry in 64-bit long mode: paging on with an
                              identity map of the first 4 GiB (2 MiB pages), flat code segment 0x10,
                              data segments 0x18, RSP = 0x8ff0, RSI = 0x7000 (zero page), interrupts off.
              bzimage         A Linux bzImage (boot protocol 2.12 or later): the protected-mode
                              kernel is copied to 1 MiB, the setup header to the zero page, and vCPU 0
                              starts at the 64-bit entry (1 MiB + 0x200) in the same long-mode state.
              flat-real-mode  A flat binary of at most 64 KiB copied to 0x10000 and started in
                              16-bit real mode at CS:IP = 1000:0000 with DS = ES = SS = 0x1000 and
                              SP = 0xfff0.

            Linux: for ELF and bzImage kernels Swiftlet writes a zero page (boot_params) with the
            e820 map, the command line (--cmdline), the initrd (--initrd, placed at the top of RAM
            below 3 GiB and the kernel's initrd_addr_max) and an MP table for --cpus processors.
            The default command line is
              \(LinuxBoot.defaultCommandLine)
            --cpuid-mask hides CPUID features from the guest and adds clearcpuid= to the command
            line; it takes feature names (cx16,popcnt,...), KVM paravirtual features of CPUID
            leaf 0x40000001 (kvm_pv_send_ipi, kvm_pv_unhalt, kvm_pv_sched_yield, kvm_steal_time,
            ...: hidden in the CPUID table only, not named in clearcpuid=) and the template
            'emulated' (what a KVM that emulates guest kernel code cannot run, including the
            hypercall-based paravirtual features). An unknown name lists every known one.

            Disks (--disk, repeatable): each is a virtio-blk device over a raw image file or a
            host block device (/dev/loopN, a partition),
              --disk \(DeviceOptions.disk.synopsis)
            readonly=on offers the disk read-only (the guest's writes fail with an I/O error);
            id= is what the guest reads as the disk's serial (at most 20 bytes, default diskN);
            direct=on opens the image with O_DIRECT (its size must be a multiple of 4 KiB).
            Toggles are on or off; a bare value is the path (--disk FILE). Linux names them /dev/vda, /dev/vdb, ... A missing or unreadable image ends with
            exit status 1.

            Host files: --kernel and --initrd must be regular files, a --disk path a regular file
            or a block device. A directory, FIFO, socket or character device (/dev/null, a
            terminal) is refused at once with one line saying what it is, before it is opened:
            nothing waits on a FIFO and no device driver is touched.

            Network (--net, repeatable): each is a virtio-net device over a host tap interface,
              --net \(DeviceOptions.network.synopsis)
            The tap is opened through /dev/net/tun in swiftlet's network namespace (created if
            no interface has that name; it then goes away when swiftlet ends). mac= is the
            guest's address (default: 02:xx:xx:xx:xx:xx derived from the tap name, the same on
            every run); offload=off offers no checksum or segmentation offloads (by default
            those the tap supports are offered). Linux names the interfaces eth0, eth1, ...;
            give it an address with ip=ADDRESS::GATEWAY:NETMASK::eth0:off on --cmdline
            (Docs/NETWORKING.md). A tap that cannot be opened ends with exit status 1.

            Rate limits (Firecracker's token buckets, Docs/RATE-LIMITS.md): on --disk
              bw=SIZE/MS[/BURST]   bytes: a bucket of SIZE (512K, 4M, ...) refilled in MS ms
              ops=N/MS[/BURST]     requests: a bucket of N refilled in MS ms
            and on --net the same per direction: rx-bw=, rx-ops= (to the guest), tx-bw=,
            tx-ops= (from the guest). bw=4M/1000 is 4 MiB per second; BURST is an extra
            one-time budget spent first. A request larger than the bucket is served and the
            bucket owes the difference. A throttled queue waits (the guest sees slower I/O) and
            is served again from a timer. Sizes and times must be at least 1.

            Privileges (--uid USER --gid GROUP [--chroot DIR], as root): once /dev/kvm, guest
            memory, the disks, the taps and the console are open, and before the vCPUs run,
            swiftlet chroots (if asked), drops its supplementary groups, then sets its group and
            user, and checks that root cannot be regained. The guest then runs with that user's
            rights only. Snapshots are written with them too.

            Seccomp (--seccomp on|off, default on): every swiftlet thread (vCPUs, event loop,
            console writer, signal threads, and this main thread once the VM runs) has a
            seccomp filter allowing only the system calls it needs (Docs/SECCOMP.md). A refused
            call ends swiftlet with one line on stderr and exit status 159:
              swiftlet: seccomp: <thread> thread made a forbidden system call <number> (<name>)
            --seccomp off runs without filters, for debugging.

            Entropy (--rng): a virtio-rng device fed by the host's getrandom(2); Linux uses it
            as /dev/hwrng.

            Host-guest sockets (--vsock \(DeviceOptions.vsock.synopsis)): a virtio-vsock device for
            guest CID N; swiftlet listens on the Unix socket PATH (which must not exist; it is
            removed at the end). A host program connects to PATH and writes "CONNECT <port>\\n"
            to reach that guest port, and reads "OK <host port>\\n" once the guest accepts (or
            the socket closes). A guest connecting to CID 2 port P is connected to the Unix
            socket PATH_P (Firecracker's hybrid vsock, Docs/VSOCK.md).

            Virtio devices share one sequence of slots: disks, then network interfaces, then the
            rng, then vsock. Slot N sits at 0xd0000000 + N * 0x1000 with IRQ 5 + N (at most 19 devices), and
            virtio_mmio.device=4K@ADDRESS:IRQ is added to the command line for it.

            Boot timer (--boot-timer, off by default as in Firecracker): a device at port 0x440;
            the guest writes the byte 123 to it when it is ready. --report-boot-time attaches it
            too and prints the time from swiftlet's start to that write.

            Exit status of a guest command: the guest writes one byte to port 0x441 before it
            resets or powers off, and swiftlet exits with that value. Swiftlet's guest init runs
            the words after "--" on the kernel command line (or a shell when there are none)
            and reports its status there, 128 + N for a command killed by signal N:
              --cmdline '... -- /bin/sh -c "exit 7"'     exits 7

            The console: guest serial output (COM1, port 0x3f8) goes to stdout; typed input goes
            to the guest, with the terminal in raw mode. Ctrl-A x stops the VM; Ctrl-A Ctrl-A sends
            a Ctrl-A. A guest ends the VM by writing 0xfe to port 0x64 (i8042 reset).
            Output is buffered (256 KiB) and written by a thread of its own: a slow reader gets
            every byte (the guest waits for it), but output nobody reads for half a second is
            dropped once the buffer is full, so a stalled stdout never keeps the VM from
            stopping. Dropped output is reported on stderr at the end:
              swiftlet: console: N bytes of guest output dropped (output stalled)

            Exit status: the guest command's status when the guest reported one (port 0x441,
            above); otherwise 0 the guest reset, powered off or was stopped (Ctrl-A x); 1 the VM
            could not be built (unreadable, invalid or wrong kind of kernel, initrd or disk, a tap
            that cannot be opened, no KVM); 64 a usage error (an unknown option, a malformed or
            out-of-range value: every value is checked before anything is built); 3 triple fault;
            4 KVM internal (emulation) error; 5 VM entry failure; 6 unhandled exit; 7 a vCPU call
            failed; 8 guest panic; 124 --timeout reached; 159 a seccomp filter refused a system call; 128 + N stopped by signal N (SIGINT,
            SIGTERM and SIGHUP stop the VM cleanly; a second one while it stops ends swiftlet
            at once).
            """
    )

    /// Reads `swiftlet boot`'s arguments (those after `boot`) and checks the configuration they
    /// describe with `MachineConfiguration.validate()`: every bad value is a usage error here,
    /// before anything is built.
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> Boot {
        var boot = Boot()
        try syntax.parse(arguments, into: &boot)
        boot.configuration.privilegeDrop = try boot.parsedPrivilegeDrop()
        do { try boot.configuration.validate() } catch { throw error.usageError }
        return boot
    }

    /// Builds and runs the machine, then ends the process with its exit status (1 if it cannot
    /// be built).
    func run() -> Never {
        // Console output may go to a pipe that closes early: get EPIPE, not a fatal signal.
        signal(SIGPIPE, SIG_IGN)
        if signalSnapshotDirectory != nil { SignalSnapshotter.blockSignal() }
        let machine: Machine
        let signals: SignalStopper
        var snapshotter: SignalSnapshotter?
        do {
            machine = try Machine(configuration)
            // SIGINT, SIGTERM and SIGHUP stop the VM cleanly (exit status 128 + signal).
            signals = try SignalStopper(stopping: machine, on: [SIGINT, SIGTERM, SIGHUP])
            if let signalSnapshotDirectory {
                snapshotter = try SignalSnapshotter(
                    machine: machine, directory: signalSnapshotDirectory, continueAfter: continueAfterSnapshot)
            }
            try machine.start()
        } catch {
            failToBuild(error)
        }
        installMainThreadFilter(machine)
        if let timeout { machine.setDeadline(after: timeout) }
        snapshotWhenReady(machine)
        let exit = machine.wait()
        signals.cancel()
        snapshotter?.cancel()
        if case .failed = snapshotter?.lastOutcome { terminate(1) }
        let dropped = machine.droppedConsoleBytes
        if dropped > 0 {
            let why = machine.consoleOutputError.map { "output failed: \($0)" } ?? "output stalled"
            printError("swiftlet: console: \(dropped) bytes of guest output dropped (\(why))")
        }
        if !exit.isClean { printError("swiftlet: \(exit)") }
        if reportBootTime {
            if let nanoseconds = machine.bootTime {
                let micros = nanoseconds / 1000
                printError(
                    "swiftlet: boot time \(micros / 1000).\(String(micros % 1000 + 1000).dropFirst()) ms (boot-timer write)")
            } else {
                printError("swiftlet: the guest never wrote the boot timer")
            }
        }
        if reportMemory {
            // Guest pages touched (mincore over guest RAM) and this process's peak RSS: the VMM's
            // own footprint is the difference (Benchmarks/run.py).
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            if let resident = try? machine.memory.residentBytes() {
                printError("swiftlet: guest resident \(resident / 1024) KiB, process peak RSS \(usage.ru_maxrss) KiB")
            } else {
                printError("swiftlet: process peak RSS \(usage.ru_maxrss) KiB (guest residency unavailable)")
            }
        }
        if reportExits {
            // One line per vCPU: swiftlet: vcpu N exits: pio-in N, pio-out N, ... (ExitCounts).
            for (vcpu, counts) in machine.exitCounts.enumerated() { printError("swiftlet: vcpu \(vcpu) exits: \(counts)") }
        }
        terminate(exit.exitCode)
    }

    private func printError(_ message: String) {
        var text = message + "\n"
        text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// Prints why a machine (or its device tree) could not be built, `swiftlet: <error>` on one
/// line, and exits with status 1. Bad values never get here: they are usage errors (64).
func failToBuild(_ error: any Error) -> Never {
    writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
    terminate(1)
}

/// Ends the process with `code` (the guest's exit status).
func terminate(_ code: Int32) -> Never { Glibc.exit(code) }

/// Stops `machine`, waits until its threads have ended, prints `swiftlet: <message>` on one line
/// and exits with `code`: how the CLI ends a machine it started when it cannot go on (a failed
/// snapshot or main-thread filter) or has done what was asked (a snapshot taken).
func stopAndTerminate(_ machine: Machine, message: String, code: Int32) -> Never {
    machine.stop()
    _ = machine.wait()
    writeAll("swiftlet: \(message)\n", to: STDERR_FILENO)
    terminate(code)
}
