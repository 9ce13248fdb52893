import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// A CPUID feature bit by the name Linux uses for it (`/proc/cpuinfo`, `clearcpuid=`), or a
/// KVM paravirtual feature of leaf 0x40000001 (`kvm_` and the rest of Linux's `KVM_FEATURE_`
/// macro name in lower case, e.g. `kvm_pv_send_ipi` for `KVM_FEATURE_PV_SEND_IPI`).
public struct CPUIDFeature: Equatable, Sendable {
    /// The output register of a CPUID leaf that holds the bit.
    public enum Register: Sendable { case eax, ebx, ecx, edx }

    /// Linux's name for the feature, e.g. `avx2` (as in `/proc/cpuinfo` flags), or
    /// `kvm_...` for a KVM paravirtual feature.
    public let name: String
    /// The CPUID function (EAX input) that reports it, e.g. 1 or 7.
    public let leaf: UInt32
    /// The CPUID index (ECX input); 0 for leaves without subleaves.
    public let subleaf: UInt32
    /// Which of EAX, EBX, ECX, EDX the bit is in.
    public let register: Register
    /// The bit number within `register`, 0-31.
    public let bit: Int

    /// The features `--cpuid-mask` knows, by name.
    public static let known: [CPUIDFeature] =
        [
            .init(name: "ssse3", leaf: 1, subleaf: 0, register: .ecx, bit: 9),
            .init(name: "fma", leaf: 1, subleaf: 0, register: .ecx, bit: 12),
            .init(name: "cx16", leaf: 1, subleaf: 0, register: .ecx, bit: 13),
            .init(name: "pcid", leaf: 1, subleaf: 0, register: .ecx, bit: 17),
            .init(name: "sse4_1", leaf: 1, subleaf: 0, register: .ecx, bit: 19),
            .init(name: "sse4_2", leaf: 1, subleaf: 0, register: .ecx, bit: 20),
            .init(name: "x2apic", leaf: 1, subleaf: 0, register: .ecx, bit: 21),
            .init(name: "movbe", leaf: 1, subleaf: 0, register: .ecx, bit: 22),
            .init(name: "popcnt", leaf: 1, subleaf: 0, register: .ecx, bit: 23),
            .init(name: "tsc_deadline_timer", leaf: 1, subleaf: 0, register: .ecx, bit: 24),
            .init(name: "aes", leaf: 1, subleaf: 0, register: .ecx, bit: 25),
            .init(name: "xsave", leaf: 1, subleaf: 0, register: .ecx, bit: 26),
            .init(name: "avx", leaf: 1, subleaf: 0, register: .ecx, bit: 28),
            .init(name: "f16c", leaf: 1, subleaf: 0, register: .ecx, bit: 29),
            .init(name: "rdrand", leaf: 1, subleaf: 0, register: .ecx, bit: 30),
            .init(name: "fsgsbase", leaf: 7, subleaf: 0, register: .ebx, bit: 0),
            .init(name: "bmi1", leaf: 7, subleaf: 0, register: .ebx, bit: 3),
            .init(name: "avx2", leaf: 7, subleaf: 0, register: .ebx, bit: 5),
            .init(name: "smep", leaf: 7, subleaf: 0, register: .ebx, bit: 7),
            .init(name: "bmi2", leaf: 7, subleaf: 0, register: .ebx, bit: 8),
            .init(name: "erms", leaf: 7, subleaf: 0, register: .ebx, bit: 9),
            .init(name: "invpcid", leaf: 7, subleaf: 0, register: .ebx, bit: 10),
            .init(name: "avx512f", leaf: 7, subleaf: 0, register: .ebx, bit: 16),
            .init(name: "rdseed", leaf: 7, subleaf: 0, register: .ebx, bit: 18),
            .init(name: "adx", leaf: 7, subleaf: 0, register: .ebx, bit: 19),
            .init(name: "smap", leaf: 7, subleaf: 0, register: .ebx, bit: 20),
            .init(name: "umip", leaf: 7, subleaf: 0, register: .ecx, bit: 2),
            .init(name: "pku", leaf: 7, subleaf: 0, register: .ecx, bit: 3),
            .init(name: "ospke", leaf: 7, subleaf: 0, register: .ecx, bit: 4),
            .init(name: "fsrm", leaf: 7, subleaf: 0, register: .edx, bit: 4),
        ] + kvmFeatures

    /// CPUID leaf 0x40000001: the KVM paravirtual features in EAX (KVM's leaves start at
    /// 0x40000000, whose EBX/ECX/EDX say "KVMKVMKVM").
    public static let kvmFeaturesLeaf: UInt32 = 0x4000_0001

