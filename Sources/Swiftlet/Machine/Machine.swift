import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// A microVM: built from a `MachineConfiguration`, started, waited for, torn down.
///
/// Lifecycle: `init` builds everything (KVM VM, memory, devices, vCPUs, boot state) through
/// `MachineBuilder`, in ordered steps that roll back on failure; `start()` starts one thread per
/// vCPU and the event-loop thread; `wait()` blocks until the guest ends and returns how;
/// `stop()` ends it from any thread. Resources are released when the machine is deinitialised.
///
/// The machine is the runtime only: it hands out no KVM descriptors. Its vCPUs run on its own
/// threads and nowhere else.
public final class Machine: @unchecked Sendable {
    /// The configuration the machine was built from, validated.
    public let configuration: MachineConfiguration
    /// Guest RAM, mapped in this process and registered with KVM (`X86MemoryMap.ramRegions`).
    public let memory: GuestMemory
    /// The COM1 UART (ports 0x3F8-0x3FF, IRQ 4) carrying the guest's console.
    public let serial: SerialPort
    /// Where the kernel image was loaded and how the boot vCPU enters it.
    public let kernel: LoadedKernel
    /// The zero page given to the kernel (nil for flat real-mode images).
    public let bootParams: BootParams?
    /// The boot-timer device, when `configuration.bootTimer`; its `bootNanoseconds` is the
    /// guest's boot time.
    public let bootTimer: BootTimer?
    /// The exit-status device; its report turns a reset or power-off into
    /// `GuestExit.commandExited(status:)`.
    public let exitStatus: ExitStatusPort
    /// The virtio-blk devices, one per `configuration.disks` entry, in slot order.
    public let disks: [VirtioBlockTransport]
    /// The virtio-net devices, one per `configuration.networks` entry, in slot order.
    public let networkInterfaces: [VirtioNetTransport]
    /// The virtio-rng device, if `configuration.rng`.
    public let rng: VirtioRNGTransport?
    /// The virtio-vsock device, if `configuration.vsock`.
    public let vsock: VirtioVsockTransport?
    /// Its host side (the listening socket and the connections' sockets).
    let vsockHost: VsockUnixHost?
    /// Every device the device manager attached, in attach order: kind, name, window, interrupt
    /// and the command-line word it gave the kernel.
    public let devices: [AttachedDevice]
    /// The open `/dev/kvm` (the library's own; embedders get none).
    package let kvm: KVM
    /// The KVM VM.
    package let vm: VirtualMachine
    /// The vCPUs by id from 0; run only by the machine's vCPU threads.
    package let vcpus: [VCPU]
    let dispatcher: ExitDispatcher
    let control: RunControl
    let eventLoop: EventLoop
    let terminal: HostTerminal?
    let consoleWriter: ConsoleWriter?
    let consoleInput: ConsoleInput
    let i8042: I8042Device
    private let threads = Mutex<[NativeThread]>([])
    private let eventThread = Mutex<NativeThread?>(nil)
    /// Each thread kind's seccomp filter, compiled by `start()` when `configuration.seccomp`.
    private let seccompFilters = Mutex<[SeccompThreadKind: SeccompFilter]>([:])
    private let waiting = Mutex<Void>(())
    /// Where the machine is in its life: `start()` runs once; `wait()` waits for it.
    private let lifecycle = Mutex(Lifecycle.built)
    private let lifecycleChanged = ParkingGate()

    private enum Lifecycle: Equatable {
        case built, starting, started
    }

    /// Builds the machine described by `configuration` (`MachineBuilder`): on failure, every
    /// part already made is torn down and the error names the step that failed.
    public convenience init(_ configuration: MachineConfiguration) throws(MachineError) {
        self.init(parts: try MachineBuilder.build(configuration))
    }

    /// A machine over parts the builder made.
    init(parts: MachineParts) {
        configuration = parts.configuration
        kvm = parts.kvm
        vm = parts.vm
        memory = parts.memory
        vcpus = parts.vcpus
        kernel = parts.kernel
        bootParams = parts.bootParams
        eventLoop = parts.eventLoop
        control = parts.control
        terminal = parts.terminal
        consoleWriter = parts.consoleWriter
        consoleInput = parts.consoleInput
        serial = parts.serial
        i8042 = parts.i8042
        bootTimer = parts.bootTimer
        exitStatus = parts.exitStatus
        disks = parts.disks
        networkInterfaces = parts.networkInterfaces
        rng = parts.rng
        vsock = parts.vsock
        vsockHost = parts.vsockHost
        devices = parts.devices
        dispatcher = parts.dispatcher
    }

