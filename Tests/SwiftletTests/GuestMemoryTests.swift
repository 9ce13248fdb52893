import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
private let kiB: UInt64 = 1 << 10
private let miB: UInt64 = 1 << 20
private let giB: UInt64 = 1 << 30

private func region(_ start: UInt64, _ size: UInt64) -> (start: GuestAddress, size: UInt64) {
    (start: GuestAddress(start), size: size)
}

/// The error an access of `length` bytes at `address` must throw.
private func outside(_ address: UInt64, _ length: UInt64) -> GuestMemoryError {
    GuestMemoryError(address: GuestAddress(address), length: length)
}

@Suite("GuestMemory")
struct GuestMemoryTests {
    // MARK: Creating regions

    @Test("regions are mapped sorted by address and report their total size")
    func creation() throws {
        let memory = try GuestMemory(regions: [region(0x20_0000, 64 * kiB), region(0, 128 * kiB)])
        #expect(memory.regions.map(\.start) == [GuestAddress(0), GuestAddress(0x20_0000)])
        #expect(memory.regions.map(\.size) == [128 * kiB, 64 * kiB])
        #expect(memory.totalSize == 192 * kiB)
        #expect(memory.regions[0].end == 128 * kiB)
        #expect(memory.regions[1].end == 0x20_0000 + 64 * kiB)
        #expect(try GuestMemory(regions: []).totalSize == 0)
    }

    @Test("fresh memory reads as zero")
    func freshMemoryIsZero() throws {
        let memory = try GuestMemory(regions: [region(0, 64 * kiB)])
        #expect(try memory.readBytes(at: GuestAddress(0), count: 64) == [UInt8](repeating: 0, count: 64))
        #expect(try memory.read(UInt64.self, at: GuestAddress(64 * kiB - 8)) == 0)
    }

