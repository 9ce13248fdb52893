import Swiftlet
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet boot`'s snapshot options: `--snapshot-when-ready DIR`, `--snapshot-on-signal DIR`
/// and `--continue-after-snapshot`.
extension CommandOption where Settings == Boot {
    static var snapshotWhenReady: Self {
        CommandOption(
            "--snapshot-when-ready", value: "dir",
            help: "Snapshot the VM into this directory when the guest writes the boot timer (implies --boot-timer), then stop."
        ) { boot, text throws(UsageError) in
            guard !text.isEmpty else { throw UsageError("needs a directory") }
            boot.snapshotDirectory = text
            boot.configuration.bootTimer = true
        }
    }

    static var snapshotOnSignal: Self {
        CommandOption(
            "--snapshot-on-signal", value: "dir",
            help: "Snapshot the running VM into this directory when swiftlet receives SIGUSR1, then stop."
        ) { boot, text throws(UsageError) in
            guard !text.isEmpty else { throw UsageError("needs a directory") }
            boot.signalSnapshotDirectory = text
        }
    }

    static var continueAfterSnapshot: Self {
        CommandOption(
            flag: "--continue-after-snapshot",
            help: "Let the guest run on after a snapshot (--snapshot-when-ready, --snapshot-on-signal)."
        ) {
            boot in boot.continueAfterSnapshot = true
        }
    }
}

/// `swiftlet boot --snapshot-on-signal DIR`: a thread that waits for SIGUSR1 (`kill -USR1`) and
/// snapshots the running machine into DIR each time. Without `--continue-after-snapshot` the first
/// snapshot also stops the machine (swiftlet then exits 0, or 1 if the snapshot failed); with it,
/// the guest runs on and each further SIGUSR1 writes the directory again.
///
/// SIGUSR1 is blocked in the calling thread before the machine's threads exist (they inherit the
/// mask), so only this thread's `sigwait` ever takes it.
final class SignalSnapshotter: Sendable {
    /// The signal that asks for a snapshot.
    static let signal = SIGUSR1

    private let waiter: NativeThread
    private let machine: Machine
    private let shared = Shared()

    /// What the waiting thread and its owner share.
    private final class Shared: Sendable {
        let finished = Atomic<Bool>(false)
        let outcome = Mutex<SnapshotOutcome?>(nil)
    }

    /// What the last requested snapshot did.
    enum SnapshotOutcome: Sendable {
        case written
        case failed(SnapshotError)
    }

    /// Blocks SIGUSR1 in the calling thread: call it before building the machine.
    static func blockSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts waiting for SIGUSR1 on behalf of `machine`.
    init(machine: Machine, directory: String, continueAfter: Bool) throws(SystemError) {
        let shared = self.shared
        self.machine = machine
        waiter = try NativeThread(name: "snapshot on signal", stackSize: NativeThread.helperStackSize) {
            // Filtered once the machine has started (after the privilege drop), as the stopper.
            machine.waitUntilStarted(unless: { shared.finished.load(ordering: .acquiring) })
            if shared.finished.load(ordering: .acquiring) { return }
            do throws(SystemError) {
                try machine.installSeccompFilter(.snapshotter)
            } catch {
                writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
                machine.stop()
                return
            }
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SignalSnapshotter.signal)
            while true {
                var received: Int32 = 0
                guard sigwait(&set, &received) == 0 else { continue }
                if shared.finished.load(ordering: .acquiring) { return }
                do throws(SnapshotError) {
                    try machine.snapshot(to: directory)
                    shared.outcome.withLock { $0 = .written }
                    writeAll("swiftlet: snapshot written to \(directory)\n", to: STDERR_FILENO)
                    if !continueAfter {
                        machine.stop()
                        return
                    }
                } catch {
                    shared.outcome.withLock { $0 = .failed(error) }
                    writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
                    machine.stop()
                    return
                }
            }
        }
    }

    /// What the last snapshot did, if one was requested.
    var lastOutcome: SnapshotOutcome? { shared.outcome.withLock { $0 } }

    /// Ends the waiting thread (after the machine has ended).
    func cancel() {
        if shared.finished.exchange(true, ordering: .acquiringAndReleasing) { return }
        machine.wakeStartWaiters()
        waiter.send(Self.signal)
        waiter.join()
    }
}

extension Boot {
    /// With `--snapshot-when-ready`: waits for the guest's boot-timer write, snapshots the paused
    /// machine, then stops it (exit 0 once it has stopped) or, with `--continue-after-snapshot`,
    /// lets it run on. A failed snapshot exits 1; so does a guest that ends before it is ready.
    func snapshotWhenReady(_ machine: Machine) {
        guard let directory = snapshotDirectory else { return }
        guard machine.pauseWhenReady() else {
            _ = machine.wait()
            writeAll("swiftlet: the guest ended before it wrote the boot timer; no snapshot taken\n", to: STDERR_FILENO)
            terminate(1)
        }
        do {
            try machine.snapshot(to: directory)
        } catch {
            stopAndTerminate(machine, message: "\(error)", code: 1)
        }
        if continueAfterSnapshot {
            machine.resume()
            return
        }
        stopAndTerminate(machine, message: "snapshot written to \(directory)", code: 0)
    }
}

/// `swiftlet restore DIR`: a machine built from a snapshot, run with the terminal console.
struct Restore: PrivilegeDroppingCommand, SeccompFilteringCommand {
    var directory = ""
    var diskPaths: [String] = []
    var taps: [String] = []
    /// `--vsock uds=PATH`: where the saved vsock device listens now (default: its saved path).
    var vsockPath: String?
    var timeout: Double?
    /// `--uid`, `--gid`, `--chroot` (PrivilegeOptions.swift).
    var userID: UInt32?
    var groupID: UInt32?
    var rootDirectory: String?
    /// What they ask for, once parsed.
    var privilegeDrop: PrivilegeDrop?
    /// `--seccomp` (SeccompOptions.swift).
    var seccompFilters = true

    static let syntax = CommandSyntax<Restore>(
        options: [
            CommandOption(
                "--disk", value: "file", help: "The image for the next saved disk, in order (default: its saved path)."
            ) { restore, text throws(UsageError) in
                guard !text.isEmpty else { throw UsageError("needs a path") }
                restore.diskPaths.append(text)
            },
            CommandOption("--net", value: "tap", help: "The tap for the next saved interface, in order (default: its saved tap).")
            {
                restore, text throws(UsageError) in
                guard !text.isEmpty else { throw UsageError("needs a tap name") }
                restore.taps.append(text)
            },
            CommandOption(
                "--vsock", value: "vsock",
                help: "uds=PATH: the Unix socket of the saved vsock device (default: its saved path)."
            ) { restore, text throws(UsageError) in
                do throws(KeyValueError) {
                    restore.vsockPath = try DeviceOptions.restoredVsock.parse(text).text("uds")
                } catch {
                    throw UsageError(error.problem.description)
                }
            },
            CommandOption("--timeout", value: "seconds", help: "Stop the VM after this many seconds (exit status 124).") {
                restore, text throws(UsageError) in restore.timeout = try ValueSyntax.seconds(reading: text)
            },
            .uid, .gid, .chroot, .seccomp,
        ],
        arguments: [
            CommandArgument(name: "<DIR>", help: "The snapshot directory (swiftlet boot --snapshot-when-ready).") {
                restore, text in restore.directory = text
            }
        ])

    static let help = CommandHelp(
        abstract: "Restore a microVM from a snapshot and run it with the serial console on this terminal.",
        arguments: syntax.argumentHelp,
        options: syntax.optionHelp,
        discussion: wrap(
            """
            Reads DIR/state (checked: magic, format version, CRC-32) and maps DIR/memory \
            privately (copy on write: the snapshot never changes, and any number of VMs may be \
            restored from it at once). The vCPUs go on where they stopped; devices are rebuilt \
            from their saved state, disks reopened at their saved paths (or --disk, in order) and \
            checked for their saved size, interfaces on their saved taps (or --net), the vsock \
            device listening again at its saved path (or --vsock uds=PATH; the guest's connections \
            are reset: it gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). Exit status \
            as for boot: 1 when the snapshot cannot be restored (a missing, truncated or \
            corrupted file, another format version, a disk of another size), 64 for a bad value. \
            --uid, --gid and --chroot drop privileges once everything is open, as for boot.
            """, width: CommandHelp.width)
    )

    /// Reads `swiftlet restore`'s arguments (those after `restore`).
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> Restore {
        var restore = Restore()
        try syntax.parse(arguments, into: &restore)
        restore.privilegeDrop = try restore.parsedPrivilegeDrop()
        do { try restore.privilegeDrop?.validate() } catch { throw error.usageError }
        return restore
    }

    /// Restores and runs the machine, then ends the process with its exit status (1 if it cannot
    /// be restored).
    func run() -> Never {
        signal(SIGPIPE, SIG_IGN)
        let machine: Machine
        let signals: SignalStopper
        do {
            machine = try Machine(
                restoringFrom: directory, diskPaths: diskPaths, taps: taps, vsockPath: vsockPath, privilegeDrop: privilegeDrop,
                seccomp: seccompFilters)
            signals = try SignalStopper(stopping: machine, on: [SIGINT, SIGTERM, SIGHUP])
            if let timeout { machine.setDeadline(after: timeout) }
            try machine.start()
        } catch {
            failToBuild(error)
        }
        installMainThreadFilter(machine)
        let exit = machine.wait()
        signals.cancel()
        if !exit.isClean { writeAll("swiftlet: \(exit)\n", to: STDERR_FILENO) }
        terminate(exit.exitCode)
    }
}