    /// Starts the vCPU threads and the event-loop thread (console input).
    public func start() throws(MachineError) {
        let first = lifecycle.withLock { state -> Bool in
            guard state == .built else { return false }
            state = .starting
            return true
        }
        guard first else { throw MachineError(step: .startThreads, underlying: MachineLifecycleError.alreadyStarted) }
        defer {
            lifecycle.withLock { $0 = .started }
            lifecycleChanged.wakeAll()
        }
        do {
            try startThreads()
        } catch {
            // Undo what started: end the machine, join its threads, restore the terminal.
            control.finish(.stopped(.requested))
            lifecycle.withLock { $0 = .started }
            _ = wait()
            throw error
        }
    }

    private func startThreads() throws(MachineError) {
        _ = VCPUKick.installed
        let control = self.control
        let dispatcher = self.dispatcher
        if configuration.seccomp {
            // Compiled here, before any thread starts; each thread installs its own (below).
            let context = SeccompAllowlists.Context(
                terminalDescriptor: terminal.flatMap { $0.isTerminal ? $0.inputDescriptor : nil })
            let filters = try MachineBuilder.Steps(failingAfter: nil).run(.seccompFilters) {
                () throws(SeccompSetupError) in
                do throws(SystemError) { try SeccompFilter.prepareProcess() } catch { throw .unavailable(error) }
                do throws(SeccompCompileError) { return try SeccompAllowlists.filters(context) } catch {
                    throw .allowlist(error.description)
                }
            }
            seccompFilters.withLock { $0 = filters }
        }
        terminal?.enterRawMode()
        try MachineBuilder.Steps(failingAfter: nil).run(.startThreads) { () throws(SystemError) in
            try consoleInput.attach()
            if case .stream(let stream) = configuration.console { try stream.attach(to: eventLoop) }
        }
        // Every host resource is open now (KVM, memory, disks, taps, the console): the guest runs
        // with the configured user's privileges only. No thread has a filter yet (glibc makes
        // every thread call setuid itself), and every thread started from here on installs its
        // filter first.
        if let drop = configuration.privilegeDrop {
            try MachineBuilder.Steps(failingAfter: nil).run(.dropPrivileges) { () throws(PrivilegeDropError) in try drop.apply() }
        }
        let filters = seccompFilters.withLock { $0 }
        let loop = eventLoop
        try MachineBuilder.Steps(failingAfter: nil).run(.startThreads) { () throws(SystemError) in
            try consoleWriter?.start(filter: filters[.consoleWriter])
            let eventLoopFilter = filters[.eventLoop]
            let thread = try NativeThread(name: "event loop") {
                do throws(SystemError) {
                    try eventLoopFilter?.install(threadKind: SeccompThreadKind.eventLoop.name)
                } catch {
                    control.finish(.hostThreadFailed(error))
                    return
                }
                loop.run()
            }
            eventThread.withLock { $0 = thread }
            let vcpuFilter = filters[.vcpu]
            for vcpu in vcpus {
                let thread = try NativeThread(name: "vcpu \(vcpu.id)") {
                    VCPUKick.unblock()
                    control.register(thread: pthread_self())
                    do throws(SystemError) {
                        try vcpuFilter?.install(threadKind: SeccompThreadKind.vcpu.name)
                    } catch {
                        control.finish(.vcpuFailed(vcpu: vcpu.id, error: error))
                        return
                    }
                    VCPULoop.run(vcpu, dispatcher: dispatcher, control: control)
                }
                threads.withLock { $0.append(thread) }
            }
        }
    }

    /// Installs `kind`'s seccomp filter on the calling thread (the CLI's main thread after
    /// `start()`, the signal threads once the machine has started); does nothing when
    /// `configuration.seccomp` is off or `start()` did not get as far as compiling the filters.
    package func installSeccompFilter(_ kind: SeccompThreadKind) throws(SystemError) {
        guard let filter = seccompFilters.withLock({ $0[kind] }) else { return }
        try filter.install(threadKind: kind.name)
    }

    /// Waits until `start()` has returned (successfully or not), or `cancelled()` holds
    /// (re-checked when `wakeStartWaiters()` is called).
    package func waitUntilStarted(unless cancelled: () -> Bool) {
        lifecycleChanged.waitUntil { _ in cancelled() || lifecycle.withLock { $0 } == .started }
    }

    /// Makes `waitUntilStarted(unless:)` re-check its condition.
    package func wakeStartWaiters() { lifecycleChanged.wakeAll() }

