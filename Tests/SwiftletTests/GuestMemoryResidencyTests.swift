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

@Suite("GuestMemory residency")
struct GuestMemoryResidencyTests {
    // Regions under 2 MiB, so a host with transparent huge pages always on still faults 4 KiB pages.
    @Test("fresh guest RAM is not resident; each touched page counts once, in every region")
    func touchedPages() throws {
        let memory = try GuestMemory(regions: [
            (start: GuestAddress(0), size: 512 * kiB), (start: GuestAddress(0x10_0000), size: 1 * miB),
        ])
        #expect(try memory.residentBytes() == 0)
        try memory.write(UInt8(1), at: GuestAddress(0))
        try memory.write(UInt8(2), at: GuestAddress(1))  // same page
        try memory.write(UInt32(3), at: GuestAddress(3 * pageSize))
        try memory.write(UInt64(4), at: GuestAddress(0x10_0000 + 1 * miB - 8))  // last page of region 2
        #expect(try memory.residentBytes() == 3 * pageSize)
    }

    @Test("regions larger than one mincore chunk (256 MiB with 4 KiB pages) are counted to the end")
    func largeRegion() throws {
        let size: UInt64 = 300 * miB  // MAP_NORESERVE: nothing is allocated until touched
        let memory = try GuestMemory(regions: [(start: GuestAddress(0), size: size)])
        try memory.write(UInt8(1), at: GuestAddress(size - 1))
        let resident = try memory.residentBytes()
        // One page, or one 2 MiB page where transparent huge pages are always on.
        #expect(resident >= pageSize && resident <= 2 * miB)
    }
}
