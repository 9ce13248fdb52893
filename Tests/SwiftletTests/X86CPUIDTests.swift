import CKVM
import Testing

@testable import Swiftlet

/// The per-vCPU CPUID table built from KVM's supported table, checked without KVM.
@Suite("X86 CPUID")
struct X86CPUIDTests {
    static func entry(_ function: UInt32, _ index: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0)
        -> kvm_cpuid_entry2
    {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.index = index
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }

    static let supported: [kvm_cpuid_entry2] = [
        entry(0, eax: 0xD),
        entry(1, eax: 0x806F8, ebx: 0xFF00_0800, ecx: 0xFFFF_FFFF & ~X86CPUID.hypervisorPresentBit, edx: 0xFFFF_FFFF),
        entry(4, 0, eax: 0x0000_0121), entry(4, 1, eax: 0x0000_0122), entry(4, 4, eax: 0),
        entry(7, 0, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        entry(0xB, 0, eax: 1, ebx: 2, ecx: 0x100, edx: 9), entry(0xB, 1, eax: 4, ebx: 16, ecx: 0x201, edx: 9),
        entry(0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B),
        entry(0x4000_0001, eax: kvmSupported),
    ]

    /// Leaf 0x40000001 EAX as KVM_GET_SUPPORTED_CPUID offers it on the development host.
    static let kvmSupported: UInt32 = 0x0100_7EFB

    static func find(_ table: [kvm_cpuid_entry2], _ function: UInt32, _ index: UInt32 = 0) throws -> kvm_cpuid_entry2 {
        try #require(table.first { $0.function == function && $0.index == index })
    }

    @Test("leaf 1 carries the APIC ID, the processor count and the hypervisor bit", arguments: [(0, 1), (1, 2), (3, 4)])
    func leaf1(id: Int, count: Int) throws {
        let table = X86CPUID.table(supported: Self.supported, vcpu: UInt32(id), of: count, mask: [])
        let leaf = try Self.find(table, 1)
        #expect(leaf.ebx >> 24 == UInt32(id))
        #expect((leaf.ebx >> 16) & 0xFF == UInt32(count))
        #expect(leaf.ebx & 0xFFFF == 0x0800, "brand index and CLFLUSH size are kept")
        #expect(leaf.ecx & X86CPUID.hypervisorPresentBit != 0)
        #expect((leaf.edx & X86CPUID.htt != 0) == (count > 1))
    }

    @Test("topology leaves 4 and 0xB describe one thread per core, count cores")
    func topology() throws {
        let table = X86CPUID.table(supported: Self.supported, vcpu: 2, of: 4, mask: [])
        #expect(try Self.find(table, 4, 0).eax >> 26 == 3)
        #expect(try Self.find(table, 4, 1).eax >> 26 == 3)
        #expect(try Self.find(table, 4, 4).eax == 0, "the terminating subleaf stays empty")
        let smt = try Self.find(table, 0xB, 0)
        let core = try Self.find(table, 0xB, 1)
        #expect(smt.eax == 0 && smt.ebx == 1 && smt.ecx == 0x100 && smt.edx == 2)
        #expect(core.eax == 2 && core.ebx == 4 && core.ecx == 0x201 && core.edx == 2)
    }

    @Test("a mask clears exactly the named bits and leaves other leaves alone")
    func mask() throws {
        let mask = try CPUIDFeature.parseMask("popcnt,avx2,umip,fsrm")
        let table = X86CPUID.table(supported: Self.supported, vcpu: 0, of: 1, mask: mask)
        #expect(try Self.find(table, 1).ecx == (0xFFFF_FFFF & ~UInt32(1 << 23)))
        let leaf7 = try Self.find(table, 7)
        #expect(leaf7.ebx == ~UInt32(1 << 5))
        #expect(leaf7.ecx == ~UInt32(1 << 2))
        #expect(leaf7.edx == ~UInt32(1 << 4))
        #expect(try Self.find(table, 0x4000_0000).ebx == 0x4B4D_564B, "the hypervisor leaf is kept")
        #expect(table.count == Self.supported.count)
    }

    @Test("mask names and templates are parsed; unknown names are refused")
    func parsing() throws {
        #expect(try CPUIDFeature.parseMask("cx16,popcnt").map(\.name) == ["cx16", "popcnt"])
        #expect(try CPUIDFeature.parseMask("emulated").count == CPUIDFeature.templates["emulated"]!.count)
        #expect(try CPUIDFeature.parseMask("emulated,popcnt").count == CPUIDFeature.templates["emulated"]!.count)
        #expect(try CPUIDFeature.parseMask("").isEmpty)
        #expect(throws: CPUIDMaskError.unknownFeature("sse9")) { try CPUIDFeature.parseMask("popcnt,sse9") }
    }

    @Test("the KVM paravirtual features have names for bits 0-17 and 24 of leaf 0x40000001 EAX")
    func kvmFeatureNames() throws {
        let bits = Dictionary(uniqueKeysWithValues: CPUIDFeature.kvmFeatures.map { ($0.name, $0.bit) })
        #expect(bits["kvm_clocksource"] == 0 && bits["kvm_pv_unhalt"] == 7 && bits["kvm_pv_tlb_flush"] == 9)
        #expect(bits["kvm_pv_send_ipi"] == 11 && bits["kvm_pv_sched_yield"] == 13 && bits["kvm_migration_control"] == 17)
        #expect(bits["kvm_clocksource_stable"] == 24)
        #expect(Set(bits.values) == Set(Array(0...7) + Array(9...17) + [24]))
        for feature in CPUIDFeature.kvmFeatures {
            #expect(feature.leaf == 0x4000_0001 && feature.register == .eax && feature.isHypervisorLeaf)
        }
        #expect(Set(CPUIDFeature.known.map(\.name)).count == CPUIDFeature.known.count, "names are unique")
        #expect(!(try CPUIDFeature.parseMask("popcnt"))[0].isHypervisorLeaf)
    }

    @Test("one KVM feature name clears exactly its bit of leaf 0x40000001 EAX", arguments: [7, 9, 11, 13])
    func kvmFeatureMask(bit: Int) throws {
        let feature = try #require(CPUIDFeature.kvmFeatures.first { $0.bit == bit })
        let table = X86CPUID.table(supported: Self.supported, vcpu: 0, of: 2, mask: try CPUIDFeature.parseMask(feature.name))
        #expect(try Self.find(table, 0x4000_0001).eax == Self.kvmSupported & ~(UInt32(1) << UInt32(bit)))
        #expect(try Self.find(table, 1).ecx == 0xFFFF_FFFF, "hardware leaves are not touched")
    }

    @Test("without a mask the KVM features are offered as KVM supports them; `emulated` clears the hypercall-based ones")
    func emulatedTemplateClearsHypercallFeatures() throws {
        let plain = X86CPUID.table(supported: Self.supported, vcpu: 0, of: 2, mask: [])
        #expect(try Self.find(plain, 0x4000_0001).eax == Self.kvmSupported)
        let emulated = X86CPUID.table(supported: Self.supported, vcpu: 0, of: 2, mask: try CPUIDFeature.parseMask("emulated"))
        // pv_unhalt (7), pv_send_ipi (11), pv_sched_yield (13), hc_map_gpa_range (16).
        let hypercallBits: UInt32 = 1 << 7 | 1 << 11 | 1 << 13 | 1 << 16
        #expect(try Self.find(emulated, 0x4000_0001).eax == Self.kvmSupported & ~hypercallBits)
        #expect(try Self.find(emulated, 0x4000_0001).eax == 0x0100_567B)
    }

    @Test("clearcpuid= names only the hardware features of a mask")
    func clearcpuidLeavesOutKVMFeatures() throws {
        let mask = try CPUIDFeature.parseMask("popcnt,kvm_pv_send_ipi,cx16")
        #expect(LinuxBoot.commandLine(base: "quiet", cpuidMask: mask) == "quiet clearcpuid=popcnt,cx16")
        #expect(LinuxBoot.commandLine(base: "quiet", cpuidMask: try CPUIDFeature.parseMask("kvm_pv_unhalt")) == "quiet")
        let emulated = LinuxBoot.commandLine(base: "", cpuidMask: try CPUIDFeature.parseMask("emulated"))
        #expect(emulated.hasPrefix("clearcpuid=cx16,popcnt,") && !emulated.contains("kvm"))
    }
}
