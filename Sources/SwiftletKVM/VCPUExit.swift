import CHost
import CKVM
import SwiftletHost
import SwiftletMemory

/// Why `KVM_RUN` returned, with any payload pointing into the vCPU's `kvm_run` page.
///
/// The data buffers of `.portIO` and `.mmio` are views of the shared page, valid until the next
/// `run()` on the same vCPU. A handler fills them in place for reads; nothing is copied.
package enum VCPUExit {
    /// An `in`/`out` instruction (`KVM_EXIT_IO`).
    case portIO(PortIOExit)
    /// A load or store to an address with no memory slot (`KVM_EXIT_MMIO`).
    case mmio(MMIOExit)
    /// `hlt` with no in-kernel irqchip to sleep in (`KVM_EXIT_HLT`).
    case halt
    /// A triple fault or other shutdown condition (`KVM_EXIT_SHUTDOWN`).
    case shutdown
    /// A PSCI/ACPI-style system event: `type` is `KVM_SYSTEM_EVENT_SHUTDOWN`, `_RESET`, ...
    case systemEvent(type: UInt32)
    /// KVM could not emulate or deliver something (`KVM_EXIT_INTERNAL_ERROR`).
    case internalError(suberror: UInt32)
    /// VM entry failed (`KVM_EXIT_FAIL_ENTRY`); `reason` is the hardware code.
    case failEntry(reason: UInt64)
    /// `KVM_RUN` was interrupted (a signal, `immediate_exit`, or `KVM_EXIT_INTR`).
    case interrupted
    /// Any other exit reason, reported as is.
    case unhandled(reason: UInt32)

    @inline(__always)
    init(_ run: UnsafeMutablePointer<kvm_run>) {
        switch Int32(bitPattern: run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = run.pointee.io
            let data = UnsafeMutableRawPointer(run) + Int(io.data_offset)
            self = .portIO(
                PortIOExit(
                    port: io.port, isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT),
                    size: Int(io.size), count: Int(io.count), data: data))
        case KVM_EXIT_MMIO:
            let data = UnsafeMutableRawPointer(run) + Int(SWL_KVM_RUN_MMIO_DATA_OFFSET)
            let length = min(Int(run.pointee.mmio.len), 8)
            self = .mmio(
                MMIOExit(
                    address: run.pointee.mmio.phys_addr, isWrite: run.pointee.mmio.is_write != 0,
                    data: UnsafeMutableRawBufferPointer(start: data, count: length)))
        case KVM_EXIT_HLT: self = .halt
        case KVM_EXIT_SHUTDOWN: self = .shutdown
        case KVM_EXIT_SYSTEM_EVENT: self = .systemEvent(type: run.pointee.system_event.type)
        case KVM_EXIT_INTERNAL_ERROR: self = .internalError(suberror: run.pointee.internal.suberror)
        case KVM_EXIT_FAIL_ENTRY: self = .failEntry(reason: run.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTR: self = .interrupted
        default: self = .unhandled(reason: run.pointee.exit_reason)
        }
    }
}

/// A port I/O exit: `count` accesses of `size` bytes each (count > 1 for `rep ins/outs`).
package struct PortIOExit {
    /// The I/O port accessed (0-0xFFFF).
    package let port: UInt16
    /// True for `out`/`outs` (`KVM_EXIT_IO_OUT`), false for `in`/`ins`.
    package let isWrite: Bool
    /// Bytes per access: 1, 2 or 4.
    package let size: Int
    /// Number of accesses, each `size` bytes; above 1 only for string I/O with a `rep` prefix.
    package let count: Int
    /// `size * count` bytes inside the `kvm_run` page.
    package let data: UnsafeMutableRawPointer

    /// An exit of `count` accesses of `size` bytes to `port`, their bytes at `data` (for tests).
    package init(port: UInt16, isWrite: Bool, size: Int, count: Int, data: UnsafeMutableRawPointer) {
        self.port = port
        self.isWrite = isWrite
        self.size = size
        self.count = count
        self.data = data
    }
}

/// An MMIO exit: one access of `data.count` (1, 2, 4 or 8) bytes at `address`.
package struct MMIOExit {
    /// The guest physical address accessed.
    package let address: UInt64
    /// True for a store (the value is in `data`), false for a load (the result goes in `data`).
    package let isWrite: Bool
    /// The bytes inside the `kvm_run` page: the value written, or where a read's result goes.
    package let data: UnsafeMutableRawBufferPointer

    /// An exit for one access at `address` whose bytes are `data` (for tests).
    package init(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        self.address = address
        self.isWrite = isWrite
        self.data = data
    }
}
