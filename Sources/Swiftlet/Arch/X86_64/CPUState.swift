import CKVM

/// Control-register and EFER bits Swiftlet sets for the guest's first instruction.
public enum X86ControlBits {
    public static let cr0ProtectionEnable: UInt64 = 1 << 0
    public static let cr0MonitorCoprocessor: UInt64 = 1 << 1
    public static let cr0ExtensionType: UInt64 = 1 << 4
    public static let cr0NumericError: UInt64 = 1 << 5
    public static let cr0WriteProtect: UInt64 = 1 << 16
    public static let cr0AlignmentMask: UInt64 = 1 << 18
    public static let cr0Paging: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    /// CR0 = 0x80050033: PE, MP, ET, NE, WP, AM, PG (what Linux runs with).
    public static let longModeCR0 = cr0ProtectionEnable | cr0MonitorCoprocessor | cr0ExtensionType
        | cr0NumericError | cr0WriteProtect | cr0AlignmentMask | cr0Paging
}

/// How a vCPU starts: the architectural entry state Swiftlet puts a guest in.
public enum X86EntryMode: Equatable, Sendable {
    /// 16-bit real mode at `segment:offset` (flat binaries, application processors).
    case realMode(segment: UInt16, offset: UInt16, stackPointer: UInt16)
    /// 64-bit long mode through the boot GDT and identity map, at `entry`, with RSI = `zeroPage`
    /// (the Linux 64-bit boot protocol).
    case longMode(entry: UInt64, zeroPage: UInt64)
}

/// Puts a vCPU into the entry state: special registers, general registers, FPU.
public enum X86VCPUSetup {
    /// The special registers for `mode`, starting from what KVM reports for the vCPU.
    public static func specialRegisters(for mode: X86EntryMode, from initial: kvm_sregs) -> kvm_sregs {
        var sregs = initial
        switch mode {
        case .realMode(let segment, _, _):
            var code = sregs.cs
            code.selector = segment
            code.base = UInt64(segment) << 4
            sregs.cs = code
            for keyPath: WritableKeyPath<kvm_sregs, kvm_segment> in [\.ds, \.es, \.ss, \.fs, \.gs] {
                var data = sregs[keyPath: keyPath]
                data.selector = segment
                data.base = UInt64(segment) << 4
                sregs[keyPath: keyPath] = data
            }
        case .longMode:
            sregs.gdt.base = X86Layout.gdtAddress.rawValue
            sregs.gdt.limit = UInt16(BootGDT.entries.count * 8 - 1)
            sregs.idt.base = X86Layout.idtAddress.rawValue
            sregs.idt.limit = 7
            sregs.cs = SegmentDescriptor.code64.kvmSegment(selector: BootGDT.codeSelector)
            let data = SegmentDescriptor.data.kvmSegment(selector: BootGDT.dataSelector)
            sregs.ds = data
            sregs.es = data
            sregs.fs = data
            sregs.gs = data
            sregs.ss = data
            sregs.cr3 = X86Layout.pml4Address.rawValue
            sregs.cr4 |= X86ControlBits.cr4PAE
            sregs.cr0 = X86ControlBits.longModeCR0
            sregs.efer |= X86ControlBits.eferLME | X86ControlBits.eferLMA
        }
        return sregs
    }

    /// The general registers for `mode`: entry point, stack, RSI, RFLAGS with only bit 1 set.
    public static func registers(for mode: X86EntryMode) -> kvm_regs {
        var regs = kvm_regs()
        regs.rflags = 0x2
        switch mode {
        case .realMode(_, let offset, let stackPointer):
            regs.rip = UInt64(offset)
            regs.rsp = UInt64(stackPointer)
        case .longMode(let entry, let zeroPage):
            regs.rip = entry
            regs.rsp = X86Layout.bootStackPointer
            regs.rbp = X86Layout.bootStackPointer
            regs.rsi = zeroPage
        }
        return regs
    }

    /// The x87/SSE reset state: FCW 0x37F, MXCSR 0x1F80.
    public static func floatingPointState() -> kvm_fpu {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        return fpu
    }

    /// Applies `mode` to `vcpu`.
    public static func configure(_ vcpu: VCPU, for mode: X86EntryMode) throws(SystemError) {
        let sregs = specialRegisters(for: mode, from: try vcpu.specialRegisters())
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(registers(for: mode))
        try vcpu.setFPU(floatingPointState())
    }
}
