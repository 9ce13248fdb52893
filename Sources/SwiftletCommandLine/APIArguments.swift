import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet --api-sock PATH [--id ID] [--config-file FILE] [--no-api] [--boot-timer]`: the
/// Firecracker-compatible mode (Docs/API-SOCKET.md). `swiftlet` checks the command line (usage
/// errors and help need no NIO) and execs `swiftlet-api`, which parses it again.
public struct APIArguments: Sendable {
    /// `--api-sock`: the Unix socket to serve (Firecracker's default /run/firecracker.socket).
    public var socketPath = "/run/firecracker.socket"
    /// `--id`: the instance id `GET /` reports.
    public var id = "anonymous-instance"
    /// `--config-file`: boot from this Firecracker configuration.
    public var configFile: String?
    /// `--no-api`: open no socket (needs `--config-file`).
    public var noAPI = false
    /// `--boot-timer`: attach the boot-timer device.
    public var bootTimer = false
    /// Seccomp filters on the machine's threads (Docs/SECCOMP.md); `--no-seccomp` turns them off.
    public var seccomp = true
    /// `--cpuid-mask`: CPUID features hidden from the guest (a Swiftlet option, as on `boot`:
    /// Firecracker's CPU templates have no equivalent in its API that Swiftlet implements).
    public var cpuidMask: [CPUIDFeature] = []
    /// `--http-api-max-payload-size`.
    public var maximumPayloadSize = 51200

    /// The options that select API mode: any of them on a `swiftlet` command line without a command.
    static let modeOptions: Set<String> = [
        "--api-sock", "--id", "--config-file", "--no-api", "--boot-timer", "--no-seccomp", "--cpuid-mask",
    ]

    static let syntax = CommandSyntax<APIArguments>(options: [
        CommandOption(
            "--api-sock", value: "path", default: "/run/firecracker.socket", help: "The API's Unix socket (must not exist)."
        ) {
            arguments, text in arguments.socketPath = text
        },
        CommandOption(
            "--id", value: "id", default: "anonymous-instance", help: "The microVM's id (letters, digits, '-', up to 64)."
        ) {
            arguments, text throws(UsageError) in
            guard (1...64).contains(text.count), text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") })
            else {
                throw UsageError("use 1 to 64 letters, digits and '-'")
            }
            arguments.id = text
        },
        CommandOption("--config-file", value: "file", help: "Boot from this Firecracker JSON configuration without API calls.") {
            arguments, text in arguments.configFile = text
        },
        CommandOption(flag: "--no-api", help: "Open no API socket (needs --config-file).") { $0.noAPI = true },
        CommandOption(flag: "--boot-timer", help: "Attach the boot-timer device (port 0x440).") { $0.bootTimer = true },
        CommandOption(
            flag: "--no-seccomp", help: "No seccomp filters on the machine's threads (as swiftlet boot --seccomp off)."
        ) {
            $0.seccomp = false
        },
        CommandOption("--cpuid-mask", value: "list", help: "CPUID features to hide, as on swiftlet boot.") {
            arguments, text throws(UsageError) in
            do { arguments.cpuidMask = try CPUIDFeature.parseMask(text) } catch { throw UsageError("\(error)") }
        },
        CommandOption("--http-api-max-payload-size", value: "bytes", default: "51200", help: "The largest request body accepted.")
        {
            arguments, text throws(UsageError) in
            guard let size = Int(text), size > 0 else { throw UsageError("not a positive whole number") }
            arguments.maximumPayloadSize = size
        },
    ])

    /// Whether `arguments` (after the program name) ask for API mode.
    static func selects(_ arguments: ArraySlice<String>) -> Bool {
        arguments.contains { argument in
            modeOptions.contains(String(argument.split(separator: "=", maxSplits: 1).first ?? ""))
        }
    }

    /// Reads the API-mode command line.
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> APIArguments {
        var parsed = APIArguments()
        try syntax.parse(arguments, into: &parsed)
        if parsed.noAPI && parsed.configFile == nil { throw UsageError("--no-api needs --config-file") }
        return parsed
    }

    /// `swiftlet-api`'s entry: the parsed command line, or a usage error (exit 64).
    public static func parseOrExit(_ arguments: [String]) -> APIArguments {
        do { return try parse(arguments) } catch { Command.root.fail(error) }
    }

    /// Prints `swiftlet: <message>` on stderr and exits 1.
    public static func fail(_ message: String) -> Never {
        writeAll("swiftlet: \(message)\n", to: STDERR_FILENO)
        terminate(1)
    }
}
