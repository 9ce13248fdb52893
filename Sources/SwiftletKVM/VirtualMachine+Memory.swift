import CHost
import CKVM
import SwiftletHost
import SwiftletMemory

extension VirtualMachine {
    /// Registers every region of `memory` as a KVM memory slot (slot numbers from `firstSlot`).
    package func register(_ memory: GuestMemory, firstSlot: UInt32 = 0) throws(SystemError) {
        for (i, region) in memory.regions.enumerated() {
            try setUserMemoryRegion(slot: firstSlot + UInt32(i), guest: region.start, size: region.size, host: region.host)
        }
    }
}
