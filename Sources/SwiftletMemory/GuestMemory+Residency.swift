import Glibc
import SwiftletHost

extension GuestMemory {
    /// How many bytes of guest RAM are resident in host memory: the pages the guest (or the
    /// VMM, loading the kernel and writing boot structures) has touched.
    ///
    /// Guest RAM is anonymous `MAP_NORESERVE` memory, so a page becomes resident only when it
    /// is first written or read; `mincore(2)` over each region counts those pages. Benchmarks
    /// subtract this from the process's peak RSS to get the VMM's own footprint.
    public func residentBytes() throws(SystemError) -> UInt64 {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        // One status byte per page; ask for at most `chunkPages` pages per call.
        let chunkPages = 1 << 16
        var resident: UInt64 = 0
        var failure: SystemError?
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: chunkPages) { status in
            for region in regions {
                var offset: UInt64 = 0
                while offset < region.size && failure == nil {
                    let pages = Int(min(UInt64(chunkPages), (region.size - offset) / page))
                    if mincore(region.host + Int(offset), pages * Int(page), status.baseAddress) != 0 {
                        failure = SystemError.current("mincore over guest memory at \(region.start)")
                        return
                    }
                    for index in 0..<pages where status[index] & 1 != 0 { resident += page }
                    offset += UInt64(pages) * page
                }
            }
        }
        if let failure { throw failure }
        return resident
    }
}
