import Swiftlet
import SwiftletDeviceTree

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet dump-dtb`: writes the device tree a machine would boot with, for reading with
/// `dtc -I dtb -O dts`.
struct DumpDTB: MachineCommand {
    /// Only what the device tree describes: memory, vCPUs, command line, initrd, virtio devices.
    var configuration = MachineConfiguration(kernelPath: "")
    var arch = ""
    /// Virtio-mmio devices described besides those of `--disk`, `--net` and `--rng`.
    var virtioDevices = 0
    var output = ""

    /// Every option of `dump-dtb`, in the order its help lists them; those `boot` also takes are
    /// `boot`'s declarations (`MachineOptions.swift`).
    static let syntax = CommandSyntax<DumpDTB>(
        options: [
            CommandOption("--arch", value: "arch", required: true, help: "The guest architecture: aarch64.") {
                dump, text throws(UsageError) in
                guard text == "aarch64" || text == "arm64" else {
                    throw UsageError("unsupported architecture; device trees are built for aarch64 only")
                }
                dump.arch = text
            },
            .memory, .cpus, .cmdline, .initrd, .disk, .net, .rng,
            CommandOption(
                "--virtio-devices", value: "n", default: "0",
                help: "Number of virtio-mmio devices to describe besides those of --disk, --net and --rng."
            ) { dump, text throws(UsageError) in
                dump.virtioDevices = try ValueSyntax.wholeNumber(reading: text)
            },
        ],
        arguments: [
            CommandArgument(name: "<OUT>", help: "Where to write the blob ('-' for stdout).") { dump, text in dump.output = text }
        ])

    static let help = CommandHelp(
        abstract: "Write the flattened device tree (DTB) that describes a machine.",
        arguments: syntax.argumentHelp,
        options: syntax.optionHelp,
        discussion: wrap(
            """
            Builds the device tree an aarch64 guest boots with (memory, vCPUs with PSCI, GICv3, \
            timer, the ns16550a UART, virtio-mmio devices, /chosen) and writes it to OUT \
            ('-' for stdout). Read it with: dtc -I dtb -O dts OUT. Docs/DEVICETREE.md describes \
            the layout. Only --arch aarch64 is supported: x86_64 guests get no device tree. \
            --disk, --net and --rng are read and checked as boot reads them, and each takes a \
            virtio-mmio slot (no image or tap is opened); --initrd is opened only for its size. \
            A bad value exits 64, a file that cannot be read or written 1.
            """, width: CommandHelp.width)
    )

    /// The virtio-mmio devices the tree describes: `--disk`, `--net`, `--rng`, then `--virtio-devices` more.
    var virtioDeviceCount: Int {
        configuration.disks.count + configuration.networks.count + (configuration.rng ? 1 : 0) + virtioDevices
    }

    /// Reads `swiftlet dump-dtb`'s arguments (those after `dump-dtb`) and checks their values:
    /// the devices with `MachineConfiguration.validateDevices()`, the rest with
    /// `AArch64MachineDescription`'s checks (the initrd's size is checked by `run()`, which reads it).
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> DumpDTB {
        var dump = DumpDTB()
        try syntax.parse(arguments, into: &dump)
        do { try dump.configuration.validateDevices() } catch { throw error.usageError }
        do {
            _ = try AArch64MachineDescription(
                memorySize: dump.configuration.memorySize, vcpuCount: dump.configuration.vcpuCount,
                commandLine: dump.configuration.commandLine, virtioDeviceCount: dump.virtioDeviceCount)
        } catch {
            throw error.usageError
        }
        return dump
    }

    /// Builds the device tree and writes it, then exits 0; exits 1 if the initrd cannot be read
    /// or does not fit, or the blob cannot be built or written.
    func run() -> Never {
        do {
            let machine = try AArch64MachineDescription(configuration, virtioDeviceCount: virtioDeviceCount)
            try machine.deviceTree().write(toFile: output)
        } catch {
            failToBuild(error)
        }
        terminate(0)
    }
}

extension AArch64MachineError {
    /// A value `AArch64MachineDescription` refuses, as a usage error naming the option at fault.
    var usageError: UsageError {
        let option =
            switch self {
            case .memoryTooSmall, .memoryTooLarge, .memoryNotPageAligned: "--memory"
            case .vcpuCount: "--cpus"
            case .virtioDeviceCount: "--virtio-devices, --disk, --net and --rng"
            case .commandLineContainsNUL, .commandLineTooLong: "--cmdline"
            case .initrdUnreadable, .initrdNotARegularFile, .initrdDoesNotFit: "--initrd"
            }
        return UsageError("\(option): \(self)")
    }
}
