// An example of embedding Swiftlet: boot a tiny guest, print its console output as it arrives,
// and report how the guest ended.
//
//   swift run swiftlet-example [KERNEL]     (default: Guests/build/longmode-hello.elf)
import Swiftlet

let kernel = CommandLine.arguments.dropFirst().first ?? "Guests/build/longmode-hello.elf"

do {
    // The console as a stream of byte chunks, instead of the terminal.
    let console = try ConsoleStream()
    var configuration = MachineConfiguration(
        kernelPath: kernel, memorySize: 64 << 20, vcpuCount: 1, console: .stream(console))
    // The boot-timer port is attached only when asked (the tiny guests write it at start).
    configuration.bootTimer = true
    let machine = try Machine(configuration)
    // Never wait forever on a guest: the deadline is set before the guest starts.
    machine.setDeadline(after: 10)
    try machine.start()

    print("--- guest console ---")
    for await chunk in console.output {
        print(String(decoding: chunk, as: UTF8.self), terminator: "")
    }
    print("--- end of console ---")
    let exit = await machine.waitUntilExit()
    print("guest ended: \(exit) (exit status \(exit.exitCode))")
    if let nanoseconds = machine.bootTime {
        print("boot timer: \(nanoseconds / 1000) µs after process start")
    }
} catch {
    print("swiftlet-example: \(error)")
}
