import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// A step of building a machine, in the order they run; a failure names the step it happened in.
public enum BuildStep: String, Sendable, CaseIterable {
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
    /// `KVM_CREATE_VCPU` for each vCPU.
    case createVCPUs = "create the vCPUs"
    /// Creating the event loop and attaching the legacy and virtio devices through the device
    /// manager (`DeviceAttachError`).
    case createDevices = "create the devices"
    /// Writing the GDT and identity page tables, and for Linux the zero page, the command line
    /// (with a word for each attached virtio device) and the initrd.
    case writeBootStructures = "write the boot structures"
    /// Setting each vCPU's CPUID, MSRs, local APIC and FPU, and the boot vCPU's entry registers.
    case configureVCPUs = "set up the vCPU registers"
    /// Restoring from a snapshot: reading and checking the state file and the memory file.
    case readSnapshot = "read the snapshot"
    /// Restoring from a snapshot: putting the saved irqchip, PIT, kvmclock and vCPU state back.
    case restoreState = "restore the saved vCPU and VM state"
    /// Attaching the console to the event loop and starting the event-loop and vCPU threads
    /// (`Machine.start()`, not part of building).
    case startThreads = "start the VMM threads"
    /// Changing to the configured user and group (`PrivilegeDrop`): checked before building
    /// (`PrivilegeDrop.checkPermitted()`), done in `Machine.start()` before the vCPU threads
    /// start, after every host resource is open.
    case dropPrivileges = "drop privileges"
    /// Checking that the kernel takes seccomp filters, installing the SIGSYS handler and
    /// compiling each thread kind's filter (`SeccompAllowlists`), in `Machine.start()` before any
    /// thread starts; each thread installs its own.
    case seccompFilters = "prepare the seccomp filters"
}

/// Building or starting a machine failed.
public struct MachineError: Error, CustomStringConvertible, Sendable {
    /// The step that failed.
    public let step: BuildStep
    /// What it failed with: a `SystemError`, `ConfigurationError`, `KernelLoadError`,
    /// `DeviceAttachError`, ...
    public let underlying: any Error & Sendable

    /// `cannot <step>: <underlying error>`, on one line.
    public var description: String { "cannot \(step.rawValue): \(underlying)" }
}

/// The failure a test asks the builder to make after a step succeeded (rollback tests).
package struct InjectedBuildFailure: Error, Sendable, CustomStringConvertible {
    /// The step after which building was made to fail.
    package let after: BuildStep
    /// `injected failure after <step>`.
    package var description: String { "injected failure after \(after.rawValue)" }
}

/// Everything a built machine is made of, handed from `MachineBuilder` to `Machine`.
struct MachineParts {
    let configuration: MachineConfiguration
    let kvm: KVM
    let vm: VirtualMachine
    let memory: GuestMemory
    let vcpus: [VCPU]
    let kernel: LoadedKernel
    let bootParams: BootParams?
    let eventLoop: EventLoop
    let control: RunControl
    let terminal: HostTerminal?
    let consoleWriter: ConsoleWriter?
    let consoleInput: ConsoleInput
    let serial: SerialPort
    let i8042: I8042Device
    let bootTimer: BootTimer?
    let exitStatus: ExitStatusPort
    let disks: [VirtioBlockTransport]
    let networkInterfaces: [VirtioNetTransport]
    let rng: VirtioRNGTransport?
    let vsock: VirtioVsockTransport?
    let vsockHost: VsockUnixHost?
    let devices: [AttachedDevice]
    let dispatcher: ExitDispatcher
}

/// Undo actions for the parts made so far, run in reverse order when a later step fails.
///
/// Most parts release themselves when the builder drops its last reference (file descriptors
/// close, guest memory is unmapped, the VM and its irqfd/ioeventfd registrations go with it);
/// what cannot is registered here: the event loop's handlers hold the devices and some devices
/// hold the loop, a cycle only removing the handlers breaks.
final class BuildRollback {
    private var actions: [(part: String, undo: () -> Void)] = []

    /// Registers `undo` for `part` (named for diagnostics).
    func add(_ part: String, _ undo: @escaping () -> Void) { actions.append((part, undo)) }

    /// The parts with an undo action, in the order they were made.
    var parts: [String] { actions.map(\.part) }

    /// Runs every undo action, last made first, once.
    func run() {
        while let last = actions.popLast() { last.undo() }
    }
}

/// Builds a machine from a configuration in named steps (`BuildStep`), each producing a part;
/// when a step fails, every part already made is torn down before the error is thrown, so a
/// failed build leaves no descriptor, mapping, handler or thread behind.
enum MachineBuilder {
    /// Builds the parts of the machine `configuration` describes. `failingAfter` makes the
    /// build fail right after that step succeeded (tests of the rollback).
    static func build(_ configuration: MachineConfiguration, failingAfter: BuildStep? = nil) throws(MachineError) -> MachineParts
    {
        let rollback = BuildRollback()
        do {
            return try buildParts(configuration, steps: Steps(failingAfter: failingAfter), rollback: rollback)
        } catch {
            rollback.run()
            throw error
        }
    }

