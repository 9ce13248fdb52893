import ArgumentParser
import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet dump-dtb`: writes the device tree a machine would boot with, for reading with
/// `dtc -I dtb -O dts`.
struct DumpDTB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-dtb",
        abstract: "Write the flattened device tree (DTB) that describes a machine.",
        discussion: """
            Builds the device tree an aarch64 guest boots with (memory, vCPUs with PSCI, GICv3, \
            timer, the ns16550a UART, virtio-mmio devices, /chosen) and writes it to OUT \
            ('-' for stdout). Read it with: dtc -I dtb -O dts OUT. Docs/DEVICETREE.md describes \
            the layout. Only --arch aarch64 is supported: x86_64 guests get no device tree.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The guest architecture: aarch64.", valueName: "arch"))
    var arch: String

    @Option(name: .long, help: ArgumentHelp("Guest memory, e.g. 128M or 1G (binary units).", valueName: "size"))
    var memory: String = "128M"

    @Option(name: .long, help: ArgumentHelp("Number of vCPUs.", valueName: "n"))
    var cpus: String = "1"

    @Option(name: .long, help: ArgumentHelp("The kernel command line (replaces the default).", valueName: "text"))
    var cmdline: String?

    @Option(name: .long, help: ArgumentHelp("An initrd image: its size sets /chosen's initrd range.", valueName: "file"))
    var initrd: String?

    @Option(name: .long, help: ArgumentHelp("Number of virtio-mmio devices to describe.", valueName: "n"))
    var virtioDevices: String = "0"

    @Argument(help: ArgumentHelp("Where to write the blob ('-' for stdout).", valueName: "OUT"))
    var output: String

    func run() throws {
        guard arch == "aarch64" || arch == "arm64" else {
            fail("unsupported --arch '\(arch)': device trees are built for aarch64 only")
        }
        guard let memorySize = parseMemorySize(memory) else {
            fail("cannot read --memory '\(memory)'; use a size such as 128M or 1G")
        }
        // Counts are read here, not by ArgumentParser, so a bad one is a one-line error too.
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
