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
        subcommands: [Boot.self]
    )
}

struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a kernel image in a new microVM with the serial console on this terminal.",
        discussion: """
            Image formats (--format):
              auto            (default) ELF64 x86-64 images are recognised by their magic number.
              elf             An ELF64 x86-64 executable (a vmlinux or a tiny test guest). Each
                              PT_LOAD segment is copied to its physical address (at or above 1 MiB)
                              and vCPU 0 starts at e_entry in 64-bit long mode: paging on with an
                              identity map of the first 4 GiB (2 MiB pages), flat code segment 0x10,
                              data segments 0x18, RSP = 0x8ff0, RSI = 0x7000 (zero page), interrupts off.
              flat-real-mode  A flat binary of at most 64 KiB copied to 0x10000 and started in
                              16-bit real mode at CS:IP = 1000:0000 with DS = ES = SS = 0x1000 and
                              SP = 0xfff0.

            The console: guest serial output (COM1, port 0x3f8) goes to stdout; typed input goes
            to the guest, with the terminal in raw mode. Ctrl-A x stops the VM; Ctrl-A Ctrl-A sends
            a Ctrl-A. A guest ends the VM by writing 0xfe to port 0x64 (i8042 reset).

            Exit status: 0 the guest reset, powered off or was stopped (Ctrl-A x); 1 the VM could
            not be built (bad flags, unreadable or invalid kernel, no KVM); 3 triple fault;
            4 KVM internal (emulation) error; 5 VM entry failure; 6 unhandled exit; 7 a vCPU call
            failed; 8 guest panic; 124 --timeout reached.
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

    @Option(name: .long, help: ArgumentHelp("Stop the VM after this many seconds (exit status 124).", valueName: "seconds"))
    var timeout: Double?

    mutating func validate() throws {
        guard KernelFormat(rawValue: format) != nil else {
            throw ValidationError("unknown --format '\(format)'; use one of: \(KernelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard parseMemorySize(memory) != nil else {
            throw ValidationError("cannot read --memory '\(memory)'; use a size such as 128M or 1G")
        }
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
    }

    func run() throws {
        // Console output may go to a pipe that closes early: get EPIPE, not a fatal signal.
        signal(SIGPIPE, SIG_IGN)
        let configuration = MachineConfiguration(
            kernelPath: kernel, kernelFormat: KernelFormat(rawValue: format)!, memorySize: parseMemorySize(memory)!,
            vcpuCount: cpus, console: .terminal)
        let machine: Machine
        do {
            machine = try Machine(configuration)
            try machine.start()
        } catch {
            fail("swiftlet: \(error)")
        }
        if let timeout { machine.setDeadline(after: timeout) }
        let exit = machine.wait()
        if !exit.isClean { printError("swiftlet: \(exit)") }
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
