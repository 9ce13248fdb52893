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

/// Guest RAM large enough for the low-memory boot structures.
private func lowMemory() throws -> GuestMemory {
    try GuestMemory(regions: [(start: GuestAddress(0), size: 0x10_0000)])
}

/// `kvm_sregs` as KVM might report them after vCPU creation, with a few bits set that the
/// setup must keep (CR4.OSFXSR, EFER.SCE) or replace (CR0 reset value).
private func initialSpecialRegisters() -> kvm_sregs {
    var sregs = kvm_sregs()
    sregs.cr0 = 0x6000_0010
    sregs.cr4 = 1 << 9
    sregs.efer = 1 << 0
    sregs.cs.selector = 0xF000
    sregs.cs.base = 0xFFFF_0000
    sregs.cs.limit = 0xFFFF
    sregs.cs.type = 0xB
    sregs.cs.present = 1
    sregs.cs.s = 1
    sregs.ds.limit = 0xFFFF
    sregs.ds.type = 3
    sregs.ds.present = 1
    sregs.ds.s = 1
    sregs.apic_base = 0xFEE0_0900
    return sregs
}

@Suite("X86 boot state")
struct X86BootStateTests {
    // MARK: GDT

    @Test("GDT descriptors encode to the Linux boot values")
    func descriptorEncoding() {
        #expect(SegmentDescriptor.code64.encoded == 0x00AF_9B00_0000_FFFF)
        #expect(SegmentDescriptor.data.encoded == 0x00CF_9300_0000_FFFF)
        #expect(BootGDT.entries == [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF])
        #expect(BootGDT.codeSelector == 0x10)
        #expect(BootGDT.dataSelector == 0x18)
        #expect(Int(BootGDT.codeSelector) / 8 == 2)
        #expect(Int(BootGDT.dataSelector) / 8 == 3)
    }

    @Test("a descriptor with a non-zero base splits base and limit across the fields")
    func descriptorFieldSplit() {
        let descriptor = SegmentDescriptor(base: 0x1234_5678, limit: 0xABCDE, access: 0x92, flags: 0x4)
        #expect(descriptor.encoded == 0x124A_9234_5678_BCDE)
        let segment = descriptor.kvmSegment(selector: 0x28)
        #expect(segment.base == 0x1234_5678)
        #expect(segment.limit == 0xABCDE)  // byte granular
        #expect(segment.g == 0)
        #expect(segment.db == 1)
        #expect(segment.l == 0)
        #expect(segment.type == 2)
        #expect(segment.selector == 0x28)
    }

    @Test("the 64-bit code segment as KVM sees it")
    func codeSegment() {
        let cs = SegmentDescriptor.code64.kvmSegment(selector: BootGDT.codeSelector)
        #expect(cs.selector == 0x10)
        #expect(cs.base == 0)
        #expect(cs.limit == 0xFFFF_FFFF)
        #expect(cs.type == 0xB)
        #expect(cs.present == 1)
        #expect(cs.dpl == 0)
        #expect(cs.s == 1)
        #expect(cs.l == 1)
        #expect(cs.db == 0)
        #expect(cs.g == 1)
        #expect(cs.avl == 0)
        #expect(cs.unusable == 0)
    }

    @Test("the flat data segment as KVM sees it")
    func dataSegment() {
        let ds = SegmentDescriptor.data.kvmSegment(selector: BootGDT.dataSelector)
        #expect(ds.selector == 0x18)
        #expect(ds.base == 0)
        #expect(ds.limit == 0xFFFF_FFFF)
        #expect(ds.type == 0x3)
        #expect(ds.present == 1)
        #expect(ds.s == 1)
        #expect(ds.l == 0)
        #expect(ds.db == 1)
        #expect(ds.g == 1)
        #expect(ds.unusable == 0)
    }

    @Test("a not-present descriptor is unusable")
    func notPresent() {
        let null = SegmentDescriptor(base: 0, limit: 0, access: 0, flags: 0)
        #expect(null.encoded == 0)
        #expect(null.kvmSegment(selector: 0).unusable == 1)
        #expect(null.kvmSegment(selector: 0).present == 0)
    }

