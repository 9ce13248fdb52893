import Swiftlet

/// The settings of a command that describes a machine (`boot`, `dump-dtb`): the options below
/// write into its configuration, and each command checks that with the library's validation.
protocol MachineCommand: Sendable {
    var configuration: MachineConfiguration { get set }
}

/// The options `boot` and `dump-dtb` share, declared once for both.
extension CommandOption where Settings: MachineCommand {
    static var memory: Self {
        CommandOption(
            "--memory", value: "size", default: ValueSyntax.byteSizeText(MachineConfiguration.defaultMemorySize),
            help: "Guest memory, e.g. 128M or 1G (binary units)."
        ) { settings, text throws(UsageError) in
            settings.configuration.memorySize = try ValueSyntax.byteSize(reading: text)
        }
    }

    static var cpus: Self {
        CommandOption("--cpus", value: "n", default: "1", help: "Number of vCPUs.") { settings, text throws(UsageError) in
            settings.configuration.vcpuCount = try ValueSyntax.wholeNumber(reading: text)
        }
    }

    static var cmdline: Self {
        CommandOption("--cmdline", value: "text", help: "The kernel command line (replaces the default).") { settings, text in
            settings.configuration.commandLine = text
        }
    }

    static var initrd: Self {
        CommandOption("--initrd", value: "file", help: "An initrd or initramfs image for a Linux kernel.") { settings, text in
            settings.configuration.initrdPath = text
        }
    }

    static var disk: Self {
        CommandOption(
            "--disk", value: "disk",
            help: "A virtio-blk disk: \(DeviceOptions.disk.synopsis) (repeatable); rate limits: \(DeviceOptions.disk.otherKeys)."
        ) {
            settings, text throws(UsageError) in
            do throws(KeyValueError) { settings.configuration.disks.append(try DeviceOptions.diskConfiguration(text)) } catch {
                throw UsageError(error.problem.description)
            }
        }
    }

    static var net: Self {
        CommandOption(
            "--net", value: "net",
            help:
                "A virtio-net interface over a host tap: \(DeviceOptions.network.synopsis) (repeatable); rate limits: \(DeviceOptions.network.otherKeys)."
        ) { settings, text throws(UsageError) in
            do throws(KeyValueError) {
                settings.configuration.networks.append(try DeviceOptions.networkConfiguration(text))
            } catch {
                throw UsageError(error.problem.description)
            }
        }
    }

    static var vsock: Self {
        CommandOption(
            "--vsock", value: "vsock",
            help: "A virtio-vsock device over host Unix sockets: \(DeviceOptions.vsock.synopsis) (Docs/VSOCK.md)."
        ) { settings, text throws(UsageError) in
            do throws(KeyValueError) { settings.configuration.vsock = try DeviceOptions.vsockConfiguration(text) } catch {
                throw UsageError(error.problem.description)
            }
        }
    }

    static var rng: Self {
        CommandOption(flag: "--rng", help: "Add a virtio-rng entropy device (backed by getrandom).") { settings in
            settings.configuration.rng = true
        }
    }
}

/// A command that stops its machine after a time (`boot`, `run`).
protocol TimedCommand: Sendable {
    var timeout: Double? { get set }
}

extension CommandOption where Settings: TimedCommand {
    static var timeout: Self {
        CommandOption("--timeout", value: "seconds", help: "Stop the VM after this many seconds (exit status 124).") {
            settings, text throws(UsageError) in settings.timeout = try ValueSyntax.seconds(reading: text)
        }
    }
}

/// The device options' grammars, and how their values become the library's configurations.
/// Only the syntax is checked here; values (an id's length, a tap name, a unicast MAC) are
/// checked by `MachineConfiguration.validate()` with everything else.
enum DeviceOptions {
    /// `--disk path=FILE[,readonly=on][,id=NAME][,direct=on][,bw=SIZE/MS[/BURST]][,ops=N/MS[/BURST]]`;
    /// a bare value is the path. `bw` and `ops` are token buckets (Docs/RATE-LIMITS.md).
    static let disk = KeyValueGrammar(
        option: "--disk", bareKey: "path",
        keys: [
            OptionKey("path", aliases: ["file"], .text, placeholder: "FILE", required: true),
            OptionKey("readonly", aliases: ["ro"], .toggle, placeholder: "on"),
            OptionKey("id", aliases: ["serial"], .text, placeholder: "NAME"),
            OptionKey("direct", .toggle, placeholder: "on"),
            OptionKey("bw", .tokenBucket(bytes: true), placeholder: "SIZE/MS[/BURST]", inSynopsis: false),
            OptionKey("ops", .tokenBucket(bytes: false), placeholder: "N/MS[/BURST]", inSynopsis: false),
        ])

