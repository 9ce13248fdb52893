import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// The Intel MultiProcessor Specification 1.4 tables that tell a guest how many processors it
/// has and how ISA interrupts reach the IOAPIC (Linux reads them when there is no ACPI).
///
/// The floating pointer structure sits at the start of the EBDA (0x9FC00), where Linux looks
/// first; the configuration table follows it, inside the e820 hole reserved below 1 MiB.
package enum MPTable {
    /// Where the 16-byte MP floating pointer structure ("_MP_") goes: the start of the EBDA.
    package static let floatingPointerAddress = X86Layout.ebdaStart
    /// Where the MP configuration table ("PCMP") goes: right after the floating pointer.
    package static let configurationTableAddress = GuestAddress(X86Layout.ebdaStart.rawValue + 16)
    /// Specification revision written in both structures: 4 means MP spec 1.4.
    package static let specRevision: UInt8 = 4
    /// Version reported in each processor entry: 0x14, an integrated (xAPIC) local APIC.
    package static let localAPICVersion: UInt8 = 0x14
    /// Version reported in the IOAPIC entry: 0x11, as KVM's IOAPIC reports it.
    package static let ioAPICVersion: UInt8 = 0x11
    static let headerSize = 44
    static let processorEntrySize = 20
    static let entrySize = 8
    static let isaInterruptCount = 16
    /// The IOAPIC's input pins (KVM's IOAPIC has 24).
    static let ioAPICPinCount = 24

    /// The first byte of each base configuration table entry (MP spec 4.3): processor (20 bytes),
    /// bus, I/O APIC, I/O interrupt assignment and local interrupt assignment (8 bytes each).
    package enum EntryType: UInt8 {
        /// The entry type codes 0-4, in the order entries must appear in the table.
        case processor = 0, bus = 1, ioAPIC = 2, ioInterrupt = 3, localInterrupt = 4
    }

    /// The interrupt type of an interrupt assignment entry (MP spec 4.3): a vectored
    /// interrupt from the APIC, NMI, SMI, or ExtINT (vector supplied by the 8259).
    package enum InterruptType: UInt8 {
        /// The interrupt type codes 0-3 (INT, NMI, SMI, ExtINT).
        case vectored = 0, nmi = 1, smi = 2, extINT = 3
    }

    /// The APIC ID of the IOAPIC: the first ID after the processors'.
    package static func ioAPICID(vcpuCount: Int) -> UInt8 { UInt8(vcpuCount) }

    /// The floating pointer and configuration table for `vcpuCount` processors (vCPU i has
    /// APIC ID i; vCPU 0 is the bootstrap processor), as bytes to write at
    /// `floatingPointerAddress`.
    package static func bytes(vcpuCount: Int) throws(BootSetupError) -> [UInt8] {
        guard vcpuCount >= 1, vcpuCount <= 254 else { throw .tooManyVCPUsForMPTable(vcpuCount) }
        var table: [UInt8] = []
        var entryCount = 0
        // Processors.
        for id in 0..<vcpuCount {
            var entry = [UInt8](repeating: 0, count: processorEntrySize)
            entry[0] = EntryType.processor.rawValue
            entry[1] = UInt8(id)
            entry[2] = localAPICVersion
            entry[3] = 0x01 | (id == 0 ? 0x02 : 0)  // enabled, bootstrap processor
            entry.replace(at: 4, with: UInt32(0x0000_0600))  // family 6 signature
            entry.replace(at: 8, with: UInt32(0x0000_0201))  // FPU and on-chip APIC present
            table += entry
            entryCount += 1
        }
        // The one bus: ISA.
        table += [EntryType.bus.rawValue, 0] + Array("ISA   ".utf8)
        entryCount += 1
        // The IOAPIC.
        let ioapic = ioAPICID(vcpuCount: vcpuCount)
        var ioapicEntry: [UInt8] = [EntryType.ioAPIC.rawValue, ioapic, ioAPICVersion, 0x01, 0, 0, 0, 0]
        ioapicEntry.replace(at: 4, with: UInt32(X86Layout.ioapicAddress.rawValue))
        table += ioapicEntry
        entryCount += 1
        // ISA interrupts: pin 0 is the 8259's ExtINT; IRQ 0 (the PIT) arrives on pin 2, as KVM's
        // default routing delivers it; every other IRQ n on pin n. Pins 16-23 (virtio devices
        // beyond the ISA range) are listed the same way, so a guest can use all 24 pins.
        table += ioInterrupt(type: .extINT, sourceIRQ: 0, ioapic: ioapic, pin: 0)
        entryCount += 1
        for irq in 0..<ioAPICPinCount where irq != 2 {
            table += ioInterrupt(type: .vectored, sourceIRQ: UInt8(irq), ioapic: ioapic, pin: irq == 0 ? 2 : UInt8(irq))
            entryCount += 1
        }
        // Local interrupts of every processor: LINT0 ExtINT, LINT1 NMI.
        table += [EntryType.localInterrupt.rawValue, InterruptType.extINT.rawValue, 0, 0, 0, 0, 0xFF, 0]
        table += [EntryType.localInterrupt.rawValue, InterruptType.nmi.rawValue, 0, 0, 0, 0, 0xFF, 1]
        entryCount += 2

        var header = [UInt8](repeating: 0, count: headerSize)
        header.replace(at: 0, with: Array("PCMP".utf8))
        header.replace(at: 4, with: UInt16(headerSize + table.count))
        header[6] = specRevision
        header.replace(at: 8, with: Array("SWIFTLET".utf8))
        header.replace(at: 16, with: Array("MICROVM     ".utf8))
        header.replace(at: 34, with: UInt16(entryCount))
        header.replace(at: 36, with: UInt32(X86Layout.localAPICAddress.rawValue))
        var configuration = header + table
        configuration[7] = checksum(configuration)

        var pointer = [UInt8](repeating: 0, count: 16)
        pointer.replace(at: 0, with: Array("_MP_".utf8))
        pointer.replace(at: 4, with: UInt32(configurationTableAddress.rawValue))
        pointer[8] = 1  // length in 16-byte units
        pointer[9] = specRevision
        pointer[10] = checksum(pointer)
        return pointer + configuration
    }

    /// The byte that makes `bytes` sum to zero (mod 256), computed with that byte as zero.
    package static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    static func ioInterrupt(type: InterruptType, sourceIRQ: UInt8, ioapic: UInt8, pin: UInt8) -> [UInt8] {
        // Flags 0: polarity and trigger conform to the bus (ISA: active high, edge).
        [EntryType.ioInterrupt.rawValue, type.rawValue, 0, 0, 0, sourceIRQ, ioapic, pin]
    }
}
