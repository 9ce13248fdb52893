import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Control-register and EFER bits Swiftlet sets for the guest's first instruction.
package enum X86ControlBits {
    /// CR0.PE (bit 0): protected mode.
    package static let cr0ProtectionEnable: UInt64 = 1 << 0
    /// CR0.MP (bit 1): WAIT/FWAIT honour CR0.TS.
    package static let cr0MonitorCoprocessor: UInt64 = 1 << 1
    /// CR0.ET (bit 4): 387-compatible FPU (hard-wired to 1 on modern CPUs).
    package static let cr0ExtensionType: UInt64 = 1 << 4
    /// CR0.NE (bit 5): report x87 errors as #MF exceptions rather than through the PIC.
    package static let cr0NumericError: UInt64 = 1 << 5
    /// CR0.WP (bit 16): supervisor writes honour read-only pages.
    package static let cr0WriteProtect: UInt64 = 1 << 16
    /// CR0.AM (bit 18): allow alignment checking (with RFLAGS.AC at CPL 3).
    package static let cr0AlignmentMask: UInt64 = 1 << 18
    /// CR0.PG (bit 31): paging; with EFER.LME it activates long mode.
    package static let cr0Paging: UInt64 = 1 << 31
    /// CR4.PAE (bit 5): physical address extension, required for long mode's 4-level tables.
    package static let cr4PAE: UInt64 = 1 << 5
    /// EFER.LME (bit 8 of MSR 0xC000_0080): long mode enable.
    package static let eferLME: UInt64 = 1 << 8
    /// EFER.LMA (bit 10): long mode active. The CPU sets it when paging turns on with LME; a vCPU
    /// started directly in long mode needs it set by the VMM.
    package static let eferLMA: UInt64 = 1 << 10
    /// CR0 = 0x80050033: PE, MP, ET, NE, WP, AM, PG (what Linux runs with).
    package static let longModeCR0 =
        cr0ProtectionEnable | cr0MonitorCoprocessor | cr0ExtensionType
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
package enum X86VCPUSetup {
    /// The special registers for `mode`, starting from what KVM reports for the vCPU.
    package static func specialRegisters(for mode: X86EntryMode, from initial: kvm_sregs) -> kvm_sregs {
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
    package static func registers(for mode: X86EntryMode) -> kvm_regs {
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
    package static func floatingPointState() -> kvm_fpu {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        return fpu
    }

    /// Applies `mode` to `vcpu`.
    package static func configure(_ vcpu: VCPU, for mode: X86EntryMode) throws(SystemError) {
        let sregs = specialRegisters(for: mode, from: try vcpu.specialRegisters())
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(registers(for: mode))
        try vcpu.setFPU(floatingPointState())
    }
}
