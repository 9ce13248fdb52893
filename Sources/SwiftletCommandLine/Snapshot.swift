import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet boot`'s snapshot options: `--snapshot-when-ready DIR` and `--continue-after-snapshot`.
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

    static var continueAfterSnapshot: Self {
        CommandOption(flag: "--continue-after-snapshot", help: "Let the guest run on after --snapshot-when-ready.") {
            boot in boot.continueAfterSnapshot = true
        }
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
            machine.stop()
            _ = machine.wait()
            writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
            terminate(1)
        }
        if continueAfterSnapshot {
            machine.resume()
            return
        }
        machine.stop()
        _ = machine.wait()
        writeAll("swiftlet: snapshot written to \(directory)\n", to: STDERR_FILENO)
        terminate(0)
    }
}

/// `swiftlet restore DIR`: a machine built from a snapshot, run with the terminal console.
struct Restore: PrivilegeDroppingCommand {
    var directory = ""
    var diskPaths: [String] = []
    var taps: [String] = []
    var timeout: Double?
    /// `--uid`, `--gid`, `--chroot` (PrivilegeOptions.swift).
    var userID: UInt32?
    var groupID: UInt32?
    var rootDirectory: String?
    /// What they ask for, once parsed.
    var privilegeDrop: PrivilegeDrop?

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
            CommandOption("--timeout", value: "seconds", help: "Stop the VM after this many seconds (exit status 124).") {
                restore, text throws(UsageError) in restore.timeout = try ValueSyntax.seconds(reading: text)
            },
            .uid, .gid, .chroot,
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
            checked for their saved size, interfaces on their saved taps (or --net). Exit status \
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
            machine = try Machine(restoringFrom: directory, diskPaths: diskPaths, taps: taps, privilegeDrop: privilegeDrop)
            signals = try SignalStopper(stopping: machine, on: [SIGINT, SIGTERM, SIGHUP])
            if let timeout { machine.setDeadline(after: timeout) }
            try machine.start()
        } catch {
            failToBuild(error)
        }
        let exit = machine.wait()
        signals.cancel()
        if !exit.isClean { writeAll("swiftlet: \(exit)\n", to: STDERR_FILENO) }
        terminate(exit.exitCode)
    }
}