    /// The KVM paravirtual feature bits of leaf 0x40000001 EAX, as Linux's
    /// `arch/x86/include/uapi/asm/kvm_para.h` numbers them.
    public static let kvmFeatures: [CPUIDFeature] = [
        (0, "clocksource"), (1, "nop_io_delay"), (2, "mmu_op"), (3, "clocksource2"), (4, "async_pf"),
        (5, "steal_time"), (6, "pv_eoi"), (7, "pv_unhalt"), (9, "pv_tlb_flush"), (10, "async_pf_vmexit"),
        (11, "pv_send_ipi"), (12, "poll_control"), (13, "pv_sched_yield"), (14, "async_pf_int"),
        (15, "msi_ext_dest_id"), (16, "hc_map_gpa_range"), (17, "migration_control"), (24, "clocksource_stable"),
    ].map { .init(name: "kvm_" + $0.1, leaf: kvmFeaturesLeaf, subleaf: 0, register: .eax, bit: $0.0) }

    /// Whether the bit is in a hypervisor leaf (0x40000000-0x4FFFFFFF). Only the VMM's CPUID
    /// table can hide it: Linux's `clearcpuid=` knows no names for these bits.
    public var isHypervisorLeaf: Bool { leaf & 0xF000_0000 == 0x4000_0000 }

    /// Named sets of features for `--cpuid-mask`.
    public static let templates: [String: [String]] = [
        // What a kernel must not use on a KVM that emulates guest kernel code without these
        // instructions (see Docs/DESIGN.md, "CPUID"), and the paravirtual features Linux uses
        // through a hypercall, which never returns from guest kernel mode on such a KVM
        // (KVM_HC_KICK_CPU, KVM_HC_SEND_IPI, KVM_HC_SCHED_YIELD, KVM_HC_MAP_GPA_RANGE; see
        // Docs/LINUX.md, "SMP"). kvm_pv_tlb_flush stays: it only marks preempted vCPUs in the
        // steal-time area and sends ordinary IPIs.
        "emulated": [
            "cx16", "popcnt", "rdrand", "rdseed", "movbe", "fsgsbase", "smap", "smep", "umip", "pku", "ospke",
            "invpcid", "bmi1", "bmi2", "avx", "avx2", "avx512f", "erms", "fsrm", "pcid",
            "kvm_pv_unhalt", "kvm_pv_send_ipi", "kvm_pv_sched_yield", "kvm_hc_map_gpa_range",
        ]
    ]

    /// Resolves a comma-separated mask: feature names and template names.
    public static func parseMask(_ text: String) throws(CPUIDMaskError) -> [CPUIDFeature] {
        var features: [CPUIDFeature] = []
        for item in text.split(separator: ",").map(String.init) where !item.isEmpty {
            let names = templates[item] ?? [item]
            for name in names {
                guard let feature = known.first(where: { $0.name == name }) else { throw .unknownFeature(name) }
                if !features.contains(feature) { features.append(feature) }
            }
        }
        return features
    }
}

/// A `--cpuid-mask` item that names no known feature or template.
public enum CPUIDMaskError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The item (a name) is neither a feature in `CPUIDFeature.known` nor a template.
    case unknownFeature(String)
    /// The message naming the unknown item and listing every template and feature name.
    public var description: String {
        "unknown CPUID feature '\(unknownFeatureName)'; known: \(CPUIDFeature.templates.keys.sorted().joined(separator: ", ")) (templates), "
            + CPUIDFeature.known.map(\.name).joined(separator: ", ")
    }
    private var unknownFeatureName: String {
        switch self {
        case .unknownFeature(let name): name
        }
    }
}

/// Builds each vCPU's CPUID table from what KVM supports.
///
/// The topology it describes: one package of `count` cores with one thread each, vCPU `id` being
/// core `id` with APIC ID `id`. Every leaf that carries topology says so: leaf 1 (logical
/// processor count), leaf 4 (cores per package), leaves 0xB and 0x1F (x2APIC levels), and on an
/// AMD host leaf 0x80000008 ECX (core count) and leaf 0x8000001E (core and node IDs).
public enum X86CPUID {
    /// Leaf 1 ECX bit 31: "running under a hypervisor", set for every vCPU.
    public static let hypervisorPresentBit: UInt32 = 1 << 31
    /// Leaf 1 EDX bit 28 (HTT): EBX[23:16] is the logical processor count; set only for 2+ vCPUs.
    public static let htt: UInt32 = 1 << 28
    /// Leaf 0x80000001 ECX bit 22 (TOPOEXT): leaves 0x8000001D/0x8000001E describe the topology.
    public static let topologyExtensions: UInt32 = 1 << 22
    /// The extended topology leaf (AMD): EAX extended APIC ID, EBX core ID and threads per core,
    /// ECX node ID and nodes per package.
    public static let extendedTopologyLeaf: UInt32 = 0x8000_001E

