import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Turns one vCPU exit into bus accesses or an end of the vCPU.
///
/// A plain function from (buses, exit) to an action so it can be tested with made-up exits.
/// Hot path: no allocation, no logging, no locks (the buses are immutable values).
package struct ExitDispatcher: Sendable {
    /// The port I/O bus (x86 `in`/`out`, ports 0-0xFFFF).
    package let portIO: Bus
    /// The MMIO bus: guest physical addresses with no RAM behind them (virtio-mmio windows, test device).
    package let mmio: Bus

    /// A dispatcher over these buses.
    package init(portIO: Bus, mmio: Bus) {
        self.portIO = portIO
        self.mmio = mmio
    }

    /// What the vCPU loop does after an exit.
    package enum Action: Equatable, Sendable {
        /// Re-enter the guest.
        case resume
        /// `KVM_RUN` was interrupted: check whether the machine is stopping, then re-enter.
        case interrupted
        /// This vCPU (and so the machine) ends.
        case stop(StopCause)
    }

    /// Why a vCPU stops, before its RIP is read.
    package enum StopCause: Equatable, Sendable {
        /// `halt`: `hlt` with no in-kernel irqchip (`KVM_EXIT_HLT`); `shutdown`: a triple fault
        /// (`KVM_EXIT_SHUTDOWN`).
        case halt, shutdown
        /// `KVM_EXIT_SYSTEM_EVENT` with this `KVM_SYSTEM_EVENT_*` type.
        case systemEvent(UInt32)
        /// `KVM_EXIT_INTERNAL_ERROR` with this `KVM_INTERNAL_ERROR_*` suberror.
        case internalError(UInt32)
        /// `KVM_EXIT_FAIL_ENTRY` with this hardware entry-failure reason.
        case failEntry(UInt64)
        /// An exit reason (`KVM_EXIT_*`) the VMM does not handle.
        case unhandled(UInt32)
    }

    /// Port I/O and MMIO exits become accesses on the matching bus (a string `ins`/`outs` repeats the
    /// access `count` times over consecutive data) and resume the guest; an interrupted `KVM_RUN` gives
    /// `.interrupted`; every other exit stops the vCPU with its cause. Runs on the vCPU thread.
    @inline(__always)
    package func handle(_ exit: VCPUExit) -> Action {
        switch exit {
        case .portIO(let io):
            var data = io.data
            let address = UInt64(io.port)
            for _ in 0..<io.count {
                if io.isWrite {
                    portIO.write(address, data: UnsafeRawBufferPointer(start: data, count: io.size))
                } else {
                    portIO.read(address, data: UnsafeMutableRawBufferPointer(start: data, count: io.size))
                }
                data += io.size
            }
            return .resume
        case .mmio(let access):
            if access.isWrite {
                mmio.write(access.address, data: UnsafeRawBufferPointer(access.data))
            } else {
                mmio.read(access.address, data: access.data)
            }
            return .resume
        case .interrupted: return .interrupted
        case .halt: return .stop(.halt)
        case .shutdown: return .stop(.shutdown)
        case .systemEvent(let type): return .stop(.systemEvent(type))
        case .internalError(let suberror): return .stop(.internalError(suberror))
        case .failEntry(let reason): return .stop(.failEntry(reason))
        case .unhandled(let reason): return .stop(.unhandled(reason))
        }
    }

    /// How the guest ended, given why vCPU `vcpu` stopped at `rip`.
    package static func guestExit(for cause: StopCause, vcpu: UInt32, rip: UInt64) -> GuestExit {
        switch cause {
        case .halt: .halted(vcpu: vcpu, rip: rip)
        case .shutdown: .tripleFault(vcpu: vcpu, rip: rip)
        case .systemEvent(let type):
            switch Int32(bitPattern: type) {
            case KVM_SYSTEM_EVENT_SHUTDOWN: .powerOff
            case KVM_SYSTEM_EVENT_RESET: .reset
            case KVM_SYSTEM_EVENT_CRASH: .guestPanic(vcpu: vcpu)
            default: .unhandledExit(vcpu: vcpu, reason: UInt32(KVM_EXIT_SYSTEM_EVENT), rip: rip)
            }
        case .internalError(let suberror): .internalError(vcpu: vcpu, suberror: suberror, rip: rip)
        case .failEntry(let reason): .entryFailure(vcpu: vcpu, reason: reason, rip: rip)
        case .unhandled(let reason): .unhandledExit(vcpu: vcpu, reason: reason, rip: rip)
        }
    }
}
