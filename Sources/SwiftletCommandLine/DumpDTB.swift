import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet dump-dtb`: writes the device tree a machine would boot with, for reading with
/// `dtc -I dtb -O dts`.
struct DumpDTB {
    static let help = CommandHelp(
        abstract: "Write the flattened device tree (DTB) that describes a machine.",
        arguments: [
            HelpEntry("<OUT>", help: "Where to write the blob ('-' for stdout)."),
        ],
        options: [
            HelpEntry("--arch", value: "arch", help: "The guest architecture: aarch64."),
            HelpEntry("--memory", value: "size", help: "Guest memory, e.g. 128M or 1G (binary units).", default: "128M"),
            HelpEntry("--cpus", value: "n", help: "Number of vCPUs.", default: "1"),
            HelpEntry("--cmdline", value: "text", help: "The kernel command line (replaces the default)."),
            HelpEntry("--initrd", value: "file", help: "An initrd image: its size sets /chosen's initrd range."),
            HelpEntry("--virtio-devices", value: "n", help: "Number of virtio-mmio devices to describe.", default: "0"),
        ],
        discussion: wrap("""
            Builds the device tree an aarch64 guest boots with (memory, vCPUs with PSCI, GICv3, \
            timer, the ns16550a UART, virtio-mmio devices, /chosen) and writes it to OUT \
            ('-' for stdout). Read it with: dtc -I dtb -O dts OUT. Docs/DEVICETREE.md describes \
            the layout. Only --arch aarch64 is supported: x86_64 guests get no device tree.
            """, width: CommandHelp.width)
    )

    var arch = ""
    var memory = "128M"
    var cpus = "1"
    var cmdline: String?
    var initrd: String?
    var virtioDevices = "0"
    var output = ""

    /// Reads `swiftlet dump-dtb`'s arguments (those after `dump-dtb`). The values are checked by
    /// `run()`: a bad one there is a one-line error with exit status 1.
    static func parse(_ arguments: some Sequence<String>) throws(UsageError) -> DumpDTB {
        var dump = DumpDTB()
        var arch: String?
        var output: String?
        var reader = ArgumentReader(arguments)
        while let argument = reader.next() {
            switch argument {
            case .option("--arch"): arch = try reader.value()
            case .option("--memory"): dump.memory = try reader.value()
            case .option("--cpus"): dump.cpus = try reader.value()
            case .option("--cmdline"): dump.cmdline = try reader.value()
            case .option("--initrd"): dump.initrd = try reader.value()
            case .option("--virtio-devices"): dump.virtioDevices = try reader.value()
            case .option(let name): throw ArgumentReader.unknownOption(name)
            case .positional(let text):
                guard output == nil else { throw ArgumentReader.unexpectedArgument(text) }
                output = text
            }
        }
        guard let arch else { throw UsageError("missing '--arch <arch>': the guest architecture") }
        guard let output else { throw UsageError("missing <OUT>: where to write the blob ('-' for stdout)") }
        dump.arch = arch
        dump.output = output
        return dump
    }

    func run() {
        guard arch == "aarch64" || arch == "arm64" else {
            fail("unsupported --arch '\(arch)': device trees are built for aarch64 only")
        }
        guard let memorySize = parseMemorySize(memory) else {
            fail("cannot read --memory '\(memory)'; use a size such as 128M or 1G")
        }
        // Counts are read here, not by the parser, so a bad one is a one-line error too.
        guard let vcpuCount = Int(cpus) else { fail("cannot read --cpus '\(cpus)'; use a whole number") }
        guard let virtioDeviceCount = Int(virtioDevices) else {
            fail("cannot read --virtio-devices '\(virtioDevices)'; use a whole number")
        }
        // No kernel is loaded: the configuration carries only what the device tree describes.
        let configuration = MachineConfiguration(
            kernelPath: "", memorySize: memorySize, vcpuCount: vcpuCount, commandLine: cmdline, initrdPath: initrd)
        do {
            let machine = try AArch64MachineDescription(configuration, virtioDeviceCount: virtioDeviceCount)
            try machine.deviceTree().write(toFile: output)
        } catch {
            fail("\(error)")
        }
    }

    private func fail(_ message: String) -> Never {
        var text = "swiftlet dump-dtb: " + message + "\n"
        text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
        Glibc.exit(1)
    }
}
