import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// The boot identity map: virtual == physical for the first 4 GiB, built from 2 MiB pages.
///
/// One PML4 entry points at one PDPT whose first four entries point at four page directories,
/// each mapping 1 GiB with 512 large (2 MiB) pages. 1 GiB pages would be shorter but some
/// KVM implementations (the development host's) do not support them in guest page tables.
package enum IdentityPageTables {
    /// Page-table entry bit 0 (P): the entry is valid.
    package static let present: UInt64 = 1 << 0
    /// Page-table entry bit 1 (R/W): writes allowed.
    package static let writable: UInt64 = 1 << 1
    /// Page-directory entry bit 7 (PS): the entry maps a 2 MiB page, not a page table.
    package static let largePage: UInt64 = 1 << 7
    static let twoMiB: UInt64 = 2 << 20

    /// The page-table entries as (guest address, value) pairs, in writing order.
    package static func entries() -> [(GuestAddress, UInt64)] {
        let directories = Int(X86Layout.identityMappedBytes >> 30)
        var result: [(GuestAddress, UInt64)] = []
        result.reserveCapacity(1 + directories + directories * 512)
        result.append((X86Layout.pml4Address, X86Layout.pdptAddress.rawValue | present | writable))
        for d in 0..<directories {
            let directory = X86Layout.pageDirectoryAddress.rawValue + UInt64(d) * 0x1000
            result.append((GuestAddress(X86Layout.pdptAddress.rawValue + UInt64(d * 8)), directory | present | writable))
            for e in 0..<512 {
                let physical = (UInt64(d) << 30) + UInt64(e) * twoMiB
                result.append((GuestAddress(directory + UInt64(e * 8)), physical | present | writable | largePage))
            }
        }
        return result
    }

    /// Writes the tables into guest memory (the pages are assumed zeroed, as fresh RAM is).
    package static func write(to memory: GuestMemory) throws(GuestMemoryError) {
        for (address, value) in entries() { try memory.write(value, at: address) }
    }

    /// The guest physical address `virtual` translates to through tables in `memory`, walking
    /// them as the CPU would (for tests and diagnostics). Nil when not mapped.
    package static func translate(_ virtual: UInt64, in memory: GuestMemory) -> UInt64? {
        guard
            let pml4e = try? memory.read(
                UInt64.self, at: GuestAddress(X86Layout.pml4Address.rawValue + ((virtual >> 39) & 511) * 8)),
            pml4e & present != 0,
            let pdpte = try? memory.read(UInt64.self, at: GuestAddress((pml4e & ~0xFFF) + ((virtual >> 30) & 511) * 8)),
            pdpte & present != 0, pdpte & largePage == 0,
            let pde = try? memory.read(UInt64.self, at: GuestAddress((pdpte & ~0xFFF) + ((virtual >> 21) & 511) * 8)),
            pde & present != 0, pde & largePage != 0
        else { return nil }
        return (pde & ~(twoMiB - 1) & 0x000F_FFFF_FFFF_F000) | (virtual & (twoMiB - 1))
    }
}