    /// Runs steps, naming the step in any error and failing on request after one.
    struct Steps {
        let failingAfter: BuildStep?

        func run<T, E: Error & Sendable>(_ step: BuildStep, _ body: () throws(E) -> T) throws(MachineError) -> T {
            let value: T
            do { value = try body() } catch { throw MachineError(step: step, underlying: error) }
            if step == failingAfter { throw MachineError(step: step, underlying: InjectedBuildFailure(after: step)) }
            return value
        }
    }

    /// Steps 2-4: opens `/dev/kvm` (checking the capabilities Swiftlet needs), creates the VM and
    /// sets up its identity map, TSS, in-kernel irqchip and PIT. Shared by building and restoring.
    static func createVM(_ steps: Steps) throws(MachineError) -> (KVM, VirtualMachine) {
        let kvm = try steps.run(.openKVM) { () throws in
            let kvm = try KVM()
            try kvm.require([
                (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"), (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
                (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"), (KVM_CAP_PIT2, "KVM_CAP_PIT2"),
                (KVM_CAP_IRQFD, "KVM_CAP_IRQFD"), (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
            ])
            return kvm
        }
        let vm = try steps.run(.createVM) { () throws(SystemError) in try kvm.createVirtualMachine() }
        try steps.run(.configureVM) { () throws(SystemError) in
            try vm.setIdentityMapAddress(X86Layout.identityMapPageAddress)
            try vm.setTSSAddress(X86Layout.tssAddress)
            try vm.createIRQChip()
            try vm.createPIT2()
        }
        return (kvm, vm)
    }

    private static func buildParts(
        _ configuration: MachineConfiguration, steps: Steps, rollback: BuildRollback
    ) throws(MachineError) -> MachineParts {
        try steps.run(.validateConfiguration) { () throws(ConfigurationError) in try configuration.validate() }
        // Fail before building anything when the drop cannot be made later.
        if let drop = configuration.privilegeDrop {
            try steps.run(.dropPrivileges) { () throws(PrivilegeDropError) in try drop.checkPermitted() }
        }
        let (kvm, vm) = try createVM(steps)
        let memory = try steps.run(.allocateMemory) { () throws in
            try GuestMemory(regions: X86MemoryMap.ramRegions(size: configuration.memorySize))
        }
        try steps.run(.registerMemory) { () throws(SystemError) in try vm.register(memory) }
        let kernel = try steps.run(.loadKernel) { () throws(KernelLoadError) in
            try KernelLoader.load(configuration.kernelPath, format: configuration.kernelFormat, into: memory)
        }
        let vcpus = try steps.run(.createVCPUs) { () throws(SystemError) in
            try (0..<configuration.vcpuCount).map { (id) throws(SystemError) in try vm.createVCPU(id: UInt32(id)) }
        }
        let devices = try steps.run(.createDevices) { () throws in
            try createDevices(configuration, vm: vm, memory: memory, vcpus: vcpus, rollback: rollback)
        }
        let bootParams = try steps.run(.writeBootStructures) { () throws -> BootParams? in
            try BootGDT.write(to: memory)
            try IdentityPageTables.write(to: memory)
            guard kernel.usesZeroPage else { return nil }
            return try LinuxBoot.write(
                kernel: kernel,
                commandLine: LinuxBoot.commandLine(
                    base: configuration.commandLine, cpuidMask: configuration.cpuidMask,
                    deviceWords: devices.manager.commandLineWords),
                initrdPath: configuration.initrdPath, vcpuCount: configuration.vcpuCount, memory: memory)
        }
        try steps.run(.configureVCPUs) { () throws(SystemError) in
            let supported = try kvm.supportedCPUID()
            for vcpu in vcpus {
                try vcpu.setCPUID(
                    X86CPUID.table(supported: supported, vcpu: vcpu.id, of: vcpus.count, mask: configuration.cpuidMask))
                try vcpu.setMSRs(BootMSRs.values)
                try vcpu.setLocalAPIC(LocalAPICSetup.configure(try vcpu.localAPIC()))
                try vcpu.setFPU(X86VCPUSetup.floatingPointState())
                // Application processors stay in wait-for-SIPI; the guest starts them.
                if vcpu.id == 0 { try X86VCPUSetup.configure(vcpu, for: kernel.entry) }
            }
        }
        return MachineParts(
            configuration: configuration, kvm: kvm, vm: vm, memory: memory, vcpus: vcpus, kernel: kernel,
            bootParams: bootParams, eventLoop: devices.eventLoop, control: devices.control, terminal: devices.terminal,
            consoleWriter: devices.consoleWriter, consoleInput: devices.consoleInput, serial: devices.serial,
            i8042: devices.i8042, bootTimer: devices.bootTimer, exitStatus: devices.exitStatus, disks: devices.disks,
            networkInterfaces: devices.networks, rng: devices.rng, vsock: devices.vsock?.0, vsockHost: devices.vsock?.1,
            devices: devices.manager.attached,
            dispatcher: ExitDispatcher(portIO: devices.manager.portIO, mmio: devices.manager.mmio))
    }

    /// What the device step makes.
    struct Devices {
        let manager: DeviceManager
        let eventLoop: EventLoop
        let control: RunControl
        let terminal: HostTerminal?
        let consoleWriter: ConsoleWriter?
        let consoleInput: ConsoleInput
        let serial: SerialPort
        let i8042: I8042Device
        let bootTimer: BootTimer?
        let exitStatus: ExitStatusPort
        let disks: [VirtioBlockTransport]
        let networks: [VirtioNetTransport]
        let rng: VirtioRNGTransport?
        let vsock: (VirtioVsockTransport, VsockUnixHost)?
    }

    /// The event loop, the run control and every device, attached in a fixed order: the legacy
    /// devices, then the virtio devices in one sequence of slots (disks in `--disk` order,
    /// network interfaces in `--net` order, the rng, vsock).
    static func createDevices(
        _ configuration: MachineConfiguration, vm: VirtualMachine, memory: GuestMemory, vcpus: [VCPU],
        rollback: BuildRollback, restoring saved: SnapshotState? = nil
    ) throws -> Devices {
        let eventLoop = try EventLoop()
        let manager = DeviceManager(vm: vm, memory: memory, eventLoop: eventLoop)
        rollback.add("event-loop handlers") {
            manager.detachAll()
            eventLoop.removeAllHandlers()
        }
        // The control's finish hook stops the event loop and ends a console stream; it is created
        // before the devices that end the machine (the i8042) so they can hold it.
        let consoleStream: ConsoleStream? = if case .stream(let stream) = configuration.console { stream } else { nil }
        // The terminal console's output goes through a writer thread: a vCPU never waits in write(2).
        let consoleWriter: ConsoleWriter? =
            if case .terminal = configuration.console { ConsoleWriter(fileDescriptor: STDOUT_FILENO) } else { nil }
        let control = RunControl(vcpus: vcpus) { _ in
            eventLoop.stop()
            consoleStream?.finish()
            consoleWriter?.machineEnded()
        }
        let output: any SerialOutput
        let terminal: HostTerminal?
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
        // Console input waits on this eventfd, which the UART signals when its full FIFO gets room.
        let consoleWork = try EventFD()
        let serial = try manager.attachSerial(
            output: PanicWatchingOutput(output, control: control), inputRoom: EventFDInputRoomSignal(eventfd: consoleWork),
            state: saved?.serial)
        let consoleInput = ConsoleInput(terminal: terminal, serial: serial, loop: eventLoop, work: consoleWork) {
            control.finish(.stopped(.requested))
        }
        let i8042 = try manager.attachI8042(state: saved?.i8042) { control.finish(.reset) }
        let bootTimer = configuration.bootTimer ? try manager.attachBootTimer(state: saved?.bootTimerState) : nil
        let exitStatus = try manager.attachExitStatus(state: saved?.exitStatus)
        if configuration.mmioTestDevice { _ = try manager.attachMMIOTestDevice() }
        let disks = try configuration.disks.enumerated().map { (index, disk) throws(DeviceAttachError) in
            try manager.attachDisk(disk, index: index, state: saved?.diskStates[index])
        }
        let networks = try configuration.networks.enumerated().map { (index, network) throws(DeviceAttachError) in
            try manager.attachNetwork(network, index: index, state: saved?.networkStates[index])
        }
        let rng = configuration.rng ? try manager.attachRNG(state: saved?.rngState) : nil
        let vsock = try configuration.vsock.map { (vsock) throws(DeviceAttachError) in
            try manager.attachVsock(vsock, state: saved?.vsockState)
        }
        if let host = vsock?.1 { rollback.add("vsock socket") { host.shutdown() } }
        return Devices(
            manager: manager, eventLoop: eventLoop, control: control, terminal: terminal, consoleWriter: consoleWriter,
            consoleInput: consoleInput, serial: serial, i8042: i8042, bootTimer: bootTimer, exitStatus: exitStatus, disks: disks,
            networks: networks, rng: rng, vsock: vsock)
    }
}

/// Serial output that goes nowhere.
struct DiscardingSerialOutput: SerialOutput {
    func write(_ bytes: UnsafeRawBufferPointer) {}
}