    @Test("the GDT and an empty IDT are written at their addresses")
    func gdtInMemory() throws {
        let memory = try lowMemory()
        try memory.fill(GuestAddress(0x4F0), count: 0x60, with: 0xEE)
        try BootGDT.write(to: memory)
        let base = X86Layout.gdtAddress.rawValue
        for (i, entry) in BootGDT.entries.enumerated() {
            #expect(try memory.read(UInt64.self, at: GuestAddress(base + UInt64(i) * 8)) == entry)
        }
        #expect(try memory.read(UInt64.self, at: X86Layout.idtAddress) == 0)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x4FF)) == 0xEE)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x528)) == 0xEE)
    }

    // MARK: Page tables

    @Test(
        "the identity map translates addresses below 4 GiB to themselves",
        arguments: [UInt64(0), 0x1234_567, 0x1F_FFFF, 0x20_0000, 0xC000_0000, 0xFEC0_0000, 0xFEE0_0000, 0xFFFF_FFFF])
    func identityTranslation(address: UInt64) throws {
        let memory = try lowMemory()
        try IdentityPageTables.write(to: memory)
        #expect(IdentityPageTables.translate(address, in: memory) == address)
    }

    @Test(
        "4 GiB and above are not mapped",
        arguments: [UInt64(0x1_0000_0000), 0x1_0000_1000, 0x80_0000_0000, 0xFFFF_8000_0000_0000])
    func beyondFourGiB(address: UInt64) throws {
        let memory = try lowMemory()
        try IdentityPageTables.write(to: memory)
        #expect(IdentityPageTables.translate(address, in: memory) == nil)
    }

    @Test("without tables nothing translates")
    func noTables() throws {
        #expect(IdentityPageTables.translate(0x1000, in: try lowMemory()) == nil)
    }

    @Test("the tables use 2 MiB pages and never 1 GiB pages")
    func pageSizes() {
        let entries = IdentityPageTables.entries()
        let flags = IdentityPageTables.present | IdentityPageTables.writable
        #expect(entries.count == 1 + 4 + 4 * 512)
        #expect(Set(entries.map(\.0)).count == entries.count)

        let pml4 = entries.filter { $0.0 == X86Layout.pml4Address }
        #expect(pml4.map(\.1) == [X86Layout.pdptAddress.rawValue | flags])

        let pdptRange = X86Layout.pdptAddress.rawValue..<X86Layout.pdptAddress.rawValue + 0x1000
        let pdpt = entries.filter { pdptRange.contains($0.0.rawValue) }
        #expect(pdpt.count == 4)
        for (address, value) in pdpt {
            let index = (address.rawValue - X86Layout.pdptAddress.rawValue) / 8
            #expect(value & IdentityPageTables.largePage == 0, "PDPT entry \(index) must not be a 1 GiB page")
            #expect(value == X86Layout.pageDirectoryAddress.rawValue + index * 0x1000 | flags)
        }

        let directoryStart = X86Layout.pageDirectoryAddress.rawValue
        let directories = entries.filter { $0.0.rawValue >= directoryStart }
        #expect(directories.count == 2048)
        for (address, value) in directories {
            let index = (address.rawValue - directoryStart) / 8
            #expect(value == index << 21 | flags | IdentityPageTables.largePage)
        }
        #expect(directories.allSatisfy { $0.0.rawValue < 0xF000 })
    }

    @Test("the tables lie in 0x9000-0xEFFF and nothing else is written")
    func tableFootprint() throws {
        let memory = try lowMemory()
        try IdentityPageTables.write(to: memory)
        #expect(try memory.readBytes(at: GuestAddress(0x8000), count: 0x1000).allSatisfy { $0 == 0 })
        #expect(try memory.readBytes(at: GuestAddress(0xF000), count: 0x1000).allSatisfy { $0 == 0 })
        #expect(try memory.read(UInt64.self, at: GuestAddress(0xEFF8)) == 0xFFE0_0000 | 0x83)
        #expect(try memory.read(UInt64.self, at: GuestAddress(0xA020)) == 0)
    }

