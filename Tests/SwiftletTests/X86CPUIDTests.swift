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
    ]

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
}