    /// Whether leaf 0's vendor string (its first four bytes, in EBX) is AMD's or Hygon's, whose
    /// leaf 0x80000008 ECX holds the core count.
    static func isAMDFamily(_ supported: [kvm_cpuid_entry2]) -> Bool {
        guard let leaf0 = supported.first(where: { $0.function == 0 }) else { return false }
        return leaf0.ebx == 0x6874_7541 /* "Auth"enticAMD */ || leaf0.ebx == 0x6F67_7948 /* "Hygo"nGenuine */
    }

    /// The table for vCPU `id` of `count`: APIC IDs and processor counts in the topology leaves,
    /// the hypervisor-present bit, and every feature in `mask` cleared.
    ///
    /// Leaves 0xB and 0x1F are written whole (subleaf 0 the thread level, 1 the core level, 2
    /// the end of the list), whatever subleaves KVM offered: a KVM may offer only an empty
    /// subleaf 0, and a guest would then put every vCPU in a package of its own. TOPOEXT is
    /// cleared when KVM offers no leaf 0x8000001E to describe the topology in.
    public static func table(
        supported: [kvm_cpuid_entry2], vcpu id: UInt32, of count: Int, mask: [CPUIDFeature]
    ) -> [kvm_cpuid_entry2] {
        let coreBits = UInt32(count <= 1 ? 0 : (32 - UInt32(count - 1).leadingZeroBitCount))
        let maxExtended = supported.first { $0.function == 0x8000_0000 }?.eax ?? 0
        let hasExtendedTopology =
            maxExtended >= extendedTopologyLeaf && supported.contains { $0.function == extendedTopologyLeaf }
        let amd = isAMDFamily(supported)
        var table: [kvm_cpuid_entry2] = []
        for original in supported {
            var entry = original
            switch entry.function {
            case 1:
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (id << 24) | (UInt32(min(count, 255)) << 16)
                entry.ecx |= hypervisorPresentBit
                if count > 1 { entry.edx |= htt } else { entry.edx &= ~htt }
            case 4:
                // Cores per package - 1 in EAX[31:26]; one vCPU = one core.
                if entry.eax & 0x1F != 0 {
                    entry.eax = (entry.eax & 0x03FF_FFFF) | (UInt32(min(count, 64) - 1) << 26)
                }
            case 0xB, 0x1F:
                // Written whole at the place of the first subleaf KVM offered.
                guard !table.contains(where: { $0.function == entry.function }) else { continue }
                table += x2APICTopology(entry.function, flags: entry.flags, vcpu: id, of: count, coreBits: coreBits)
                continue
            case 0x8000_0001:
                if !hasExtendedTopology { entry.ecx &= ~topologyExtensions }
            case 0x8000_0008:
                // AMD: ECX[15:12] APIC ID bits for the core, ECX[7:0] cores - 1 (reserved on Intel).
                if amd { entry.ecx = (entry.ecx & ~UInt32(0xF0FF)) | (coreBits << 12) | UInt32(min(count, 256) - 1) }
            case extendedTopologyLeaf:
                entry.eax = id  // extended APIC ID
                entry.ebx = id & 0xFF  // core ID; EBX[15:8] threads per core - 1 = 0
                entry.ecx = 0  // node 0; ECX[10:8] nodes per package - 1 = 0
                entry.edx = 0
            default:
                break
            }
            table.append(entry)
        }
        return table.map { original in
            var entry = original
            for feature in mask where feature.leaf == entry.function && feature.subleaf == entry.index {
                let clear = ~(UInt32(1) << UInt32(feature.bit))
                switch feature.register {
                case .eax: entry.eax &= clear
                case .ebx: entry.ebx &= clear
                case .ecx: entry.ecx &= clear
                case .edx: entry.edx &= clear
                }
            }
            return entry
        }
    }

