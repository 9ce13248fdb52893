import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// How a guest ended: what `Machine.wait()` returns and what the CLI's exit code says.
public enum GuestExit: Equatable, Sendable, CustomStringConvertible {
    /// The guest asked for a reset (i8042 0xFE, or a KVM reset system event). Reboot = end.
    case reset
    /// The guest powered off (a KVM shutdown system event).
    case powerOff
    /// The guest's init reported its command's exit status (`ExitStatusPort`) and then reset or
    /// powered off. The CLI exits with `status`.
    case commandExited(status: UInt8)
    /// A vCPU executed `hlt` with nothing to wake it (only without an in-kernel irqchip).
    case halted(vcpu: UInt32, rip: UInt64)
    /// The guest reported a crash (a KVM crash system event, or a guest kernel panic).
    case guestPanic(vcpu: UInt32)
    /// A triple fault: the CPU shut down (`KVM_EXIT_SHUTDOWN`).
    case tripleFault(vcpu: UInt32, rip: UInt64)
    /// KVM could not emulate an instruction or deliver an event (`KVM_EXIT_INTERNAL_ERROR`).
    case internalError(vcpu: UInt32, suberror: UInt32, rip: UInt64)
    /// VM entry failed (`KVM_EXIT_FAIL_ENTRY`) with a hardware reason code.
    case entryFailure(vcpu: UInt32, reason: UInt64, rip: UInt64)
    /// An exit Swiftlet does not handle.
    case unhandledExit(vcpu: UInt32, reason: UInt32, rip: UInt64)
    /// `KVM_RUN` or another vCPU call failed.
    case vcpuFailed(vcpu: UInt32, error: SystemError)
    /// The host stopped the VM: `Machine.stop()`, the console escape, or a deadline.
    case stopped(HostStopReason)
    /// A VMM thread could not start its work (its seccomp filter could not be installed).
    case hostThreadFailed(SystemError)

    /// Whether the guest ended the way a guest is meant to (reset, power-off, host request).
    public var isClean: Bool {
        switch self {
        case .reset, .powerOff, .commandExited, .halted, .stopped(.requested), .stopped(.signal): true
        default: false
        }
    }

    /// The process exit code the CLI uses (documented in README and `swiftlet boot --help`).
    public var exitCode: Int32 {
        switch self {
        case .reset, .powerOff, .halted, .stopped(.requested): 0
        case .commandExited(let status): Int32(status)
        case .tripleFault: 3
        case .internalError: 4
        case .entryFailure: 5
        case .unhandledExit: 6
        case .vcpuFailed: 7
        case .guestPanic: 8
        case .stopped(.deadline): 124
        case .stopped(.signal(let number)): 128 + number
        case .hostThreadFailed: 1
        }
    }

    /// A one-line explanation naming the vCPU, the RIP in hex and the KVM reason where there is one.
    public var description: String {
        switch self {
        case .reset: "guest requested a reset"
        case .powerOff: "guest powered off"
        case .commandExited(let status): "the guest's command exited with status \(status)"
        case .halted(let vcpu, let rip): "vCPU \(vcpu) halted at RIP \(hex(rip))"
        case .guestPanic(let vcpu): "guest panicked (reported on vCPU \(vcpu))"
        case .tripleFault(let vcpu, let rip): "triple fault (KVM_EXIT_SHUTDOWN) on vCPU \(vcpu) at RIP \(hex(rip))"
        case .internalError(let vcpu, let suberror, let rip):
            "KVM internal error \(suberror) (\(internalErrorName(suberror))) on vCPU \(vcpu) at RIP \(hex(rip))"
        case .entryFailure(let vcpu, let reason, let rip):
            "VM entry failed (hardware reason \(hex(reason))) on vCPU \(vcpu) at RIP \(hex(rip))"
        case .unhandledExit(let vcpu, let reason, let rip): "unhandled KVM exit \(reason) on vCPU \(vcpu) at RIP \(hex(rip))"
        case .vcpuFailed(let vcpu, let error): "vCPU \(vcpu): \(error)"
        case .stopped(.requested): "stopped by the host"
        case .stopped(.deadline): "stopped: deadline reached"
        case .stopped(.signal(let number)): "stopped by signal \(number)"
        case .hostThreadFailed(let error): "\(error)"
        }
    }
}

extension GuestExit {
    /// How a machine that ended with `exit` is reported when the guest wrote `reportedStatus` to
    /// the exit-status device: a reset or power-off becomes `.commandExited`; every other ending
    /// (a crash, a host stop, a deadline) is kept, so a status reported before a panic or a
    /// timeout does not hide it.
    public static func ending(_ exit: GuestExit, reportedStatus: UInt8?) -> GuestExit {
        guard let status = reportedStatus else { return exit }
        switch exit {
        case .reset, .powerOff: return .commandExited(status: status)
        default: return exit
        }
    }
}

/// Why the host stopped a VM.
public enum HostStopReason: Equatable, Sendable {
    /// `Machine.stop()` or the console escape (`Ctrl-A x`).
    case requested
    /// The deadline set with `Machine.setDeadline(after:)` passed.
    case deadline
    /// The process received this signal (see `SignalStopper`).
    case signal(Int32)
}

func internalErrorName(_ suberror: UInt32) -> String {
    switch Int32(bitPattern: suberror) {
    case KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed"
    case KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception"
    case KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed"
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason"
    default: "unknown"
    }
}
