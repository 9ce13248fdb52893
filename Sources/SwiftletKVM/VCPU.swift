import CHost
import CKVM
import Glibc
import SwiftletHost
import SwiftletMemory

/// One virtual CPU: its file descriptor, its mmap'd `kvm_run` page, register access and `run()`.
///
/// A vCPU is driven by one thread at a time (its vCPU thread). The only members another thread
/// may use are `requestImmediateExit(_:)` and the id.
package final class VCPU: @unchecked Sendable {
    /// The vCPU index (also its initial APIC ID).
    package let id: UInt32
    let fd: OwnedFileDescriptor
    /// The shared `struct kvm_run` page; exits are read from here in place, never copied.
    let runPage: UnsafeMutablePointer<kvm_run>
    let runPageSize: Int

    init(id: UInt32, fd: OwnedFileDescriptor, mmapSize: Int) throws(SystemError) {
        guard let mapping = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0),
            mapping != MAP_FAILED
        else { throw SystemError.current("mmap kvm_run of vCPU \(id)") }
        self.id = id
        self.fd = fd
        self.runPage = mapping.bindMemory(to: kvm_run.self, capacity: 1)
        self.runPageSize = mmapSize
    }

    deinit { munmap(runPage, runPageSize) }

    // MARK: Running

    /// Enters the guest until the next exit. Returns the exit, read in place from `kvm_run`.
    ///
    /// An `EINTR` (a kick from another thread, or `immediate_exit`) and the one-time `EAGAIN`
    /// of a woken application processor both come back as `.interrupted`.
    /// Allocates nothing on the success path.
    @inline(__always)
    package func run() throws(SystemError) -> VCPUExit {
        if swl_ioctl_none(fd.rawValue, SWL_KVM_RUN) < 0 {
            let error = Glibc.errno
            if error == EINTR || error == EAGAIN { return .interrupted }
            throw SystemError("KVM_RUN on vCPU \(id)", errno: error)
        }
        return VCPUExit(runPage)
    }

    /// Sets or clears `kvm_run.immediate_exit`. While set, `KVM_RUN` returns `EINTR` at once;
    /// together with a signal to the vCPU thread this stops a running vCPU from another thread.
    package func requestImmediateExit(_ exit: Bool) {
        runPage.pointer(to: \.immediate_exit)!.pointee = exit ? 1 : 0
    }

    // MARK: Registers

    /// `KVM_GET_REGS`: the general-purpose registers, RIP and RFLAGS. Throws if the ioctl fails.
    package func registers() throws(SystemError) -> kvm_regs { try get(SWL_KVM_GET_REGS, "KVM_GET_REGS") }
    /// `KVM_SET_REGS`: sets the general registers, RIP and RFLAGS. Throws if the ioctl fails.
    package func setRegisters(_ value: kvm_regs) throws(SystemError) { try set(SWL_KVM_SET_REGS, "KVM_SET_REGS", value) }
    /// `KVM_GET_SREGS`: segment and descriptor-table registers, CR0-CR8, EFER and the APIC base.
    /// Throws if the ioctl fails.
    package func specialRegisters() throws(SystemError) -> kvm_sregs { try get(SWL_KVM_GET_SREGS, "KVM_GET_SREGS") }
    /// `KVM_SET_SREGS`: sets the segment, descriptor-table and control registers, EFER and the APIC
    /// base. Throws if the ioctl fails.
    package func setSpecialRegisters(_ value: kvm_sregs) throws(SystemError) {
        try set(SWL_KVM_SET_SREGS, "KVM_SET_SREGS", value)
    }
    /// `KVM_GET_FPU`: the x87 and SSE state (FPU stack, control/status words, MXCSR, XMM0-15).
    /// Throws if the ioctl fails.
    package func fpu() throws(SystemError) -> kvm_fpu { try get(SWL_KVM_GET_FPU, "KVM_GET_FPU") }
    /// `KVM_SET_FPU`: replaces the x87 and SSE state. Throws if the ioctl fails.
    package func setFPU(_ value: kvm_fpu) throws(SystemError) { try set(SWL_KVM_SET_FPU, "KVM_SET_FPU", value) }
    /// `KVM_GET_LAPIC`: the in-kernel local APIC's 1 KiB register page. Throws if the ioctl fails.
    package func localAPIC() throws(SystemError) -> kvm_lapic_state { try get(SWL_KVM_GET_LAPIC, "KVM_GET_LAPIC") }
    /// `KVM_SET_LAPIC`: sets the local APIC's register page. Throws if the ioctl fails.
    package func setLocalAPIC(_ value: kvm_lapic_state) throws(SystemError) { try set(SWL_KVM_SET_LAPIC, "KVM_SET_LAPIC", value) }
    /// `KVM_GET_MP_STATE`: runnable, halted, waiting for INIT/SIPI... Throws if the ioctl fails.
    package func mpState() throws(SystemError) -> kvm_mp_state { try get(SWL_KVM_GET_MP_STATE, "KVM_GET_MP_STATE") }
    /// `KVM_SET_MP_STATE`: sets the vCPU's multiprocessing state (e.g. `KVM_MP_STATE_RUNNABLE`).
    /// Throws if the ioctl fails.
    package func setMPState(_ value: kvm_mp_state) throws(SystemError) {
        try set(SWL_KVM_SET_MP_STATE, "KVM_SET_MP_STATE", value)
    }

    /// `KVM_SET_MSRS` with (index, value) pairs; fails unless every MSR was accepted.
    package func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(SystemError) {
        let table = MSRTable(count: msrs.count)
        for (i, msr) in msrs.enumerated() {
            table.entries[i] = kvm_msr_entry(index: msr.index, reserved: 0, data: msr.value)
        }
        let written = swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_MSRS, table.raw)
        if written < 0 { throw SystemError.current("KVM_SET_MSRS") }
        if Int(written) != msrs.count {
            let rejected = msrs[Int(written)].index
            throw SystemError("KVM_SET_MSRS (MSR 0x\(String(rejected, radix: 16)) rejected)", errno: EINVAL)
        }
    }

    /// `KVM_GET_MSRS` for `indices`, in the same order.
    package func msrs(_ indices: [UInt32]) throws(SystemError) -> [UInt64] {
        let table = MSRTable(count: indices.count)
        for (i, index) in indices.enumerated() { table.entries[i].index = index }
        let read = swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_MSRS, table.raw)
        if read < 0 { throw SystemError.current("KVM_GET_MSRS") }
        if Int(read) != indices.count { throw SystemError("KVM_GET_MSRS (short read)", errno: EINVAL) }
        return (0..<indices.count).map { table.entries[$0].data }
    }

    /// `KVM_SET_CPUID2`: the CPUID table this vCPU reports.
    package func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(SystemError) {
        let table = CPUIDTable(entries: entries)
        if swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_CPUID2, table.raw) < 0 {
            throw SystemError.current("KVM_SET_CPUID2")
        }
    }

    /// `KVM_GET_CPUID2`: the CPUID table as KVM holds it for this vCPU.
    package func cpuid() throws(SystemError) -> [kvm_cpuid_entry2] {
        var capacity = 64
        while true {
            let table = CPUIDTable(capacity: capacity)
            if swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_CPUID2, table.raw) == 0 { return table.entries }
            if Glibc.errno == E2BIG && capacity < 4096 {
                capacity *= 2
                continue
            }
            throw SystemError.current("KVM_GET_CPUID2")
        }
    }

    func get<T: BitwiseCopyable>(_ request: UInt, _ name: StaticString) throws(SystemError) -> T {
        let value = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { value.deallocate() }
        UnsafeMutableRawPointer(value).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        if swl_ioctl_pointer(fd.rawValue, request, value) < 0 { throw SystemError.current("\(name)") }
        return value.pointee
    }

    func set<T: BitwiseCopyable>(_ request: UInt, _ name: StaticString, _ value: T) throws(SystemError) {
        var copy = value
        if swl_ioctl_pointer(fd.rawValue, request, &copy) < 0 { throw SystemError.current("\(name)") }
    }
}

/// A heap-allocated `struct kvm_msrs` with `count` entries.
final class MSRTable {
    let raw: UnsafeMutableRawPointer
    let entries: UnsafeMutablePointer<kvm_msr_entry>

    init(count: Int) {
        let bytes = MemoryLayout<kvm_msrs>.size + count * MemoryLayout<kvm_msr_entry>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(count)
        entries = (raw + MemoryLayout<kvm_msrs>.size).bindMemory(to: kvm_msr_entry.self, capacity: count)
    }

    deinit { raw.deallocate() }
}
