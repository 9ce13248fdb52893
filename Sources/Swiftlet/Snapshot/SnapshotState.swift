import CKVM
import SwiftletDevices
import SwiftletHost
import SwiftletKVM

/// Everything a state file holds: the configuration needed to build the machine again, every
/// vCPU's and the VM's KVM state, and every device's `PersistentDevice` state. KVM structures are
/// kept as their bytes (this host's layout, checked for size on restore).
struct SnapshotState: Codable {
    /// How the machine was configured.
    var kernelPath: String
    var kernelFormat: String
    var entry: SavedEntry
    var kernelEnd: UInt64
    var memorySize: UInt64
    var vcpuCount: Int
    var bootTimer: Bool
    var rng: Bool
    var disks: [SavedDisk]
    var networks: [SavedNetwork]
    /// `Machine.devices` when saved: kind and name of each, in attach order.
    var devices: [SavedDevice]
    var vcpus: [SavedVCPU]
    var vm: SavedVM
    var serial: SerialPort.State
    var i8042: I8042
    var bootTimerState: BootTimer.State?
    var exitStatus: ExitStatusPort.State
    var diskStates: [VirtioDeviceState<VirtioBlock>]
    var networkStates: [VirtioDeviceState<VirtioNet>]
    var rngState: VirtioDeviceState<VirtioRNG>?
    /// The vsock device's configuration (its socket is listened on again on restore) and state.
    var vsock: SavedVsock?
    var vsockState: VirtioDeviceState<VirtioVsock>?
}

/// The vsock device's configuration.
struct SavedVsock: Codable {
    var guestCID: UInt64
    var udsPath: String
}

/// `X86EntryMode` as plain fields.
struct SavedEntry: Codable {
    var realMode: Bool
    var a: UInt64
    var b: UInt64
    var c: UInt64

    init(_ mode: X86EntryMode) {
        switch mode {
        case .realMode(let segment, let offset, let stack):
            (realMode, a, b, c) = (true, UInt64(segment), UInt64(offset), UInt64(stack))
        case .longMode(let entry, let zeroPage): (realMode, a, b, c) = (false, entry, zeroPage, 0)
        }
    }

    var mode: X86EntryMode {
        realMode
            ? .realMode(
                segment: UInt16(truncatingIfNeeded: a), offset: UInt16(truncatingIfNeeded: b),
                stackPointer: UInt16(truncatingIfNeeded: c))
            : .longMode(entry: a, zeroPage: b)
    }
}

/// A disk: its configuration and the image's size when saved.
struct SavedDisk: Codable {
    var path: String
    var readOnly: Bool
    var id: String?
    var directIO: Bool
    var size: UInt64
    /// The rate limit (configuration; the buckets' contents are not saved: a restored machine
    /// starts with full buckets).
    var rateLimit: RateLimit?
}

/// A network interface's configuration.
struct SavedNetwork: Codable {
    var tap: String
    var mac: UInt64?
    var offloads: Bool
    /// The rate limits per direction (configuration only, as for a disk).
    var receiveRateLimit: RateLimit?
    var transmitRateLimit: RateLimit?
}

/// An entry of `Machine.devices`.
struct SavedDevice: Codable {
    var kind: String
    var name: String
}

/// One vCPU's KVM state.
struct SavedVCPU: Codable {
    var registers: [UInt8]
    var specialRegisters: [UInt8]
    /// `KVM_GET_XSAVE` when the host has KVM_CAP_XSAVE, else nil and `fpu` is set.
    var xsave: [UInt8]?
    var fpu: [UInt8]?
    var xcrs: [UInt8]?
    var msrIndices: [UInt32]
    var msrValues: [UInt64]
    var localAPIC: [UInt8]
    var mpState: [UInt8]
    var events: [UInt8]
    var debugRegisters: [UInt8]
    var cpuid: [[UInt8]]
    var tscKilohertz: UInt32
}

/// The VM's in-kernel devices and clock.
struct SavedVM: Codable {
    var picMaster: [UInt8]
    var picSlave: [UInt8]
    var ioapic: [UInt8]
    var pit: [UInt8]
    var clockNanoseconds: UInt64
}

/// The bytes of a plain C value.
func bytes<T>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

/// The plain C value (a KVM struct: no references) whose bytes are `bytes`; throws unless they
/// are exactly its size.
func value<T>(_ type: T.Type, from bytes: [UInt8], field: String) throws(SnapshotError) -> T {
    guard bytes.count == MemoryLayout<T>.size else {
        throw .wrongStructureSize(field: field, size: bytes.count, expected: MemoryLayout<T>.size)
    }
    let storage = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: MemoryLayout<T>.alignment)
    defer { storage.deallocate() }
    bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    return storage.assumingMemoryBound(to: T.self).pointee
}

