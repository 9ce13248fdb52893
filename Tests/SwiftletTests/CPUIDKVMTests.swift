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

/// Boots Guests/tiny/cpuid-report.c, which prints what its `cpuid` instruction returns, and
/// checks the KVM paravirtual leaf and the topology leaves against the VMM's CPUID table.
@Suite(
    "KVM: CPUID seen by the guest", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized,
    .timeLimit(.minutes(2)))
struct CPUIDKVMTests {
    /// One `cpuid: leaf=... sub=... eax=... ebx=... ecx=... edx=...` line of the guest.
    struct Leaf: Equatable {
        var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    }

    struct Report {
        let exit: GuestExit
        let leaves: [String: Leaf]
        let output: String
        let supported: [kvm_cpuid_entry2]
        let tables: [[kvm_cpuid_entry2]]

        func leaf(_ function: UInt32, _ index: UInt32 = 0) throws -> Leaf {
            try #require(leaves[Report.key(function, index)], "the guest reported no leaf \(Report.key(function, index))")
        }

        static func key(_ function: UInt32, _ index: UInt32) -> String {
            let hex = String(function, radix: 16)
            return String(repeating: "0", count: 8 - hex.count) + hex + "." + String(index)
        }
    }

    static func run(cpus: Int = 1, mask: String = "") throws -> Report {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("cpuid-report.elf"), vcpuCount: cpus, console: .output(console),
                cpuidMask: try CPUIDFeature.parseMask(mask)))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        let exit = machine.wait()
        var leaves: [String: Leaf] = [:]
        for line in console.text.split(separator: "\n") where line.hasPrefix("cpuid: ") {
            var fields: [String: String] = [:]
            for word in line.dropFirst(7).split(separator: " ") {
                let pair = word.split(separator: "=", maxSplits: 1)
                if pair.count == 2 { fields[String(pair[0])] = String(pair[1]) }
            }
            guard let leaf = fields["leaf"], let sub = fields["sub"], let eax = fields["eax"].flatMap({ UInt32($0, radix: 16) }),
                let ebx = fields["ebx"].flatMap({ UInt32($0, radix: 16) }),
                let ecx = fields["ecx"].flatMap({ UInt32($0, radix: 16) }),
                let edx = fields["edx"].flatMap({ UInt32($0, radix: 16) })
            else { continue }
            leaves[leaf + "." + sub] = Leaf(eax: eax, ebx: ebx, ecx: ecx, edx: edx)
        }
        return Report(
            exit: exit, leaves: leaves, output: console.text, supported: try KVM().supportedCPUID(),
            tables: try machine.vcpus.map { try $0.cpuid() })
    }

    static func supportedKVMFeatures(_ report: Report) throws -> UInt32 {
        try #require(report.supported.first { $0.function == CPUIDFeature.kvmFeaturesLeaf }).eax
    }

    /// Bits 7 (PV_UNHALT), 11 (PV_SEND_IPI), 13 (PV_SCHED_YIELD), 16 (HC_MAP_GPA_RANGE).
    static let hypercallBits: UInt32 = 1 << 7 | 1 << 11 | 1 << 13 | 1 << 16

    @Test("without a mask the guest sees KVM's signature and every supported paravirtual feature")
    func noMask() throws {
        let report = try Self.run(cpus: 2)
        #expect(report.exit == .reset)
        #expect(report.output.hasSuffix("done\n"))
        #expect(report.output.contains(" sig=KVMKVMKVM"))
        #expect(try report.leaf(0x4000_0001).eax == Self.supportedKVMFeatures(report))
    }

    @Test("with `emulated` the hypercall-based paravirtual features are hidden from the guest")
    func emulatedMask() throws {
        let report = try Self.run(cpus: 2, mask: "emulated")
        #expect(report.exit == .reset)
        let supported = try Self.supportedKVMFeatures(report)
        let seen = try report.leaf(0x4000_0001).eax
        #expect(seen == supported & ~Self.hypercallBits)
        #expect(seen & (1 << 7 | 1 << 11 | 1 << 13) == 0)
    }

    @Test("one KVM feature name hides exactly that bit", arguments: ["kvm_pv_send_ipi", "kvm_pv_tlb_flush", "kvm_steal_time"])
    func singleFeature(name: String) throws {
        let feature = try #require(CPUIDFeature.kvmFeatures.first { $0.name == name })
        let report = try Self.run(mask: name)
        #expect(report.exit == .reset)
        #expect(try report.leaf(0x4000_0001).eax == Self.supportedKVMFeatures(report) & ~(UInt32(1) << UInt32(feature.bit)))
    }

    @Test("the guest's topology leaves describe count cores of one thread in one package", arguments: [1, 2])
    func topology(cpus: Int) throws {
        let report = try Self.run(cpus: cpus)
        #expect(report.exit == .reset)
        // What the boot vCPU (APIC ID 0) sees. On the development host the hardware leaves are
        // the VMM's table with some host bits ORed in (leaf 1 EDX.HTT among them), so only the
        // fields that follow the table everywhere are checked.
        let leaf1 = try report.leaf(1)
        #expect(leaf1.ebx >> 24 == 0)
        #expect((leaf1.ebx >> 16) & 0xFF == UInt32(cpus))
        let leaf4 = try report.leaf(4)
        if leaf4.eax & 0x1F != 0 { #expect(leaf4.eax >> 26 == UInt32(cpus - 1)) }
        let smt = try report.leaf(0xB, 0)
        let core = try report.leaf(0xB, 1)
        #expect(smt == Leaf(eax: 0, ebx: 1, ecx: 0x100, edx: 0))
        #expect(core == Leaf(eax: cpus == 1 ? 0 : 1, ebx: UInt32(cpus), ecx: 0x201, edx: 0))
        // Every vCPU's table as KVM holds it (KVM_GET_CPUID2) agrees with itself.
        for (id, table) in report.tables.enumerated() {
            let byKey = Dictionary(table.map { (Report.key($0.function, $0.index), $0) }, uniquingKeysWith: { a, _ in a })
            let leaf1 = try #require(byKey[Report.key(1, 0)])
            #expect(leaf1.ebx >> 24 == UInt32(id) && (leaf1.ebx >> 16) & 0xFF == UInt32(cpus))
            let core = try #require(byKey[Report.key(0xB, 1)])
            #expect(core.ebx == UInt32(cpus) && core.edx == UInt32(id))
            #expect(try #require(byKey[Report.key(0xB, 2)]).ecx & 0xFF00 == 0, "subleaf 2 ends the list")
        }
    }
}
