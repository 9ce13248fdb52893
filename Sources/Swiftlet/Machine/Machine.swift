import CKVM
import Glibc
import Synchronization

/// A step of building a machine; a failure names the step it happened in.
public enum BuildStep: String, Sendable {
    /// `MachineConfiguration.validate()`; the error is a `ConfigurationError`.
    case validateConfiguration = "validate the configuration"
    /// Opening `/dev/kvm` and checking the capabilities Swiftlet needs (irqchip, user memory,
    /// immediate exit, PIT2, irqfd, ioeventfd).
    case openKVM = "open /dev/kvm"
    /// `KVM_CREATE_VM`.
    case createVM = "create the VM"
    /// Setting the identity-map and TSS addresses, then creating the in-kernel irqchip and PIT.
    case configureVM = "set up the in-kernel irqchip and timer"
    /// Mapping guest RAM in this process (`X86MemoryMap.ramRegions`).
    case allocateMemory = "allocate guest memory"
    /// `KVM_SET_USER_MEMORY_REGION` for each RAM region.
    case registerMemory = "register guest memory with KVM"
    /// `KernelLoader.load`; the error is a `KernelLoadError`.
    case loadKernel = "load the kernel"
    /// Writing the GDT and identity page tables, and for Linux the zero page, command line and initrd.
    case writeBootStructures = "write the boot structures"
    /// Creating the event loop and putting the legacy and virtio devices on the buses.
    case createDevices = "create the devices"
    /// `KVM_CREATE_VCPU` for each vCPU.
    case createVCPUs = "create the vCPUs"
    /// Setting each vCPU's CPUID, MSRs, local APIC and FPU, and the boot vCPU's entry registers.
    case configureVCPUs = "set up the vCPU registers"
    /// Attaching the console to the event loop and starting the event-loop and vCPU threads.
    case startThreads = "start the VMM threads"
}

/// Building or starting a machine failed.
public struct MachineError: Error, CustomStringConvertible, Sendable {
    /// The step that failed.
    public let step: BuildStep
    /// What it failed with: a `SystemError`, `ConfigurationError`, `KernelLoadError`,
    /// `VirtioSetupError`, ...
    public let underlying: any Error & Sendable

    /// `cannot <step>: <underlying error>`, on one line.
    public var description: String { "cannot \(step.rawValue): \(underlying)" }
}

/// A microVM: built from a `MachineConfiguration`, started, waited for, torn down.
///
/// Lifecycle: `init` builds everything (KVM VM, memory, devices, vCPUs, boot state) in
/// ordered steps; `start()` starts one thread per vCPU and the event-loop thread; `wait()`
/// blocks until the guest ends and returns how; `stop()` ends it from any thread. Resources
/// are released when the machine is deinitialised.
public final class Machine: @unchecked Sendable {
    /// The configuration the machine was built from, validated.
    public let configuration: MachineConfiguration
    /// The open `/dev/kvm`.
    public let kvm: KVM
    /// The KVM VM, with its in-kernel irqchip and PIT.
    public let vm: VirtualMachine
    /// Guest RAM, mapped in this process and registered with KVM (`X86MemoryMap.ramRegions`).
    public let memory: GuestMemory
    /// The vCPUs by id from 0: vCPU 0 boots, the others wait for the guest to start them (INIT-SIPI).
    public let vcpus: [VCPU]
    /// The COM1 UART (ports 0x3F8-0x3FF, IRQ 4) carrying the guest's console.
    public let serial: SerialPort
    /// Where the kernel image was loaded and how the boot vCPU enters it.
    public let kernel: LoadedKernel
    /// The zero page given to the kernel (nil for flat real-mode images).
    public let bootParams: BootParams?
    /// The boot-timer device; `bootTimer.bootNanoseconds` is the guest's boot time.
    public let bootTimer: BootTimer
    /// The exit-status device; its report turns a reset or power-off into
    /// `GuestExit.commandExited(status:)`.
    public let exitStatus: ExitStatusPort
    /// The virtio-blk devices, one per `configuration.disks` entry, in slot order.
    public let disks: [VirtioBlockTransport]
    /// The virtio-net devices, one per `configuration.networks` entry, in slot order.
    public let networkInterfaces: [VirtioNetTransport]
    /// The virtio-rng device, if `configuration.rng`.
    public let rng: VirtioRNGTransport?
    let dispatcher: ExitDispatcher
    let control: RunControl
    let eventLoop: EventLoop
    let terminal: HostTerminal?
    let consoleWriter: ConsoleWriter?
    let consoleInput: ConsoleInput
    private let threads = Mutex<[NativeThread]>([])
    private let eventThread = Mutex<NativeThread?>(nil)
    private let waiting = Mutex<Void>(())
    /// Where the machine is in its life: `start()` runs once; `wait()` waits for it.
    private let lifecycle = Mutex(Lifecycle.built)
    private let lifecycleChanged = ParkingGate()

