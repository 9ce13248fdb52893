import CHost
import CKVM
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

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
        let end = try Self.find(table, 0xB, 2)
        #expect(smt.eax == 0 && smt.ebx == 1 && smt.ecx == 0x100 && smt.edx == 2)
        #expect(core.eax == 2 && core.ebx == 4 && core.ecx == 0x201 && core.edx == 2)
        #expect(end.eax == 0 && end.ebx == 0 && end.ecx == 2 && end.edx == 2)
        #expect(table.filter { $0.function == 0xB }.allSatisfy { $0.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0 })
    }

    /// What KVM_GET_SUPPORTED_CPUID gives on the development host (Intel): leaf 0xB only as an
    /// empty subleaf 0, leaf 0x1F likewise, no leaf 0x8000001E and no TOPOEXT.
    static let developmentHost: [kvm_cpuid_entry2] = [
        entry(0, eax: 0x20, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
        entry(1, eax: 0xC06F2, ebx: 0x0102_0800, ecx: 0x8120_2000, edx: 0x0F8B_FBFF),
        entry(4, 0, eax: 0x0400_0121), entry(4, 1, eax: 0x0400_0122), entry(4, 2, eax: 0x0400_0143),
        entry(4, 3, eax: 0x0400_4163), entry(4, 4),
        entry(0xB, 0, edx: 1), entry(0x1F, 0, edx: 1),
        entry(0x8000_0000, eax: 0x8000_0008), entry(0x8000_0001, ecx: 0x101, edx: 0x2010_0800),
        entry(0x8000_0008, eax: 0x392E, ebx: 0x0100_D200),
    ]

    /// An AMD host's: TOPOEXT, leaf 0x8000001E with the host's own core and node IDs, and the
    /// host's core count in leaf 0x80000008 ECX.
    static let amdHost: [kvm_cpuid_entry2] = [
        entry(0, eax: 0x10, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
        entry(1, eax: 0xA20F10, ebx: 0x0510_0800, ecx: 0x7ED8_320B, edx: 0x178B_FBFF),
        entry(0xB, 0, eax: 1, ebx: 2, ecx: 0x100, edx: 5), entry(0xB, 1, eax: 7, ebx: 16, ecx: 0x201, edx: 5),
        entry(0x8000_0000, eax: 0x8000_0021), entry(0x8000_0001, ecx: 0x7582_37FF | X86CPUID.topologyExtensions),
        entry(0x8000_0008, eax: 0x3030, ecx: 0x0001_700F), entry(0x8000_001E, eax: 5, ebx: 0x102, ecx: 0x3),
    ]

    /// The topology fields of every leaf that has one, as counts: (leaf 1 logical processors,
    /// leaf 4 cores, leaf 0xB core-level processors, 0x80000008 cores or nil on Intel).
    static func counts(_ table: [kvm_cpuid_entry2], amd: Bool) throws -> [Int] {
        var counts = [
            Int((try find(table, 1).ebx >> 16) & 0xFF),
            Int(try find(table, 0xB, 1).ebx),
        ]
        if let leaf4 = table.first(where: { $0.function == 4 && $0.index == 0 }) { counts.append(Int(leaf4.eax >> 26) + 1) }
        if amd { counts.append(Int(try find(table, 0x8000_0008).ecx & 0xFF) + 1) }
        return counts
    }

    @Test("leaves 0xB and 0x1F are written whole when KVM offers only an empty subleaf 0", arguments: [1, 2, 3, 4])
    func topologyFromEmptyLeaf(count: Int) throws {
        for id in 0..<count {
            let table = X86CPUID.table(supported: Self.developmentHost, vcpu: UInt32(id), of: count, mask: [])
            for function: UInt32 in [0xB, 0x1F] {
                let levels = table.filter { $0.function == function }
                #expect(levels.map(\.index) == [0, 1, 2])
                #expect(levels.map { $0.ecx >> 8 & 0xFF } == [1, 2, 0], "SMT, core, end")
                #expect(levels.allSatisfy { $0.edx == UInt32(id) })
                // Shift = bits of the APIC ID below the package: enough for count cores.
                let shift = try Self.find(table, function, 1).eax
                #expect(1 << shift >= count && (shift == 0 || 1 << (shift - 1) < count))
            }
            #expect(try Self.counts(table, amd: false) == [count, count, count])
            #expect(try Self.find(table, 0x8000_0008).ecx == 0, "reserved on Intel")
            #expect(try Self.find(table, 0x8000_0001).ecx & X86CPUID.topologyExtensions == 0)
        }
    }

    @Test("on an AMD host leaves 0x80000008 and 0x8000001E describe the same package", arguments: [1, 2, 4])
    func amdTopology(count: Int) throws {
        for id in 0..<count {
            let table = X86CPUID.table(supported: Self.amdHost, vcpu: UInt32(id), of: count, mask: [])
            #expect(try Self.counts(table, amd: true) == [count, count, count])
            let leaf8 = try Self.find(table, 0x8000_0008)
            #expect(leaf8.ecx >> 12 & 0xF == (try Self.find(table, 0xB, 1)).eax, "APIC ID bits for the core")
            #expect(leaf8.ecx & 0xFFFF_0000 == 0x0001_0000, "other ECX fields are kept")
            let topology = try Self.find(table, X86CPUID.extendedTopologyLeaf)
            #expect(topology.eax == UInt32(id), "extended APIC ID")
            #expect(topology.ebx == UInt32(id), "core ID, one thread per core")
            #expect(topology.ecx == 0, "node 0, one node per package")
            #expect(try Self.find(table, 0x8000_0001).ecx & X86CPUID.topologyExtensions != 0, "TOPOEXT is kept")
        }
    }

    @Test("TOPOEXT is cleared when KVM offers no leaf 0x8000001E")
    func topologyExtensionsWithoutLeaf() throws {
        let supported = Self.amdHost.filter { $0.function != X86CPUID.extendedTopologyLeaf }
        let table = X86CPUID.table(supported: supported, vcpu: 0, of: 2, mask: [])
        #expect(try Self.find(table, 0x8000_0001).ecx == 0x7582_37FF)
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
        #expect(Set(table.map(\.function)) == Set(Self.supported.map(\.function)))
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
