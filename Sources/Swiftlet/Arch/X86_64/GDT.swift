import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// A segment descriptor in the boot GDT, and its `kvm_segment` twin for `KVM_SET_SREGS`.
///
/// The boot GDT follows the Linux 64-bit boot protocol: selector 0x10 is a flat 64-bit code
/// segment (`__BOOT_CS`) and 0x18 a flat data segment (`__BOOT_DS`); 0x00 and 0x08 are null.
package struct SegmentDescriptor: Equatable, Sendable {
    /// Segment base address (32 bits; ignored for code and data segments in 64-bit mode).
    package var base: UInt32
    /// Segment limit, the last valid offset (20 bits).
    package var limit: UInt32  // 20-bit limit; with granularity set it counts 4 KiB pages
    /// Access byte: present, DPL, S, type.
    package var access: UInt8
    /// Flags nibble: G (granularity), D/B, L (64-bit), AVL.
    package var flags: UInt8

    /// Flat 64-bit ring-0 code: access 0x9B (present, execute/read, accessed), flags 0xA (G, L).
    package static let code64 = SegmentDescriptor(base: 0, limit: 0xFFFFF, access: 0x9B, flags: 0xA)
    /// Flat ring-0 data segment: access 0x93 (present, read/write, accessed), flags 0xC (G, D/B).
    package static let data = SegmentDescriptor(base: 0, limit: 0xFFFFF, access: 0x93, flags: 0xC)

    /// The 8-byte descriptor as it sits in the GDT.
    package var encoded: UInt64 {
        var value = UInt64(limit & 0xFFFF)
        value |= UInt64(base & 0xFF_FFFF) << 16
        value |= UInt64(access) << 40
        value |= UInt64((limit >> 16) & 0xF) << 48
        value |= UInt64(flags & 0xF) << 52
        value |= UInt64(base >> 24) << 56
        return value
    }

    /// The descriptor as KVM's segment register cache wants it, for `selector`.
    package func kvmSegment(selector: UInt16) -> kvm_segment {
        var segment = kvm_segment()
        segment.base = UInt64(base)
        let granular = flags & 0x8 != 0
        segment.limit = granular ? (limit << 12) | 0xFFF : limit
        segment.selector = selector
        segment.type = access & 0xF
        segment.present = (access >> 7) & 1
        segment.dpl = (access >> 5) & 3
        segment.db = (flags >> 2) & 1
        segment.s = (access >> 4) & 1
        segment.l = (flags >> 1) & 1
        segment.g = granular ? 1 : 0
        segment.avl = flags & 1
        segment.unusable = present == 0 ? 1 : 0
        return segment
    }

    private var present: UInt8 { (access >> 7) & 1 }
}

/// The boot GDT Swiftlet writes at `X86Layout.gdtAddress`.
package enum BootGDT {
    /// Selector of the 64-bit code segment, GDT entry 2 (Linux's `__BOOT_CS`).
    package static let codeSelector: UInt16 = 0x10
    /// Selector of the data segment, GDT entry 3 (Linux's `__BOOT_DS`).
    package static let dataSelector: UInt16 = 0x18
    /// The encoded descriptors in GDT order: null, null (0x08 unused), code (0x10), data (0x18).
    package static let entries: [UInt64] = [0, 0, SegmentDescriptor.code64.encoded, SegmentDescriptor.data.encoded]

    /// Writes the GDT (and an empty IDT) into guest memory.
    package static func write(to memory: GuestMemory) throws(GuestMemoryError) {
        for (i, entry) in entries.enumerated() {
            try memory.write(entry, at: GuestAddress(X86Layout.gdtAddress.rawValue + UInt64(i * 8)))
        }
        try memory.write(UInt64(0), at: X86Layout.idtAddress)
    }
}
