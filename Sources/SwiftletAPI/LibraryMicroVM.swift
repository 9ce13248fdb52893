import Glibc
import Swiftlet
import SwiftletHost

/// The library's `Machine` as the controller's `MicroVM`. When the guest ends, `onExit` runs on
/// a thread of its own with how it ended (swiftlet-api ends the process there, as Firecracker does).
public final class LibraryMicroVM: MicroVM {
    /// The machine.
    public let machine: Machine

    init(_ machine: Machine, onExit: @escaping @Sendable (GuestExit) -> Void) throws {
        self.machine = machine
        try NativeThread(name: "machine waiter", stackSize: NativeThread.helperStackSize) { onExit(machine.wait()) }.detach()
    }

    /// Parks every vCPU.
    public func pause() { machine.pause() }
    /// Lets them run.
    public func resume() { machine.resume() }
    /// `Machine.snapshot(to:)`.
    public func snapshot(to directory: String) throws { try machine.snapshot(to: directory) }
}

/// Boots and restores `Machine`s with the host terminal as console; `onExit` gets how each ended.
public struct LibraryMicroVMFactory: MicroVMFactory {
    /// Called with how the guest ended, on its waiter thread.
    public let onExit: @Sendable (Machine, GuestExit) -> Void
    /// Called with each machine right after it is built, before it starts (signal stoppers).
    public let onBuilt: @Sendable (Machine) -> Void
    /// Whether the machines' threads get their seccomp filters (`--no-seccomp` clears it).
    public let seccomp: Bool
    /// CPUID features hidden from every guest it boots (`--cpuid-mask`; a restored guest keeps its own).
    public let cpuidMask: [CPUIDFeature]

    /// A factory reporting to these closures.
    public init(
        seccomp: Bool = true, cpuidMask: [CPUIDFeature] = [], onBuilt: @escaping @Sendable (Machine) -> Void,
        onExit: @escaping @Sendable (Machine, GuestExit) -> Void
    ) {
        self.seccomp = seccomp
        self.cpuidMask = cpuidMask
        self.onBuilt = onBuilt
        self.onExit = onExit
    }

    /// Builds and starts the machine.
    public func boot(_ configuration: MachineConfiguration) throws -> any MicroVM {
        var configuration = configuration
        configuration.seccomp = seccomp
        configuration.cpuidMask += cpuidMask
        let machine = try Machine(configuration)
        onBuilt(machine)
        try machine.start()
        let onExit = self.onExit
        return try LibraryMicroVM(machine) { onExit(machine, $0) }
    }

    /// Restores the machine saved in `directory` and starts it (paused unless `resume`).
    public func restore(directory: String, resume: Bool) throws -> any MicroVM {
        let machine = try Machine(restoringFrom: directory, seccomp: seccomp)
        onBuilt(machine)
        if !resume { machine.pause() }
        try machine.start()
        let onExit = self.onExit
        return try LibraryMicroVM(machine) { onExit(machine, $0) }
    }
}