    /// Leaf 0xB or 0x1F for vCPU `id` of `count`: subleaf 0 the SMT level (1 thread, APIC ID
    /// shift 0), subleaf 1 the core level (`count` processors, shift `coreBits`), subleaf 2
    /// invalid (the end); EDX is the x2APIC ID in each.
    static func x2APICTopology(_ function: UInt32, flags: UInt32, vcpu id: UInt32, of count: Int, coreBits: UInt32)
        -> [kvm_cpuid_entry2]
    {
        let levels: [(eax: UInt32, ebx: UInt32, type: UInt32)] = [(0, 1, 1), (coreBits, UInt32(count), 2), (0, 0, 0)]
        return levels.enumerated().map { index, level in
            var entry = kvm_cpuid_entry2()
            entry.function = function
            entry.index = UInt32(index)
            entry.flags = flags | UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
            entry.eax = level.eax
            entry.ebx = level.ebx
            entry.ecx = (level.type << 8) | UInt32(index)
            entry.edx = id
            return entry
        }
    }
}

/// The model-specific registers a Linux guest expects at its 64-bit entry.
public enum BootMSRs {
    /// `IA32_SYSENTER_CS`: code segment selector for SYSENTER.
    public static let sysenterCS: UInt32 = 0x174
    /// `IA32_SYSENTER_ESP`: stack pointer loaded by SYSENTER.
    public static let sysenterESP: UInt32 = 0x175
    /// `IA32_SYSENTER_EIP`: entry point of SYSENTER.
    public static let sysenterEIP: UInt32 = 0x176
    /// `STAR`: segment selectors for SYSCALL/SYSRET (and the legacy 32-bit SYSCALL target).
    public static let star: UInt32 = 0xC000_0081
    /// `LSTAR`: RIP of the 64-bit mode SYSCALL entry.
    public static let lstar: UInt32 = 0xC000_0082
    /// `CSTAR`: RIP of the compatibility-mode SYSCALL entry.
    public static let cstar: UInt32 = 0xC000_0083
    /// `SFMASK` (`MSR_SYSCALL_MASK`): RFLAGS bits SYSCALL clears.
    public static let syscallMask: UInt32 = 0xC000_0084
    /// `KERNEL_GS_BASE`: the GS base SWAPGS exchanges with the current one.
    public static let kernelGSBase: UInt32 = 0xC000_0102
    /// `IA32_TIME_STAMP_COUNTER`: the TSC value.
    public static let tsc: UInt32 = 0x10
    /// `IA32_MISC_ENABLE`: bit 0 enables fast string operations (`rep movs/stos`).
    public static let miscEnable: UInt32 = 0x1A0
    /// `IA32_MTRR_DEF_TYPE`: bits 7:0 the default memory type, bit 11 enables the MTRRs.
    public static let mtrrDefType: UInt32 = 0x2FF

    /// SYSCALL/SYSENTER state cleared, TSC 0, fast strings on, MTRRs enabled with write-back as
    /// the default memory type.
    public static let values: [(index: UInt32, value: UInt64)] = [
        (sysenterCS, 0), (sysenterESP, 0), (sysenterEIP, 0),
        (star, 0), (lstar, 0), (cstar, 0), (syscallMask, 0), (kernelGSBase, 0),
        (tsc, 0),
        (miscEnable, 1),  // fast-string enable
        (mtrrDefType, (1 << 11) | 6),  // MTRRs enabled, default type write-back
    ]
}

/// The local APIC's local interrupt pins, as Linux expects them from a PC: LINT0 delivers the
/// 8259's interrupts (ExtINT), LINT1 is the NMI line.
public enum LocalAPICSetup {
    /// Offset of the LVT LINT0 register in the APIC register page (`kvm_lapic_state.regs`).
    public static let lint0Register = 0x350
    /// Offset of the LVT LINT1 register in the APIC register page (`kvm_lapic_state.regs`).
    public static let lint1Register = 0x360
    /// LVT delivery mode (bits 10:8) 0b111, ExtINT: the interrupt vector comes from the 8259.
    public static let deliveryModeExtINT: UInt32 = 0x7 << 8
    /// LVT delivery mode (bits 10:8) 0b100: deliver a non-maskable interrupt.
    public static let deliveryModeNMI: UInt32 = 0x4 << 8

    /// `state` with LINT0 = ExtINT and LINT1 = NMI (other LVT bits kept, masks cleared).
    public static func configure(_ state: kvm_lapic_state) -> kvm_lapic_state {
        var result = state
        withUnsafeMutableBytes(of: &result.regs) { regs in
            for (offset, mode) in [(lint0Register, deliveryModeExtINT), (lint1Register, deliveryModeNMI)] {
                var value = regs.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                value = (value & ~UInt32(0x0001_0700)) | mode
                regs.storeBytes(of: value, toByteOffset: offset, as: UInt32.self)
            }
        }
        return result
    }

    /// The LVT register at `offset` of `state`.
    public static func register(_ offset: Int, of state: kvm_lapic_state) -> UInt32 {
        withUnsafeBytes(of: state.regs) { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }
}