    // MARK: vCPU registers

    @Test("long mode special registers")
    func longModeSpecialRegisters() {
        let sregs = X86VCPUSetup.specialRegisters(
            for: .longMode(entry: 0x100_0000, zeroPage: 0x7000), from: initialSpecialRegisters())
        #expect(sregs.cr0 == 0x8005_0033)
        #expect(X86ControlBits.longModeCR0 == 0x8005_0033)
        #expect(sregs.cr4 & X86ControlBits.cr4PAE != 0)
        #expect(sregs.cr4 & (1 << 9) != 0, "CR4 bits KVM set are kept")
        #expect(sregs.efer & (X86ControlBits.eferLME | X86ControlBits.eferLMA) == 0x500)
        #expect(sregs.efer & 1 != 0, "EFER bits KVM set are kept")
        #expect(sregs.cr3 == 0x9000)
        #expect(sregs.gdt.base == 0x500)
        #expect(sregs.gdt.limit == 31)
        #expect(sregs.idt.base == 0x520)
        #expect(sregs.idt.limit == 7)
        #expect(sregs.cs.selector == 0x10)
        #expect(sregs.cs.l == 1)
        #expect(sregs.cs.db == 0)
        #expect(sregs.cs.base == 0)
        #expect(sregs.cs.limit == 0xFFFF_FFFF)
        #expect(sregs.cs.present == 1)
        for segment in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            #expect(segment.selector == 0x18)
            #expect(segment.base == 0)
            #expect(segment.l == 0)
            #expect(segment.db == 1)
            #expect(segment.type == 3)
            #expect(segment.present == 1)
        }
        #expect(sregs.apic_base == 0xFEE0_0900, "untouched fields are kept")
    }

    @Test("real mode special registers: every segment base is segment << 4", arguments: [UInt16(0x1000), 0x0000, 0xF000, 0x07C0])
    func realModeSpecialRegisters(segment: UInt16) {
        let initial = initialSpecialRegisters()
        let sregs = X86VCPUSetup.specialRegisters(
            for: .realMode(segment: segment, offset: 0, stackPointer: 0xFFF0), from: initial)
        for register in [sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            #expect(register.selector == segment)
            #expect(register.base == UInt64(segment) << 4)
        }
        #expect(sregs.cs.type == initial.cs.type)
        #expect(sregs.cs.limit == 0xFFFF)
        #expect(sregs.cr0 == initial.cr0, "real mode leaves paging and protection off")
        #expect(sregs.efer == initial.efer)
        #expect(sregs.cr3 == 0)
    }

    @Test("long mode general registers")
    func longModeRegisters() {
        let regs = X86VCPUSetup.registers(for: .longMode(entry: 0x100_0000, zeroPage: 0x7000))
        #expect(regs.rip == 0x100_0000)
        #expect(regs.rsp == 0x8FF0)
        #expect(regs.rbp == 0x8FF0)
        #expect(regs.rsi == 0x7000)
        #expect(regs.rflags == 0x2)
        #expect(regs.rax == 0 && regs.rbx == 0 && regs.rcx == 0 && regs.rdx == 0 && regs.rdi == 0)
    }

    @Test("real mode general registers")
    func realModeRegisters() {
        let regs = X86VCPUSetup.registers(for: .realMode(segment: 0x1000, offset: 0x123, stackPointer: 0xFFF0))
        #expect(regs.rip == 0x123)
        #expect(regs.rsp == 0xFFF0)
        #expect(regs.rsi == 0)
        #expect(regs.rflags == 0x2)
    }

    @Test("FPU reset state")
    func fpu() {
        let fpu = X86VCPUSetup.floatingPointState()
        #expect(fpu.fcw == 0x37F)
        #expect(fpu.mxcsr == 0x1F80)
        #expect(fpu.fsw == 0)
    }

    // MARK: Layout

    @Test("low-memory boot structures do not overlap and lie below the EBDA")
    func lowMemoryLayout() {
        let stackTop = X86Layout.bootStackPointer
        let regions: [(name: String, range: Range<UInt64>)] = [
            ("GDT", X86Layout.gdtAddress.rawValue..<X86Layout.gdtAddress.rawValue + UInt64(BootGDT.entries.count * 8)),
            ("IDT", X86Layout.idtAddress.rawValue..<X86Layout.idtAddress.rawValue + 8),
            ("zero page", X86Layout.zeroPageAddress.rawValue..<X86Layout.zeroPageAddress.rawValue + 0x1000),
            ("stack", (stackTop & ~0xFFF)..<stackTop),
            ("page tables", X86Layout.pml4Address.rawValue..<0xF000),
            ("flat image", X86Layout.realModeLoadAddress.rawValue..<X86Layout.realModeLoadAddress.rawValue + 0x10000),
            (
                "command line",
                X86Layout.commandLineAddress.rawValue..<X86Layout.commandLineAddress.rawValue
                    + UInt64(X86Layout.commandLineMaxSize)
            ),
        ]
        for (i, a) in regions.enumerated() {
            #expect(a.range.lowerBound >= 0x500, "\(a.name) must leave the real-mode IVT and BDA alone")
            #expect(a.range.upperBound <= X86Layout.ebdaStart.rawValue, "\(a.name) must lie below the EBDA")
            #expect(!a.range.isEmpty)
            for b in regions[(i + 1)...] {
                #expect(!a.range.overlaps(b.range), "\(a.name) overlaps \(b.name)")
            }
        }
        #expect(stackTop % 16 == 0)
        #expect(X86Layout.pdptAddress.rawValue == X86Layout.pml4Address.rawValue + 0x1000)
        #expect(X86Layout.pageDirectoryAddress.rawValue == X86Layout.pdptAddress.rawValue + 0x1000)
        #expect(X86Layout.pageDirectoryAddress.rawValue + (X86Layout.identityMappedBytes >> 30) * 0x1000 == 0xF000)
        #expect(X86Layout.ebdaStart.rawValue == 0x9FC00)
        #expect(X86Layout.highMemoryStart.rawValue == 0x10_0000)
        #expect(X86Layout.realModeLoadAddress.rawValue == 0x1000 << 4)
    }

    @Test("MMIO devices lie inside the MMIO gap and clear of the APICs and KVM's pages")
    func mmioLayout() {
        let gap = X86Layout.mmioGapStart.rawValue..<X86Layout.mmioGapEnd.rawValue
        #expect(gap == 0xC000_0000..<0x1_0000_0000)
        let test =
            X86Layout.mmioTestDeviceAddress.rawValue..<X86Layout.mmioTestDeviceAddress.rawValue + X86Layout.mmioTestDeviceSize
        let virtio = X86Layout.virtioMMIOBase.rawValue..<X86Layout.virtioMMIOBase.rawValue + 32 * X86Layout.virtioMMIOStride
        let reserved: [Range<UInt64>] = [
            X86Layout.ioapicAddress.rawValue..<X86Layout.ioapicAddress.rawValue + 0x1000,
            X86Layout.localAPICAddress.rawValue..<X86Layout.localAPICAddress.rawValue + 0x1000,
            X86Layout.identityMapPageAddress.rawValue..<X86Layout.identityMapPageAddress.rawValue + 0x1000,
            X86Layout.tssAddress.rawValue..<X86Layout.tssAddress.rawValue + 0x3000,
        ]
        for range in [test, virtio] + reserved {
            #expect(gap.lowerBound <= range.lowerBound && range.upperBound <= gap.upperBound, "\(range) outside the gap")
        }
        #expect(!test.overlaps(virtio))
        for range in reserved {
            #expect(!test.overlaps(range))
            #expect(!virtio.overlaps(range))
        }
        #expect(X86Layout.identityMapPageAddress.rawValue + 0x1000 == X86Layout.tssAddress.rawValue)
        #expect(X86Layout.ramAbove4GStart == X86Layout.mmioGapEnd)
        // No RAM is placed in the gap, however large the guest.
        for region in X86MemoryMap.ramRegions(size: 64 << 30) {
            let ram = region.start.rawValue..<region.start.rawValue + region.size
            #expect(!ram.overlaps(gap))
        }
    }
}
