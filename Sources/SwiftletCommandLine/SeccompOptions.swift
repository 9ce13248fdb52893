import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// A command that runs a machine with seccomp filters (`boot`, `restore`, `run`): `--seccomp`
/// sets `seccompFilters`.
protocol SeccompFilteringCommand: Sendable {
    /// Whether the machine's threads (and the CLI's main thread) get their filters.
    var seccompFilters: Bool { get set }
}

extension CommandOption where Settings: SeccompFilteringCommand {
    static var seccomp: Self {
        CommandOption(
            "--seccomp", value: "on|off", default: "on",
            help: "Seccomp filters on every swiftlet thread (Docs/SECCOMP.md); off for debugging."
        ) { settings, text throws(UsageError) in
            guard let value = ValueSyntax.toggle(text) else { throw UsageError("use on or off") }
            settings.seccompFilters = value
        }
    }
}

extension Boot: SeccompFilteringCommand {
    var seccompFilters: Bool {
        get { configuration.seccomp }
        set { configuration.seccomp = newValue }
    }
}

extension RunArguments: SeccompFilteringCommand {
    /// `--seccomp`: `configuration.seccomp`.
    public var seccompFilters: Bool {
        get { configuration.seccomp }
        set { configuration.seccomp = newValue }
    }
}

/// The CLI's main thread after `Machine.start()`: its filter goes on there (the library never
/// filters its caller's thread). A filter that cannot be installed stops the machine and ends
/// the process with status 1.
package func installMainThreadFilter(_ machine: Machine) {
    do throws(SystemError) {
        try machine.installSeccompFilter(.main)
    } catch {
        stopAndTerminate(machine, message: "\(error)", code: 1)
    }
}

/// `swiftlet __seccomp-selftest <thread kind> [--raw-terminal]`: a hidden, test-only command
/// (Tests/SwiftletTests/SeccompTests.swift). It installs that kind's real filter (the one
/// `Machine.start()` compiles) on a thread of that kind's shape — a new thread, or this main
/// thread for `main` — checks that an allowed call still works, then makes a call no allowlist
/// has (getppid). The filter's SIGSYS report then ends the process with status 159; if the call
/// goes through, it exits 1. With `--raw-terminal`, stdin (a terminal) is put in raw mode first,
/// as `boot` does, so the test can check that the report restores it.
enum SeccompSelfTest {
    /// The hidden command's name.
    static let name = "__seccomp-selftest"

    static func run(_ arguments: ArraySlice<String>) -> Never {
        guard let kindName = arguments.first,
            let kind = SeccompThreadKind.allCases.first(where: { "\($0.name)" == kindName })
        else {
            let kinds = SeccompThreadKind.allCases.map { "\($0.name)" }.joined(separator: "|")
            writeAll("usage: swiftlet \(name) \(kinds) [--raw-terminal]\n", to: STDERR_FILENO)
            terminate(64)
        }
        let terminal = HostTerminal()
        let raw = arguments.dropFirst().contains("--raw-terminal") && terminal.isTerminal
        let filter: SeccompFilter
        do {
            try SeccompFilter.prepareProcess()
            let context = SeccompAllowlists.Context(terminalDescriptor: raw ? terminal.inputDescriptor : nil)
            filter = try SeccompAllowlists.filters(context)[kind]!
        } catch {
            writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
            terminate(1)
        }
        if raw { terminal.enterRawMode() }
        let body: @Sendable () -> Void = {
            do throws(SystemError) {
                try filter.install(threadKind: kind.name)
            } catch {
                writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
                terminate(1)
            }
            writeAll("filter installed; write(2) still works\n", to: STDERR_FILENO)
            _ = SystemCall.getppid.callWithoutArguments()
            writeAll("getppid was not refused\n", to: STDERR_FILENO)
            terminate(1)
        }
        if kind == .main {
            body()
        } else {
            do {
                try NativeThread(name: "seccomp self-test", stackSize: NativeThread.helperStackSize, body).join()
            } catch {
                writeAll("swiftlet: \(error)\n", to: STDERR_FILENO)
            }
        }
        terminate(1)
    }
}