    /// `--net tap=NAME[,mac=MAC][,offload=off][,rx-bw=…][,rx-ops=…][,tx-bw=…][,tx-ops=…]`; a bare
    /// value is the tap name. The rate limits are token buckets as for `--disk`, per direction
    /// (rx: to the guest, tx: from it).
    static let network = KeyValueGrammar(
        option: "--net", bareKey: "tap",
        keys: [
            OptionKey("tap", aliases: ["ifname"], .text, placeholder: "NAME", required: true),
            OptionKey("mac", .text, placeholder: "MAC"),
            OptionKey("offload", aliases: ["offloads"], .toggle, placeholder: "off"),
            OptionKey("rx-bw", .tokenBucket(bytes: true), placeholder: "SIZE/MS[/BURST]", inSynopsis: false),
            OptionKey("rx-ops", .tokenBucket(bytes: false), placeholder: "N/MS[/BURST]", inSynopsis: false),
            OptionKey("tx-bw", .tokenBucket(bytes: true), placeholder: "SIZE/MS[/BURST]", inSynopsis: false),
            OptionKey("tx-ops", .tokenBucket(bytes: false), placeholder: "N/MS[/BURST]", inSynopsis: false),
        ])

    /// `--vsock cid=N,uds=PATH`: the guest's CID and the Unix socket Swiftlet listens on
    /// (Firecracker's hybrid vsock; guest connections to host port P go to `PATH_P`).
    static let vsock = KeyValueGrammar(
        option: "--vsock",
        keys: [
            OptionKey("cid", aliases: ["guest-cid"], .text, placeholder: "N", required: true),
            OptionKey("uds", aliases: ["path", "uds-path"], .text, placeholder: "PATH", required: true),
        ])

    /// `swiftlet restore --vsock uds=PATH` (a bare value is the path): the CID is the saved one.
    static let restoredVsock = KeyValueGrammar(
        option: "--vsock", bareKey: "uds",
        keys: [OptionKey("uds", aliases: ["path", "uds-path"], .text, placeholder: "PATH", required: true)])

    /// A `--vsock` value as the device it describes (the CID a decimal number; its range is
    /// checked with the configuration).
    static func vsockConfiguration(_ text: String) throws(KeyValueError) -> VsockConfiguration {
        let values = try vsock.parse(text)
        let cidText = values.text("cid") ?? ""
        guard cidText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let cid = UInt64(cidText) else {
            throw vsock.error(.badValue(key: "cid", value: cidText, expected: "use a decimal number from 3"), in: text)
        }
        return VsockConfiguration(guestCID: cid, udsPath: values.text("uds") ?? "")
    }

    /// The rate limit of buckets `bandwidth` and `operations` (keys of `values`), nil when neither
    /// was given.
    private static func rateLimit(_ values: KeyValues, bandwidth: String, operations: String) -> RateLimit? {
        let limit = RateLimit(bandwidth: values.tokenBucket(bandwidth), operations: values.tokenBucket(operations))
        return limit.isUnlimited ? nil : limit
    }

    /// A `--disk` value as the disk it describes (by default writable, id `diskN`, page cache, no
    /// rate limit).
    static func diskConfiguration(_ text: String) throws(KeyValueError) -> DiskConfiguration {
        let values = try disk.parse(text)
        return DiskConfiguration(
            path: values.text("path") ?? "", readOnly: values.toggle("readonly") ?? false, id: values.text("id"),
            directIO: values.toggle("direct") ?? false, rateLimit: rateLimit(values, bandwidth: "bw", operations: "ops"))
    }

    /// A `--net` value as the interface it describes (by default the generated MAC, offloads on).
    static func networkConfiguration(_ text: String) throws(KeyValueError) -> NetworkConfiguration {
        let values = try network.parse(text)
        var mac: MACAddress?
        if let macText = values.text("mac") {
            guard let parsed = MACAddress(parsing: macText) else {
                throw network.error(
                    .badValue(key: "mac", value: macText, expected: "use six hex octets, e.g. 02:00:00:00:00:01"), in: text)
            }
            mac = parsed
        }
        return NetworkConfiguration(
            tap: values.text("tap") ?? "", mac: mac, offloads: values.toggle("offload") ?? true,
            receiveRateLimit: rateLimit(values, bandwidth: "rx-bw", operations: "rx-ops"),
            transmitRateLimit: rateLimit(values, bandwidth: "tx-bw", operations: "tx-ops"))
    }
}

extension ConfigurationError {
    /// The configuration error as a usage error naming the option at fault:
    /// `--cpus: 0 vCPUs requested; between 1 and 254 are supported`.
    var usageError: UsageError {
        if case .badVsock(let reason) = self { return UsageError("--vsock: \(reason)") }
        let option =
            switch self {
            case .memoryTooSmall, .memoryTooLarge, .memoryNotPageAligned: "--memory"
            case .vcpuCount: "--cpus"
            case .missingKernel: "--kernel"
            case .tooManyDisks, .diskWithoutPath, .diskIdentifierTooLong, .badDiskRateLimit: "--disk"
            case .tooManyVirtioDevices: "--disk, --net, --rng and --vsock"
            case .badVsock: "--vsock"
            case .badTapName, .macNotUnicast, .duplicateMAC, .badNetworkRateLimit: "--net"
            case .badPrivilegeDrop: "--uid, --gid and --chroot"
            }
        return UsageError("\(option): \(self)")
    }
}
