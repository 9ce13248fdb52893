import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet run`'s command line: where the bundle is, the machine's size and devices, the kernel
/// (found in the cache unless given) and the command that replaces the bundle's `process.args`.
/// `swiftlet` parses it (so help and usage errors need no JSON) and execs `swiftlet-run`, which
/// parses it again with `parse` and runs the bundle (Docs/RUN.md).
public struct RunArguments: MachineCommand, TimedCommand {
    /// The machine as the options describe it (memory, vCPUs, extra disks, network interfaces).
    public var configuration = MachineConfiguration(kernelPath: "")
    /// `--bundle`: the bundle directory (default: the current directory, as runc's).
    public var bundle = "."
    /// `<ID>`: the container's name; it names the per-run files.
    public var id: String?
    /// `--kernel`, if given.
    public var kernel: String?
    /// `--timeout`, if given.
    public var timeout: Double?
    /// The words after `--`, if any: they replace `process.args`.
    public var command: [String]?

    /// Every option of `run`, in help order; `--memory`, `--cpus`, `--disk`, `--net` and
    /// `--timeout` are `boot`'s declarations.
    static let syntax = CommandSyntax<RunArguments>(
        options: [
            CommandOption(
                "--bundle", value: "dir", default: ".",
                help: "The OCI bundle: a directory with config.json and its root filesystem."
            ) {
                run, text in run.bundle = text
            },
            .memory, .cpus, .net, .disk, .vsock, .timeout, .seccomp,
            CommandOption("--kernel", value: "file", help: "The guest kernel (default: the cache's kernel-current/vmlinux).") {
                run, text in run.kernel = text
            },
            CommandOption(
                "--initrd", value: "file", help: "The initramfs with Swiftlet's init (default: the cache's initramfs.cpio)."
            ) {
                run, text in run.configuration.initrdPath = text
            },
        ],
        arguments: [
            CommandArgument(
                name: "<ID>", help: "The container's name (letters, digits, '.', '_', '-').",
                apply: { run, text in run.id = text }, optional: true)
        ])

    static let help = CommandHelp(
        abstract: "Run an OCI runtime bundle (config.json + root filesystem) as a microVM.",
        arguments: syntax.argumentHelp,
        options: syntax.optionHelp,
        discussion: """
            The bundle's root directory becomes the guest's root disk: an ext4 image built with
            mkfs.ext4 -d (e2fsprogs) and cached by content in $SWIFTLET_CACHE/rootfs (default
            /var/cache/swiftlet), attached read-only when root.readonly is set (a writable root
            gets a copy per run, discarded at the end). The guest kernel and initramfs come from
            'make guest-kernel guest-initramfs' ($SWIFTLET_CACHE/kernel-current/vmlinux and
            initramfs.cpio; kernel-current/boot.conf adds what this host needs). Swiftlet's init
            mounts the root and the bundle's proc, sysfs, tmpfs and devtmpfs mounts, sets the
            hostname, rlimits, capability bounding set, uid/gid, cwd and environment, and runs
            process.args (or the command after --). Its output is the console's. The root disk is
            /dev/vda and the process-spec disk /dev/vdb in the guest; --disk disks follow (vdc, ...).

            Fields of config.json that Swiftlet cannot honour are refused, naming the field
            (Docs/RUN.md lists what is read, accepted and refused).

            Exit status: the process's exit status (128 + N when killed by signal N; 127 when it
            cannot be executed); 1 the bundle is invalid or refused, the guest kernel is missing,
            the root image cannot be built, the VM cannot be built, or the guest init could not
            start the process; 64 a usage error; 124 --timeout reached; otherwise as for
            'swiftlet boot'.
            """)

    /// Reads `run`'s arguments (those after `run`): options and `<ID>`, then everything after
    /// the first `--` as the command. Checks the machine configuration as `boot` does.
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> RunArguments {
        let all = Array(arguments)
        var run = RunArguments()
        var options = all[...]
        if let dashes = all.firstIndex(of: "--") {
            options = all[..<dashes]
            let command = Array(all[(dashes + 1)...])
            guard !command.isEmpty else { throw UsageError("no command after '--'") }
            run.command = command
        }
        try syntax.parse(options, into: &run)
        if let id = run.id,
            id.isEmpty || !id.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) || id.hasPrefix(".")
        {
            throw UsageError("<ID> '\(id)': use letters, digits, '.', '_' and '-'")
        }
        var check = run.configuration
        check.kernelPath = "kernel"
        do { try check.validate() } catch { throw error.usageError }
        return run
    }

    /// `swiftlet-run`'s entry: `arguments` as `run` reads them; prints help and exits 0 for
    /// `--help`, prints a usage error and exits 64 for a bad command line.
    public static func parseOrExit(_ arguments: [String]) -> RunArguments {
        if ArgumentReader.contains("-h", "--help", in: arguments) {
            Command.run.printHelp()
            terminate(0)
        }
        do { return try parse(arguments) } catch { Command.run.fail(error) }
    }

    /// Prints `swiftlet: <error>` and exits with status 1 (a bundle, kernel, image or VM that
    /// cannot be used).
    public static func fail(_ error: any Error) -> Never { failToBuild(error) }

    /// Replaces this process with `swiftlet-run` (beside this executable), passing `arguments`.
    static func execRunner(_ arguments: ArraySlice<String>) -> Never {
        execSibling("swiftlet-run", arguments, needed: "swiftlet run")
    }
}

/// Replaces this process with the executable `name` from the directory of the running one,
/// passing `arguments`; exits 1 with a message naming the path when it is not there. `swiftlet`
/// execs `swiftlet-run` and `swiftlet-api` this way, so that their JSON and HTTP libraries never
/// load into `swiftlet boot`.
func execSibling(_ name: String, _ arguments: ArraySlice<String>, needed what: String) -> Never {
    var buffer = [CChar](repeating: 0, count: 4097)
    let count = readlink("/proc/self/exe", &buffer, 4096)
    let executable = count > 0 ? String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    let directory = executable.lastIndex(of: "/").map { String(executable[..<$0]) } ?? "."
    let path = directory + "/" + name
    let argv = ([name] + arguments).map { strdup($0) } + [nil]
    execv(path, argv)
    let why = String(cString: strerror(errno))
    failToBuild(UsageError("\(what) needs \(name) beside swiftlet: \(path): \(why) (build it with 'swift build')"))
}
