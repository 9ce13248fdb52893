// `swiftlet-run`: `swiftlet run`'s runner (Docs/RUN.md). `swiftlet` execs it with the arguments
// after `run`, so that Foundation's JSON decoder (SwiftletBundle) never loads into `swiftlet boot`.
import Swiftlet
import SwiftletBundle
import SwiftletCommandLine

#if canImport(Glibc)
    import Glibc
#endif

let arguments = RunArguments.parseOrExit(Array(CommandLine.arguments.dropFirst()))
let bundle: ContainerBundle
let kernel: GuestKernel
let prepared: BundleRun
do {
    bundle = try ContainerBundle(at: arguments.bundle, arguments: arguments.command)
    kernel = try GuestKernel.find(kernel: arguments.kernel, initrd: arguments.configuration.initrdPath)
    prepared = try bundle.prepare(kernel: kernel, base: arguments.configuration, name: arguments.id)
} catch {
    RunArguments.fail(error)
}

// Console output may go to a pipe that closes early: get EPIPE, not a fatal signal.
signal(SIGPIPE, SIG_IGN)
let machine: Machine
let signals: SignalStopper
do {
    machine = try Machine(prepared.configuration)
    signals = try SignalStopper(stopping: machine, on: [SIGINT, SIGTERM, SIGHUP])
    if let timeout = arguments.timeout { machine.setDeadline(after: timeout) }
    try machine.start()
} catch {
    prepared.removeFiles()
    RunArguments.fail(error)
}
installMainThreadFilter(machine)
let exit = machine.wait()
signals.cancel()
prepared.removeFiles()
if !exit.isClean {
    let text = "swiftlet: \(exit)\n"
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}
Glibc.exit(exit.exitCode)
