import CHost
import CKVM
import Glibc
import SwiftletHost

// The parts of a vCPU's state only a snapshot reads and writes back.
extension VCPU {
    /// The size of `struct kvm_xsave`'s fixed region, what `KVM_GET_XSAVE` fills (4 KiB).
    package static let xsaveSize = 4096

    /// `KVM_GET_XSAVE`: the 4 KiB XSAVE area (x87, SSE, AVX... as the host's XSAVE lays it out),
    /// as bytes (the struct ends in a flexible array). Throws if the ioctl fails.
    package func xsave() throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.xsaveSize)
        let result = bytes.withUnsafeMutableBytes { swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_XSAVE, $0.baseAddress) }
        if result < 0 { throw SystemError.current("KVM_GET_XSAVE") }
        return bytes
    }
    /// `KVM_SET_XSAVE`: replaces the XSAVE area with `bytes` (`xsaveSize` of them). Throws if the
    /// ioctl fails or the size is wrong.
    package func setXSAVE(_ bytes: [UInt8]) throws(SystemError) {
        guard bytes.count == Self.xsaveSize else {
            throw SystemError("KVM_SET_XSAVE (area of \(bytes.count) bytes)", errno: EINVAL)
        }
        var copy = bytes
        let result = copy.withUnsafeMutableBytes { swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_XSAVE, $0.baseAddress) }
        if result < 0 { throw SystemError.current("KVM_SET_XSAVE") }
    }
    /// `KVM_GET_XCRS`: the extended control registers (XCR0). Throws if the ioctl fails.
    package func extendedControlRegisters() throws(SystemError) -> kvm_xcrs { try get(SWL_KVM_GET_XCRS, "KVM_GET_XCRS") }
    /// `KVM_SET_XCRS`: sets the extended control registers. Throws if the ioctl fails.
    package func setExtendedControlRegisters(_ value: kvm_xcrs) throws(SystemError) {
        try set(SWL_KVM_SET_XCRS, "KVM_SET_XCRS", value)
    }
    /// `KVM_GET_VCPU_EVENTS`: pending exceptions, interrupts, NMIs and SIPIs, and the interrupt
    /// shadow. Throws if the ioctl fails.
    package func events() throws(SystemError) -> kvm_vcpu_events {
        try get(SWL_KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS")
    }
    /// `KVM_SET_VCPU_EVENTS`: sets the pending events. Throws if the ioctl fails.
    package func setEvents(_ value: kvm_vcpu_events) throws(SystemError) {
        try set(SWL_KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", value)
    }
    /// `KVM_GET_DEBUGREGS`: DR0-DR3, DR6 and DR7. Throws if the ioctl fails.
    package func debugRegisters() throws(SystemError) -> kvm_debugregs {
        try get(SWL_KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS")
    }
    /// `KVM_SET_DEBUGREGS`: sets DR0-DR3, DR6 and DR7. Throws if the ioctl fails.
    package func setDebugRegisters(_ value: kvm_debugregs) throws(SystemError) {
        try set(SWL_KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", value)
    }
    /// `KVM_GET_TSC_KHZ`: the guest TSC frequency in kHz. Throws if the ioctl fails.
    package func tscKilohertz() throws(SystemError) -> UInt32 {
        let khz = swl_ioctl_none(fd.rawValue, SWL_KVM_GET_TSC_KHZ)
        if khz < 0 { throw SystemError.current("KVM_GET_TSC_KHZ") }
        return UInt32(khz)
    }
    /// `KVM_SET_TSC_KHZ`: scales the guest TSC to `khz` (needs KVM_CAP_TSC_CONTROL). Throws if
    /// the ioctl fails.
    package func setTSCKilohertz(_ khz: UInt32) throws(SystemError) {
        if swl_ioctl_value(fd.rawValue, SWL_KVM_SET_TSC_KHZ, UInt(khz)) < 0 {
            throw SystemError.current("KVM_SET_TSC_KHZ")
        }
    }

    /// The values of those `indices` KVM lets this vCPU read, in order; an MSR that `KVM_GET_MSRS`
    /// refuses is left out (KVM lists some MSRs a given CPU model does not have).
    package func readableMSRs(_ indices: [UInt32]) throws(SystemError) -> [(index: UInt32, value: UInt64)] {
        var result: [(index: UInt32, value: UInt64)] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let batch = Array(rest)
            let table = MSRTable(count: batch.count)
            for (i, index) in batch.enumerated() { table.entries[i].index = index }
            let read = swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_MSRS, table.raw)
            if read < 0 { throw SystemError.current("KVM_GET_MSRS") }
            for i in 0..<Int(read) { result.append((batch[i], table.entries[i].data)) }
            // KVM stops at the first MSR it cannot read: skip that one and go on after it.
            rest = rest.dropFirst(Int(read) + 1)
        }
        return result
    }
}

extension KVM {
    /// `KVM_GET_MSR_INDEX_LIST`: the MSRs KVM saves and restores for a guest.
    package func msrIndexList() throws(SystemError) -> [UInt32] {
        var capacity = 256
        while true {
            let bytes = MemoryLayout<kvm_msr_list>.size + capacity * MemoryLayout<UInt32>.stride
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            raw.assumingMemoryBound(to: kvm_msr_list.self).pointee.nmsrs = UInt32(capacity)
            if swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_MSR_INDEX_LIST, raw) == 0 {
                let count = Int(raw.assumingMemoryBound(to: kvm_msr_list.self).pointee.nmsrs)
                let indices = (raw + MemoryLayout<kvm_msr_list>.size).assumingMemoryBound(to: UInt32.self)
                return Array(UnsafeBufferPointer(start: indices, count: min(count, capacity)))
            }
            if Glibc.errno == E2BIG && capacity < 65536 {
                capacity *= 4
                continue
            }
            throw SystemError.current("KVM_GET_MSR_INDEX_LIST")
        }
    }
}

