// `swiftlet-api`: the Firecracker-compatible API (Docs/API-SOCKET.md). `swiftlet --api-sock ...`
// execs it, so that SwiftNIO and the JSON coders never load into `swiftlet boot`.
//
// Threads: this main thread (it takes SIGINT/SIGTERM/SIGHUP with sigwait), NIO's one event-loop
// thread serving the socket (every request runs there), and once the guest is started the
// machine's own (vCPUs, event loop, console writer) and a waiter that ends the process with the
// guest's exit status, as Firecracker does.
import Swiftlet
import SwiftletAPI
import SwiftletCommandLine

#if canImport(Glibc)
    import Glibc
#endif

ProcessClock.markStart()
let arguments = APIArguments.parseOrExit(Array(CommandLine.arguments.dropFirst()))
signal(SIGPIPE, SIG_IGN)

// The stop signals are blocked before any thread exists, so every thread inherits the mask and
// only this thread takes them.
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
for number in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&stopSignals, number) }
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

/// The one machine the process runs, once built (the signal thread stops it).
final class Current: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var value: Machine?
    init() { pthread_mutex_init(&lock, nil) }
    var machine: Machine? {
        get {
            pthread_mutex_lock(&lock)
            defer { pthread_mutex_unlock(&lock) }
            return value
        }
        set {
            pthread_mutex_lock(&lock)
            value = newValue
            pthread_mutex_unlock(&lock)
        }
    }
}
let current = Current()
let socketPath = arguments.noAPI ? nil : arguments.socketPath
let log = APILog()

func finish(_ code: Int32) -> Never {
    if let socketPath { unlink(socketPath) }
    exit(code)
}

let factory = LibraryMicroVMFactory(
    seccomp: arguments.seccomp, cpuidMask: arguments.cpuidMask,
    onBuilt: { current.machine = $0 },
    onExit: { machine, exit in
        if !exit.isClean {
            let text = "swiftlet: \(exit)\n"
            _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        }
        log.info("the guest ended: \(exit)")
        finish(exit.exitCode)
    })
let controller = VMMController(instanceID: arguments.id, bootTimer: arguments.bootTimer, factory: factory, log: log)

var server: APIServer?
if let socketPath {
    do {
        server = try APIServer(path: socketPath, controller: controller, maximumPayloadSize: arguments.maximumPayloadSize)
    } catch {
        APIArguments.fail("cannot serve the API on \(socketPath): \(error)")
    }
}
if let configFile = arguments.configFile {
    do { try ConfigFile.boot(configFile, controller: controller) } catch {
        if let socketPath { unlink(socketPath) }
        APIArguments.fail("\(error)")
    }
}

var stopping = false
while true {
    var received: Int32 = 0
    guard sigwait(&stopSignals, &received) == 0 else { continue }
    if let machine = current.machine, !stopping {
        // The waiter ends the process once the machine has stopped (exit status 128 + signal).
        stopping = true
        machine.stop(.signal(received))
        continue
    }
    finish(128 + received)
}