    /// Waits for the guest to end; returns how it ended. Joins every thread and restores the
    /// terminal before returning. A reset or power-off after the guest reported an exit status
    /// (`exitStatus`) is returned as `.commandExited(status:)`.
    ///
    /// Called before `start()`, it waits for the machine to be started and then to end.
    public func wait() -> GuestExit {
        lifecycleChanged.waitUntil { _ in lifecycle.withLock { $0 } == .started }
        // One waiter joins; concurrent waiters block on the lock until it is done.
        waiting.withLock { _ in
            let vcpuThreads = threads.withLock { $0 }
            for thread in vcpuThreads { thread.join() }
            eventLoop.stop()
            eventThread.withLock { $0?.join() }
            // The handlers hold the devices (and the devices' taps and files); dropping them
            // breaks the reference cycles through the loop so everything is released.
            eventLoop.removeAllHandlers()
            vsockHost?.shutdown()
            // Output first (still raw, as the guest wrote it), within a bounded time; then the mode.
            consoleWriter?.close()
            terminal?.restore()
        }
        return GuestExit.ending(control.exit ?? .stopped(.requested), reportedStatus: exitStatus.reportedStatus)
    }

    /// Guest console bytes that never reached the console's output: with the `.terminal`
    /// console, bytes dropped because standard output stalled (its 256 KiB buffer was full and
    /// no write completed for half a second), failed, or was still stalled when the machine
    /// ended; with `.stream`, bytes the full ring could not take. Final once `wait()` has returned.
    public var droppedConsoleBytes: Int {
        if let consoleWriter { return consoleWriter.droppedBytes }
        if case .stream(let stream) = configuration.console { return stream.droppedBytes }
        return 0
    }

    /// Each vCPU's exits by reason so far, indexed by vCPU id: readable during a run (each vCPU's
    /// figures may be a moment old) and final once `wait()` has returned.
    public var exitCounts: [ExitCounts] { control.exitCounters.all }

    /// The error that ended writing the `.terminal` console's output (EPIPE, EIO, ...), if one did;
    /// nil while output was only stalled.
    public var consoleOutputError: SystemError? { consoleWriter?.writeError }

    /// Stops the guest with reason `.deadline` if it is still running `seconds` from now.
    /// Any test or caller that must not hang on a stuck guest sets one before `wait()`.
    public func setDeadline(after seconds: Double) {
        eventLoop.setDeadline(after: seconds) { [control] in control.finish(.stopped(.deadline)) }
    }

    /// Stops the guest from any thread; `wait()` then returns `.stopped(reason)` unless the
    /// guest had already ended.
    public func stop(_ reason: HostStopReason = .requested) {
        control.finish(.stopped(reason))
    }

    /// Builds nothing new: starts the machine and waits for it.
    public func run() throws(MachineError) -> GuestExit {
        try start()
        return wait()
    }

    deinit {
        stop()
        if lifecycle.withLock({ $0 }) == .built {
            // Never started: no threads to join, only the handlers' reference cycles to break.
            eventLoop.removeAllHandlers()
            vsockHost?.shutdown()
        } else {
            _ = wait()
        }
    }
}

/// The guest RAM layout of an x86_64 machine of a given size: below the MMIO gap, and the rest
/// above 4 GiB.
public enum X86MemoryMap {
    /// The RAM regions of a machine with `size` bytes: from 0 up to `X86Layout.mmioGapStart`
    /// (3 GiB), and the rest, if any, from `X86Layout.ramAbove4GStart` (4 GiB).
    public static func ramRegions(size: UInt64) -> [(start: GuestAddress, size: UInt64)] {
        let below = min(size, X86Layout.mmioGapStart.rawValue)
        var regions = [(start: GuestAddress(0), size: below)]
        if size > below { regions.append((start: X86Layout.ramAbove4GStart, size: size - below)) }
        return regions
    }
}

/// Why `start()` could not prepare the seccomp filters.
public enum SeccompSetupError: Error, CustomStringConvertible, Sendable {
    /// The kernel does not take seccomp filters with SECCOMP_RET_TRAP, or SIGSYS's handler
    /// could not be installed.
    case unavailable(SystemError)
    /// An allowlist does not compile (a bug in `SeccompAllowlists`).
    case allowlist(String)

    /// One line saying what failed.
    public var description: String {
        switch self {
        case .unavailable(let error): "\(error) (run with --seccomp off on a kernel without seccomp filters)"
        case .allowlist(let why): why
        }
    }
}

/// A call that does not fit where the machine is in its life.
public enum MachineLifecycleError: Error, Equatable, CustomStringConvertible, Sendable {
    /// `start()` was called a second time.
    case alreadyStarted

    /// One line saying what was wrong.
    public var description: String {
        switch self {
        case .alreadyStarted: "the machine was already started (a machine runs once)"
        }
    }
}