    @Test("misaligned, empty and wrapping regions are refused")
    func misalignedRegions() {
        #expect(throws: GuestMemoryLayoutError.misaligned(start: GuestAddress(0x800), size: pageSize)) {
            try GuestMemory(regions: [region(0x800, pageSize)])
        }
        #expect(throws: GuestMemoryLayoutError.misaligned(start: GuestAddress(0), size: pageSize + 1)) {
            try GuestMemory(regions: [region(0, pageSize + 1)])
        }
        #expect(throws: GuestMemoryLayoutError.misaligned(start: GuestAddress(0x1000), size: 0)) {
            try GuestMemory(regions: [region(0x1000, 0)])
        }
        // Ends exactly past 2^64: start + size is not representable.
        let top = UInt64.max - pageSize + 1
        #expect(throws: GuestMemoryLayoutError.misaligned(start: GuestAddress(top), size: pageSize)) {
            try GuestMemory(regions: [region(top, pageSize)])
        }
        // A bad region after a good one: the good one is unmapped again and the error names the bad one.
        #expect(throws: GuestMemoryLayoutError.misaligned(start: GuestAddress(0x10_0000), size: 12)) {
            try GuestMemory(regions: [region(0, 64 * kiB), region(0x10_0000, 12)])
        }
    }

    @Test("a region larger than the host address space throws instead of trapping")
    func hugeRegion() async {
        // 2^63 bytes: page-aligned and no wrap-around at 4 GiB, but more than an Int can count.
        await #expect(processExitsWith: .success) {
            do {
                _ = try GuestMemory(regions: [(start: GuestAddress(0x1_0000_0000), size: 1 << 63)])
                exit(2)  // cannot have been mapped
            } catch {
                exit(0)
            }
        }
    }

    @Test("--memory 8589934595G (2^63 + 3 GiB) is refused with an error, not a crash")
    func hugeConfiguredMemory() async {
        await #expect(processExitsWith: .success) {
            let size: UInt64 = 8_589_934_595 << 30  // what --memory 8589934595G reads
            do {
                _ = try GuestMemory(regions: X86MemoryMap.ramRegions(size: size))
                exit(2)
            } catch {
                exit(0)
            }
        }
    }

    @Test("overlapping regions are refused")
    func overlappingRegions() {
        #expect(throws: GuestMemoryLayoutError.overlapping(start: GuestAddress(0x1000))) {
            try GuestMemory(regions: [region(0, 0x2000), region(0x1000, 0x1000)])
        }
        #expect(throws: GuestMemoryLayoutError.overlapping(start: GuestAddress(0x4000))) {
            try GuestMemory(regions: [region(0x4000, 0x1000), region(0x4000, 0x1000)])
        }
        // Given in reverse order: still detected after sorting.
        #expect(throws: GuestMemoryLayoutError.overlapping(start: GuestAddress(0x3000))) {
            try GuestMemory(regions: [region(0x3000, 0x1000), region(0, 0x10000)])
        }
    }

    @Test("adjacent regions are accepted")
    func adjacentRegions() throws {
        let memory = try GuestMemory(regions: [region(0, 0x1000), region(0x1000, 0x1000)])
        #expect(memory.regions.count == 2)
        #expect(memory.totalSize == 0x2000)
    }

    // MARK: Reading and writing

    @Test("bytes and values at the first and last bytes of a region")
    func accessAtRegionEdges() throws {
        let start: UInt64 = 0x10000
        let end = start + 64 * kiB
        let memory = try GuestMemory(regions: [region(start, 64 * kiB)])

        try memory.write([1, 2, 3, 4], at: GuestAddress(start))
        try memory.write([5, 6, 7, 8], at: GuestAddress(end - 4))
        #expect(try memory.readBytes(at: GuestAddress(start), count: 4) == [1, 2, 3, 4])
        #expect(try memory.readBytes(at: GuestAddress(end - 4), count: 4) == [5, 6, 7, 8])
        #expect(try memory.read(UInt32.self, at: GuestAddress(start)) == 0x0403_0201)
        #expect(try memory.read(UInt8.self, at: GuestAddress(end - 1)) == 8)

        try memory.write(UInt64(0x1122_3344_5566_7788), at: GuestAddress(end - 8))
        #expect(try memory.read(UInt64.self, at: GuestAddress(end - 8)) == 0x1122_3344_5566_7788)
        #expect(try memory.readBytes(at: GuestAddress(end - 8), count: 8) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])

        // Unaligned values.
        try memory.write(UInt16(0xBEEF), at: GuestAddress(start + 0x101))
        try memory.write(UInt64(0x0102_0304_0506_0708), at: GuestAddress(start + 0x203))
        #expect(try memory.read(UInt16.self, at: GuestAddress(start + 0x101)) == 0xBEEF)
        #expect(try memory.read(UInt64.self, at: GuestAddress(start + 0x203)) == 0x0102_0304_0506_0708)
        #expect(try memory.readBytes(at: GuestAddress(start + 0x100), count: 4) == [0, 0xEF, 0xBE, 0])
    }

    @Test("raw-buffer write and read(into:)")
    func rawBuffers() throws {
        let memory = try GuestMemory(regions: [region(0, 64 * kiB)])
        let payload: [UInt8] = Array(0..<200)
        try payload.withUnsafeBytes { try memory.write($0, at: GuestAddress(0x1234)) }
        var back = [UInt8](repeating: 0xFF, count: 200)
        try back.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(0x1234)) }
        #expect(back == payload)
        #expect(try memory.readBytes(at: GuestAddress(0x1233), count: 3) == [0, 0, 1])
        #expect(try memory.readBytes(at: GuestAddress(0x1234 + 199), count: 2) == [199, 0])
    }

    @Test("accesses straddling the end of a region throw")
    func straddlingEnd() throws {
        let start: UInt64 = 0x10000
        let end = start + 64 * kiB
        let memory = try GuestMemory(regions: [region(start, 64 * kiB)])
        #expect(throws: outside(end - 4, 8)) { try memory.write([UInt8](repeating: 1, count: 8), at: GuestAddress(end - 4)) }
        #expect(throws: outside(end - 7, 8)) { try memory.read(UInt64.self, at: GuestAddress(end - 7)) }
        #expect(throws: outside(end - 1, 2)) { try memory.write(UInt16(1), at: GuestAddress(end - 1)) }
        #expect(throws: outside(end, 1)) { try memory.readBytes(at: GuestAddress(end), count: 1) }
        #expect(throws: outside(start - 1, 1)) { try memory.read(UInt8.self, at: GuestAddress(start - 1)) }
        #expect(throws: outside(start - 2, 4)) { try memory.readBytes(at: GuestAddress(start - 2), count: 4) }
        #expect(throws: outside(end - 2, 4)) {
            var buffer = [UInt8](repeating: 0, count: 4)
            try buffer.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(end - 2)) }
        }
        #expect(throws: outside(start, 64 * kiB + 1)) { try memory.readBytes(at: GuestAddress(start), count: Int(64 * kiB) + 1) }
        // The failed writes changed nothing.
        #expect(try memory.readBytes(at: GuestAddress(end - 4), count: 4) == [0, 0, 0, 0])
        #expect(memory.contains(GuestAddress(start), count: Int(64 * kiB)))
        #expect(!memory.contains(GuestAddress(end - 1), count: 2))
    }

    @Test("accesses spanning two adjacent regions throw")
    func spanningTwoRegions() throws {
        let memory = try GuestMemory(regions: [region(0, 0x1000), region(0x1000, 0x1000)])
        #expect(throws: outside(0xFFC, 8)) { try memory.write(UInt64.max, at: GuestAddress(0xFFC)) }
        #expect(throws: outside(0xFFF, 2)) { try memory.readBytes(at: GuestAddress(0xFFF), count: 2) }
        #expect(try memory.readBytes(at: GuestAddress(0xFFC), count: 4) == [0, 0, 0, 0])
        try memory.write(UInt32(0xA1B2_C3D4), at: GuestAddress(0x1000))
        #expect(try memory.read(UInt32.self, at: GuestAddress(0x1000)) == 0xA1B2_C3D4)
    }

    @Test("accesses in or into a gap between regions throw")
    func gaps() throws {
        let memory = try GuestMemory(regions: [region(0x1_0000, 0x1_0000), region(0x3_0000, 0x1_0000)])
        #expect(throws: outside(0, 1)) { try memory.read(UInt8.self, at: GuestAddress(0)) }
        #expect(throws: outside(0x2_8000, 4)) { try memory.read(UInt32.self, at: GuestAddress(0x2_8000)) }
        #expect(throws: outside(0x1_FFFF, 2)) { try memory.write(UInt16(7), at: GuestAddress(0x1_FFFF)) }
        #expect(throws: outside(0x2_FFFF, 2)) { try memory.readBytes(at: GuestAddress(0x2_FFFF), count: 2) }
        #expect(throws: outside(0x4_0000, 1)) { try memory.fill(GuestAddress(0x4_0000), count: 1, with: 1) }
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x3_0000)) == 0)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x1_FFFF)) == 0)
    }

    @Test("addresses near UInt64.max throw instead of overflowing")
    func nearTopOfAddressSpace() throws {
        let low = try GuestMemory(regions: [region(0, 64 * kiB)])
        #expect(throws: outside(.max, 1)) { try low.read(UInt8.self, at: GuestAddress(.max)) }
        #expect(throws: outside(.max - 3, 8)) { try low.read(UInt64.self, at: GuestAddress(.max - 3)) }
        #expect(throws: outside(.max - 1, 16)) { try low.readBytes(at: GuestAddress(.max - 1), count: 16) }
        #expect(throws: outside(.max, 4)) { try low.fill(GuestAddress(.max), count: 4, with: 0) }
        #expect(!low.contains(GuestAddress(.max), count: 1))

        // A region right below the top of the address space.
        let base: UInt64 = 0xFFFF_FFFF_FFFF_0000
        let high = try GuestMemory(regions: [region(base, 0x8000)])
        try high.write(UInt64(0xDEAD_BEEF_0BAD_F00D), at: GuestAddress(base + 0x7FF8))
        #expect(try high.read(UInt64.self, at: GuestAddress(base + 0x7FF8)) == 0xDEAD_BEEF_0BAD_F00D)
        #expect(throws: outside(base + 0x7FFC, 8)) { try high.read(UInt64.self, at: GuestAddress(base + 0x7FFC)) }
        #expect(throws: outside(.max - 3, 8)) { try high.write(UInt64(1), at: GuestAddress(.max - 3)) }
        #expect(throws: outside(base + 0x10, .max / 2)) {
            try high.readBytes(at: GuestAddress(base + 0x10), count: Int.max)
        }
        #expect(throws: outside(base - 1, 2)) { try high.readBytes(at: GuestAddress(base - 1), count: 2) }
    }

    @Test("fill writes exactly the requested bytes")
    func fill() throws {
        let memory = try GuestMemory(regions: [region(0, 64 * kiB)])
        try memory.fill(GuestAddress(0x10), count: 0x100, with: 0x5A)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0xF)) == 0)
        #expect(try memory.readBytes(at: GuestAddress(0x10), count: 0x100) == [UInt8](repeating: 0x5A, count: 0x100))
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x110)) == 0)

        try memory.fill(GuestAddress(64 * kiB - 16), count: 16, with: 0xC3)
        #expect(try memory.readBytes(at: GuestAddress(64 * kiB - 17), count: 17) == [0] + [UInt8](repeating: 0xC3, count: 16))

        // Straddling the end: refused, and nothing is written.
        #expect(throws: outside(64 * kiB - 32, 33)) { try memory.fill(GuestAddress(64 * kiB - 32), count: 33, with: 0x11) }
        #expect(try memory.readBytes(at: GuestAddress(64 * kiB - 32), count: 16) == [UInt8](repeating: 0, count: 16))

        // An empty fill is a no-op.
        try memory.fill(GuestAddress(0x10), count: 0, with: 0)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x10)) == 0x5A)
    }

    @Test("readBytes returns exactly the requested slice")
    func readBytes() throws {
        let memory = try GuestMemory(regions: [region(0x2000, 0x2000)])
        try memory.write(Array(1...16) as [UInt8], at: GuestAddress(0x2800))
        #expect(try memory.readBytes(at: GuestAddress(0x2804), count: 4) == [5, 6, 7, 8])
        #expect(try memory.readBytes(at: GuestAddress(0x2800), count: 0) == [])
        #expect(try memory.readBytes(at: GuestAddress(0x27FF), count: 18) == [0] + Array(1...16) + [0])
    }

    @Test("host pointers see the same bytes as the accessors")
    func hostPointer() throws {
        let memory = try GuestMemory(regions: [region(0, 0x1000), region(0x10000, 0x1000)])
        let pointer = try memory.hostPointer(GuestAddress(0x10010), count: 4)
        pointer.storeBytes(of: UInt32(0xCAFE_F00D), as: UInt32.self)
        #expect(try memory.read(UInt32.self, at: GuestAddress(0x10010)) == 0xCAFE_F00D)
        let first = try memory.hostPointer(GuestAddress(0), count: 0x1000)
        let second = try memory.hostPointer(GuestAddress(0x10000), count: 0x1000)
        #expect(first != second)
    }

    @Test("the access error names the address and length on one line")
    func errorDescription() {
        let text = outside(0xC000_0000, 8).description
        #expect(text.contains("0xc0000000"))
        #expect(text.contains("8 bytes"))
        #expect(!text.contains("\n"))
        #expect(GuestMemoryLayoutError.overlapping(start: GuestAddress(0x1000)).description.contains("0x1000"))
    }

    // MARK: The x86 RAM layout

    @Test("RAM below the MMIO gap: one region")
    func ramRegionsSmall() {
        let small = X86MemoryMap.ramRegions(size: 128 * miB)
        #expect(small.map { [$0.start.rawValue, $0.size] } == [[0, 128 * miB]])
        let exactly3G = X86MemoryMap.ramRegions(size: 3 * giB)
        #expect(exactly3G.map { [$0.start.rawValue, $0.size] } == [[0, 3 * giB]])
    }

    @Test("RAM past the MMIO gap continues at 4 GiB")
    func ramRegionsLarge() {
        let fourG = X86MemoryMap.ramRegions(size: 4 * giB)
        #expect(fourG.map { [$0.start.rawValue, $0.size] } == [[0, 0xC000_0000], [0x1_0000_0000, 1 * giB]])
        let eightG = X86MemoryMap.ramRegions(size: 8 * giB)
        #expect(eightG.map { [$0.start.rawValue, $0.size] } == [[0, 0xC000_0000], [0x1_0000_0000, 5 * giB]])
        let onePageOver = X86MemoryMap.ramRegions(size: 3 * giB + 0x1000)
        #expect(onePageOver.map { [$0.start.rawValue, $0.size] } == [[0, 3 * giB], [0x1_0000_0000, 0x1000]])
        for size in [128 * miB, 3 * giB, 4 * giB, 8 * giB, 3 * giB + 0x1000] {
            #expect(X86MemoryMap.ramRegions(size: size).reduce(0) { $0 + $1.size } == size)
        }
    }

    @Test("a guest split at the MMIO gap maps both sides and nothing in the gap")
    func mappedSplitLayout() throws {
        let memory = try GuestMemory(regions: X86MemoryMap.ramRegions(size: 3 * giB + 2 * miB))
        #expect(memory.totalSize == 3 * giB + 2 * miB)
        try memory.write(UInt64(0x1111), at: GuestAddress(3 * giB - 8))
        try memory.write(UInt64(0x2222), at: GuestAddress(4 * giB))
        try memory.write(UInt64(0x3333), at: GuestAddress(4 * giB + 2 * miB - 8))
        #expect(try memory.read(UInt64.self, at: GuestAddress(3 * giB - 8)) == 0x1111)
        #expect(try memory.read(UInt64.self, at: GuestAddress(4 * giB)) == 0x2222)
        #expect(try memory.read(UInt64.self, at: GuestAddress(4 * giB + 2 * miB - 8)) == 0x3333)
        #expect(throws: outside(3 * giB, 1)) { try memory.read(UInt8.self, at: GuestAddress(3 * giB)) }
        #expect(throws: outside(0xFEE0_0000, 4)) { try memory.read(UInt32.self, at: GuestAddress(0xFEE0_0000)) }
        #expect(throws: outside(4 * giB - 4, 8)) { try memory.read(UInt64.self, at: GuestAddress(4 * giB - 4)) }
        #expect(throws: outside(4 * giB + 2 * miB, 1)) { try memory.read(UInt8.self, at: GuestAddress(4 * giB + 2 * miB)) }
    }
}