// The VM-wide state a snapshot reads and writes back.
extension VirtualMachine {
    /// `KVM_GET_IRQCHIP` for `chip` (`KVM_IRQCHIP_PIC_MASTER`, `_PIC_SLAVE` or `_IOAPIC`).
    /// Throws if the ioctl fails.
    package func irqChip(_ chip: UInt32) throws(SystemError) -> kvm_irqchip {
        var value = kvm_irqchip()
        value.chip_id = chip
        try check("KVM_GET_IRQCHIP \(chip)") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_IRQCHIP, &value) }
        return value
    }
    /// `KVM_SET_IRQCHIP`: sets the chip `value.chip_id` names. Throws if the ioctl fails.
    package func setIRQChip(_ value: kvm_irqchip) throws(SystemError) {
        var copy = value
        try check("KVM_SET_IRQCHIP \(value.chip_id)") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_IRQCHIP, &copy) }
    }
    /// `KVM_GET_PIT2`: the in-kernel i8254's channels and flags. Throws if the ioctl fails.
    package func pitState() throws(SystemError) -> kvm_pit_state2 {
        var value = kvm_pit_state2()
        try check("KVM_GET_PIT2") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_PIT2, &value) }
        return value
    }
    /// `KVM_SET_PIT2`: sets the i8254's channels and flags. Throws if the ioctl fails.
    package func setPITState(_ value: kvm_pit_state2) throws(SystemError) {
        var copy = value
        try check("KVM_SET_PIT2") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_PIT2, &copy) }
    }
    /// `KVM_GET_CLOCK`: the kvmclock's current value in nanoseconds. Throws if the ioctl fails.
    package func clock() throws(SystemError) -> kvm_clock_data {
        var value = kvm_clock_data()
        try check("KVM_GET_CLOCK") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_CLOCK, &value) }
        return value
    }
    /// `KVM_SET_CLOCK`: sets the kvmclock to `nanoseconds` (flags cleared: the value only).
    /// Throws if the ioctl fails.
    package func setClock(nanoseconds: UInt64) throws(SystemError) {
        var value = kvm_clock_data()
        value.clock = nanoseconds
        try check("KVM_SET_CLOCK") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_CLOCK, &value) }
    }
}