extension SavedVCPU {
    /// Reads `vcpu`'s state (the vCPU must be outside KVM_RUN).
    init(_ vcpu: VCPU, msrIndices: [UInt32], hasXSAVE: Bool, hasXCRS: Bool) throws(SystemError) {
        registers = bytes(of: try vcpu.registers())
        specialRegisters = bytes(of: try vcpu.specialRegisters())
        xsave = hasXSAVE ? try vcpu.xsave() : nil
        fpu = hasXSAVE ? nil : bytes(of: try vcpu.fpu())
        xcrs = hasXCRS ? bytes(of: try vcpu.extendedControlRegisters()) : nil
        let msrs = try vcpu.readableMSRs(msrIndices)
        self.msrIndices = msrs.map(\.index)
        msrValues = msrs.map(\.value)
        localAPIC = bytes(of: try vcpu.localAPIC())
        mpState = bytes(of: try vcpu.mpState())
        events = bytes(of: try vcpu.events())
        debugRegisters = bytes(of: try vcpu.debugRegisters())
        cpuid = try vcpu.cpuid().map { bytes(of: $0) }
        tscKilohertz = try vcpu.tscKilohertz()
    }

    /// Puts this state into `vcpu`: CPUID first, then MP state, the registers, local APIC, MSRs
    /// and pending events.
    func apply(to vcpu: VCPU, index: Int) throws(SnapshotError) {
        let field = "vcpus[\(index)]"
        let cpuidEntries = try cpuid.enumerated().map { (i, entry) throws(SnapshotError) in
            try value(kvm_cpuid_entry2.self, from: entry, field: "\(field).cpuid[\(i)]")
        }
        let regs = try value(kvm_regs.self, from: registers, field: "\(field).registers")
        let sregs = try value(kvm_sregs.self, from: specialRegisters, field: "\(field).specialRegisters")
        let fpuValue = try fpu.map { (bytes) throws(SnapshotError) in try value(kvm_fpu.self, from: bytes, field: "\(field).fpu")
        }
        let xcrsValue = try xcrs.map { (bytes) throws(SnapshotError) in
            try value(kvm_xcrs.self, from: bytes, field: "\(field).xcrs")
        }
        if let xsave, xsave.count != VCPU.xsaveSize {
            throw .wrongStructureSize(field: "\(field).xsave", size: xsave.count, expected: VCPU.xsaveSize)
        }
        guard msrIndices.count == msrValues.count else {
            throw .malformed(
                path: SnapshotFile.stateName, "\(field) has \(msrIndices.count) MSR indices but \(msrValues.count) values")
        }
        let lapic = try value(kvm_lapic_state.self, from: localAPIC, field: "\(field).localAPIC")
        let mp = try value(kvm_mp_state.self, from: mpState, field: "\(field).mpState")
        let pending = try value(kvm_vcpu_events.self, from: events, field: "\(field).events")
        let debug = try value(kvm_debugregs.self, from: debugRegisters, field: "\(field).debugRegisters")
        do throws(SystemError) {
            // Firecracker's order: the local APIC before the MSRs, so the TSC-deadline MSR lands
            // in a LAPIC already in TSC-deadline mode (setting the LAPIC resets its timer).
            try vcpu.setCPUID(cpuidEntries)
            if try vcpu.tscKilohertz() != tscKilohertz { try vcpu.setTSCKilohertz(tscKilohertz) }
            try vcpu.setMPState(mp)
            try vcpu.setRegisters(regs)
            try vcpu.setSpecialRegisters(sregs)
            if let xsave { try vcpu.setXSAVE(xsave) }
            if let fpuValue { try vcpu.setFPU(fpuValue) }
            if let xcrsValue { try vcpu.setExtendedControlRegisters(xcrsValue) }
            try vcpu.setDebugRegisters(debug)
            try vcpu.setLocalAPIC(lapic)
            try vcpu.setMSRs(Array(zip(msrIndices, msrValues).map { (index: $0, value: $1) }))
            try vcpu.setEvents(pending)
        } catch {
            throw .kvm(error)
        }
    }
}

extension SavedVM {
    /// Reads the PICs, IOAPIC, PIT and kvmclock of `vm`.
    init(_ vm: VirtualMachine) throws(SystemError) {
        picMaster = bytes(of: try vm.irqChip(UInt32(KVM_IRQCHIP_PIC_MASTER)))
        picSlave = bytes(of: try vm.irqChip(UInt32(KVM_IRQCHIP_PIC_SLAVE)))
        ioapic = bytes(of: try vm.irqChip(UInt32(KVM_IRQCHIP_IOAPIC)))
        pit = bytes(of: try vm.pitState())
        clockNanoseconds = try vm.clock().clock
    }

    /// Puts this state into `vm` (after its irqchip and PIT were created).
    func apply(to vm: VirtualMachine) throws(SnapshotError) {
        let chips = try [("vm.picMaster", picMaster), ("vm.picSlave", picSlave), ("vm.ioapic", ioapic)].map {
            (field, bytes) throws(SnapshotError) in try value(kvm_irqchip.self, from: bytes, field: field)
        }
        let pitValue = try value(kvm_pit_state2.self, from: pit, field: "vm.pit")
        do throws(SystemError) {
            for chip in chips { try vm.setIRQChip(chip) }
            try vm.setPITState(pitValue)
            try vm.setClock(nanoseconds: clockNanoseconds)
        } catch {
            throw .kvm(error)
        }
    }
}