    private enum Lifecycle: Equatable {
        case built, starting, started
    }

    /// Builds the machine described by `configuration`.
    public init(_ configuration: MachineConfiguration) throws(MachineError) {
        self.configuration = configuration
        try step(.validateConfiguration) { () throws(ConfigurationError) in try configuration.validate() }
        let kvm = try step(.openKVM) { () throws in
            let kvm = try KVM()
            try kvm.require([(KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"), (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
                             (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"), (KVM_CAP_PIT2, "KVM_CAP_PIT2"),
                             (KVM_CAP_IRQFD, "KVM_CAP_IRQFD"), (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD")])
            return kvm
        }
        self.kvm = kvm
        let vm = try step(.createVM) { () throws(SystemError) in try kvm.createVirtualMachine() }
        self.vm = vm
        try step(.configureVM) { () throws(SystemError) in
            try vm.setIdentityMapAddress(X86Layout.identityMapPageAddress)
            try vm.setTSSAddress(X86Layout.tssAddress)
            try vm.createIRQChip()
            try vm.createPIT2()
        }
        let memory = try step(.allocateMemory) { () throws in
            try GuestMemory(regions: X86MemoryMap.ramRegions(size: configuration.memorySize))
        }
        self.memory = memory
        try step(.registerMemory) { () throws(SystemError) in try memory.registerSlots(with: vm) }
        let kernel = try step(.loadKernel) { () throws(KernelLoadError) in
            try KernelLoader.load(configuration.kernelPath, format: configuration.kernelFormat, into: memory)
        }
        self.kernel = kernel
        try step(.writeBootStructures) { () throws(GuestMemoryError) in
            try BootGDT.write(to: memory)
            try IdentityPageTables.write(to: memory)
        }
        if kernel.usesZeroPage {
            bootParams = try step(.writeBootStructures) { () throws(BootSetupError) in
                try LinuxBoot.write(
                    kernel: kernel,
                    commandLine: LinuxBoot.commandLine(
                        base: configuration.commandLine, cpuidMask: configuration.cpuidMask,
                        virtioDevices: VirtioMachineSetup.SlotPlan(configuration).slots),
                    initrdPath: configuration.initrdPath, vcpuCount: configuration.vcpuCount, memory: memory)
            }
        } else {
            bootParams = nil
        }

        let vcpus = try step(.createVCPUs) { () throws(SystemError) in
            try (0..<configuration.vcpuCount).map { (id) throws(SystemError) in try vm.createVCPU(id: UInt32(id)) }
        }
        self.vcpus = vcpus
        let eventLoop = try step(.createDevices) { () throws(SystemError) in try EventLoop() }
        self.eventLoop = eventLoop
        // The control's finish hook stops the event loop and ends a console stream; it is created
        // before the devices that end the machine (the i8042) so they can hold it.
        let consoleStream: ConsoleStream? = if case .stream(let stream) = configuration.console { stream } else { nil }
        // The terminal console's output goes through a writer thread: a vCPU never waits in write(2).
        let consoleWriter: ConsoleWriter? =
            if case .terminal = configuration.console { ConsoleWriter(fileDescriptor: STDOUT_FILENO) } else { nil }
        self.consoleWriter = consoleWriter
        let control = RunControl(vcpus: vcpus) { _ in
            eventLoop.stop()
            consoleStream?.finish()
            consoleWriter?.machineEnded()
        }
        self.control = control

        let output: any SerialOutput
        switch configuration.console {
        case .terminal:
            output = consoleWriter!
            terminal = HostTerminal()
        case .output(let sink):
            output = sink
            terminal = nil
        case .stream(let stream):
            output = stream
            terminal = nil
        case .none:
            output = DiscardingSerialOutput()
            terminal = nil
        }
        let bootTimer = BootTimer()
        self.bootTimer = bootTimer
        let exitStatus = ExitStatusPort()
        self.exitStatus = exitStatus
        let serial = SerialPort(output: PanicWatchingOutput(output, control: control), interruptLine: KVMInterruptLine(vm: vm, gsi: X86Layout.serialIRQ))
        self.serial = serial
        consoleInput = ConsoleInput(terminal: terminal, serial: serial, loop: eventLoop) {
            control.finish(.stopped(.requested))
        }
        var portIO = Bus()
        var mmio = Bus()
        try step(.createDevices) { () throws(BusError) in
            try portIO.register(serial, base: UInt64(X86Layout.serialPort), length: 8, name: "serial (COM1)")
            try portIO.register(
                I8042Device(resetHandler: { control.finish(.reset) }), base: UInt64(X86Layout.i8042DataPort), length: 5,
                name: "i8042")
            try portIO.register(bootTimer, base: UInt64(X86Layout.bootTimerPort), length: 1, name: "boot timer")
            try portIO.register(exitStatus, base: UInt64(X86Layout.exitStatusPort), length: 1, name: "exit status")
            try mmio.register(
                MMIOTestDevice(), base: X86Layout.mmioTestDeviceAddress.rawValue, length: X86Layout.mmioTestDeviceSize,
                name: "MMIO test device")
        }
        let slots = VirtioMachineSetup.SlotPlan(configuration)
        disks = try step(.createDevices) { () throws(VirtioSetupError) in
            try VirtioMachineSetup.attachDisks(
                configuration.disks, firstSlot: slots.disks.lowerBound, vm: vm, memory: memory, eventLoop: eventLoop, bus: &mmio)
        }
        networkInterfaces = try step(.createDevices) { () throws(VirtioSetupError) in
            try VirtioMachineSetup.attachNetworks(
                configuration.networks, firstSlot: slots.networks.lowerBound, vm: vm, memory: memory, eventLoop: eventLoop,
                bus: &mmio)
        }
        rng = try step(.createDevices) { () throws(VirtioSetupError) -> VirtioRNGTransport? in
            guard let slot = slots.rng else { return nil }
            return try VirtioMachineSetup.attach(
                VirtioRNG(), slot: VirtioMMIOSlot(x86: slot), name: "virtio-rng", vm: vm, memory: memory, eventLoop: eventLoop,
                bus: &mmio)
        }
        dispatcher = ExitDispatcher(portIO: portIO, mmio: mmio)

        try step(.configureVCPUs) { () throws(SystemError) in
            let supported = try kvm.supportedCPUID()
            for vcpu in vcpus {
                try vcpu.setCPUID(
                    X86CPUID.table(
                        supported: supported, vcpu: vcpu.id, of: vcpus.count, mask: configuration.cpuidMask))
                try vcpu.setMSRs(BootMSRs.values)
                try vcpu.setLocalAPIC(LocalAPICSetup.configure(try vcpu.localAPIC()))
                try vcpu.setFPU(X86VCPUSetup.floatingPointState())
                // Application processors stay in wait-for-SIPI; the guest starts them.
                if vcpu.id == 0 { try X86VCPUSetup.configure(vcpu, for: kernel.entry) }
            }
        }
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
        terminal?.enterRawMode()
        try step(.startThreads) { () throws(SystemError) in
            try consoleWriter?.start()
            try consoleInput.attach()
            if case .stream(let stream) = configuration.console { try stream.attach(to: eventLoop) }
        }
        let loop = eventLoop
        try step(.startThreads) { () throws(SystemError) in
            let thread = try NativeThread(name: "event loop") { loop.run() }
            eventThread.withLock { $0 = thread }
            for vcpu in vcpus {
                let thread = try NativeThread(name: "vcpu \(vcpu.id)") {
                    VCPUKick.unblock()
                    control.register(thread: pthread_self())
                    VCPULoop.run(vcpu, dispatcher: dispatcher, control: control)
                }
                threads.withLock { $0.append(thread) }
            }
        }
    }

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
        } else {
            _ = wait()
        }
    }
}

/// Runs `body`, attributing any error to `step`.
@inline(__always)
func step<T, E: Error & Sendable>(_ step: BuildStep, _ body: () throws(E) -> T) throws(MachineError) -> T {
    do { return try body() } catch { throw MachineError(step: step, underlying: error) }
}

/// An interrupt line of the in-kernel irqchip driven with `KVM_IRQ_LINE`.
struct KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    let gsi: UInt32
    func setLevel(_ high: Bool) { try? vm.setIRQLine(gsi, high: high) }
}

/// Serial output that goes nowhere.
struct DiscardingSerialOutput: SerialOutput {
    func write(_ bytes: UnsafeRawBufferPointer) {}
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
