import ArgumentParser
import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// `swiftlet`: the command-line front end. It parses arguments and calls the library; nothing
/// else happens here.
@main
struct SwiftletCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "Swiftlet: a KVM micro virtual machine monitor written in Swift.",
        version: SwiftletVersion.string,
        subcommands: [Boot.self, DumpDTB.self]
    )

    static func main() {
        // The boot timer measures from here: as close to process start as Swift code gets.
        ProcessClock.markStart()
        main(nil)
    }
}

struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a kernel image in a new microVM with the serial console on this terminal.",
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
            e820 map, the command line (--cmdline, default: \(LinuxBoot.defaultCommandLine)),
            the initrd (--initrd, placed at the top of RAM below 3 GiB and the kernel's
            initrd_addr_max) and an MP table for --cpus processors. --cpuid-mask hides CPUID
            features from the guest and adds clearcpuid= to the command line; it takes feature
            names (cx16,popcnt,...) and the template 'emulated'.

            Disks (--disk, repeatable): each is a virtio-blk device over a raw image file,
              --disk path=FILE[,readonly=on][,id=NAME][,direct=on]
            readonly=on offers the disk read-only (the guest's writes fail with an I/O error);
            id= is what the guest reads as the disk's serial (at most 20 bytes, default diskN);
            direct=on opens the image with O_DIRECT (its size must be a multiple of 4 KiB).
            Linux names them /dev/vda, /dev/vdb, ... A missing or unreadable image ends with
            exit status 1.

            Network (--net, repeatable): each is a virtio-net device over a host tap interface,
              --net tap=NAME[,mac=MAC][,offload=off]
            The tap is opened through /dev/net/tun in swiftlet's network namespace (created if
            no interface has that name; it then goes away when swiftlet ends). mac= is the
            guest's address (default: 02:xx:xx:xx:xx:xx derived from the tap name, the same on
            every run); offload=off offers no checksum or segmentation offloads (by default
            those the tap supports are offered). Linux names the interfaces eth0, eth1, ...;
            give it an address with ip=ADDRESS::GATEWAY:NETMASK::eth0:off on --cmdline
            (Docs/NETWORKING.md). A tap that cannot be opened ends with exit status 1.

            Entropy (--rng): a virtio-rng device fed by the host's getrandom(2); Linux uses it
            as /dev/hwrng.

            Virtio devices share one sequence of slots: disks, then network interfaces, then the
            rng. Slot N sits at 0xd0000000 + N * 0x1000 with IRQ 5 + N (at most 19 devices), and
            virtio_mmio.device=4K@ADDRESS:IRQ is added to the command line for it.

            Boot timer: the guest writes the byte 123 to port 0x440 when it is ready; with
            --report-boot-time Swiftlet prints the time since it started.

            The console: guest serial output (COM1, port 0x3f8) goes to stdout; typed input goes
            to the guest, with the terminal in raw mode. Ctrl-A x stops the VM; Ctrl-A Ctrl-A sends
            a Ctrl-A. A guest ends the VM by writing 0xfe to port 0x64 (i8042 reset).

            Exit status: 0 the guest reset, powered off or was stopped (Ctrl-A x); 1 the VM could
            not be built (bad flags, unreadable or invalid kernel, no KVM); 3 triple fault;
            4 KVM internal (emulation) error; 5 VM entry failure; 6 unhandled exit; 7 a vCPU call
            failed; 8 guest panic; 124 --timeout reached; 128 + N stopped by signal N (SIGINT,
            SIGTERM and SIGHUP stop the VM cleanly).
            """
    )

    @Option(name: .long, help: ArgumentHelp("The kernel image to boot.", valueName: "file"))
    var kernel: String

    @Option(name: .long, help: ArgumentHelp("How to load the kernel image: auto, elf or flat-real-mode.", valueName: "format"))
    var format: String = KernelFormat.automatic.rawValue

    @Option(name: .long, help: ArgumentHelp("Guest memory, e.g. 128M or 1G (binary units).", valueName: "size"))
    var memory: String = "128M"

    @Option(name: .long, help: ArgumentHelp("Number of vCPUs.", valueName: "n"))
    var cpus: Int = 1

    @Option(name: .long, help: ArgumentHelp("An initrd or initramfs image for a Linux kernel.", valueName: "file"))
    var initrd: String?

    @Option(name: .long, help: ArgumentHelp("The kernel command line (replaces the default).", valueName: "text"))
    var cmdline: String?

    @Option(name: .long, help: ArgumentHelp("CPUID features to hide, comma-separated names or templates.", valueName: "list"))
    var cpuidMask: String?

    @Flag(name: .long, help: "Print the guest's boot time (boot-timer port write) on stderr at the end.")
    var reportBootTime = false

    @Flag(name: .long, help: "Print the guest's resident memory and the process's peak RSS on stderr at the end.")
    var reportMemory = false

    @Option(name: .long, help: ArgumentHelp("Stop the VM after this many seconds (exit status 124).", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .long, help: ArgumentHelp("A virtio-blk disk: path=FILE[,readonly=on][,id=NAME][,direct=on] (repeatable).", valueName: "disk"))
    var disk: [String] = []

    @Option(name: .long, help: ArgumentHelp("A virtio-net interface over a host tap: tap=NAME[,mac=MAC][,offload=off] (repeatable).", valueName: "net"))
    var net: [String] = []

    @Flag(name: .long, help: "Add a virtio-rng entropy device (backed by getrandom).")
    var rng = false

    mutating func validate() throws {
        guard KernelFormat(rawValue: format) != nil else {
            throw ValidationError("unknown --format '\(format)'; use one of: \(KernelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard parseMemorySize(memory) != nil else {
            throw ValidationError("cannot read --memory '\(memory)'; use a size such as 128M or 1G")
        }
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
        if let cpuidMask {
            do { _ = try CPUIDFeature.parseMask(cpuidMask) } catch { throw ValidationError("--cpuid-mask: \(error)") }
        }
        for value in disk {
            do { _ = try DiskConfiguration.parse(value) } catch { throw ValidationError("--disk '\(value)': \(error)") }
        }
        var macs = Set<MACAddress>()
        for value in net {
            let network: NetworkConfiguration
            do { network = try NetworkConfiguration.parse(value) } catch { throw ValidationError("--net '\(value)': \(error)") }
            guard macs.insert(network.effectiveMAC).inserted else {
                throw ValidationError("--net '\(value)': MAC address \(network.effectiveMAC) is already in use by another --net")
            }
        }
        guard disk.count + net.count + (rng ? 1 : 0) <= X86Layout.virtioMMIOSlotCount else {
            throw ValidationError("at most \(X86Layout.virtioMMIOSlotCount) virtio devices (--disk, --net and --rng together) are supported")
        }
    }

    func run() throws {
        // Console output may go to a pipe that closes early: get EPIPE, not a fatal signal.
        signal(SIGPIPE, SIG_IGN)
        let configuration = MachineConfiguration(
            kernelPath: kernel, kernelFormat: KernelFormat(rawValue: format)!, memorySize: parseMemorySize(memory)!,
            vcpuCount: cpus, console: .terminal, commandLine: cmdline, initrdPath: initrd,
            cpuidMask: (try? CPUIDFeature.parseMask(cpuidMask ?? "")) ?? [],
            disks: disk.compactMap { try? DiskConfiguration.parse($0) },
            networks: net.compactMap { try? NetworkConfiguration.parse($0) }, rng: rng)
        let machine: Machine
        let signals: SignalStopper
        do {
            machine = try Machine(configuration)
            // SIGINT, SIGTERM and SIGHUP stop the VM cleanly (exit status 128 + signal).
            signals = try SignalStopper(stopping: machine, on: [SIGINT, SIGTERM, SIGHUP])
            try machine.start()
        } catch {
            fail("swiftlet: \(error)")
        }
        if let timeout { machine.setDeadline(after: timeout) }
        let exit = machine.wait()
        signals.cancel()
        if !exit.isClean { printError("swiftlet: \(exit)") }
        if reportBootTime {
            if let nanoseconds = machine.bootTimer.bootNanoseconds {
                let micros = nanoseconds / 1000
                printError("swiftlet: boot time \(micros / 1000).\(String(micros % 1000 + 1000).dropFirst()) ms (boot-timer write)")
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
        terminate(exit.exitCode)
    }

    private func fail(_ message: String) -> Never {
        printError(message)
        terminate(1)
    }

    private func printError(_ message: String) {
        var text = message + "\n"
        text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// Ends the process with `code` (the guest's exit status).
func terminate(_ code: Int32) -> Never { Glibc.exit(code) }
