import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// How virtio devices are placed in the machine and described to the guest, and how their
/// configurations are validated (the `--disk` and `--net` grammar: `CommandLineTests`). No KVM needed.
@Suite("Virtio: machine wiring")
struct VirtioMachineTests {
    @Test("slot i sits at 0xd0000000 + i * 4 KiB with GSI 5 + i, inside the MMIO gap")
    func slots() {
        let first = X86Layout.virtioSlot(0)!
        #expect(first.address == GuestAddress(0xD000_0000) && first.gsi == 5)
        let last = X86Layout.virtioSlot(X86Layout.virtioMMIOSlotCount - 1)!
        #expect(last.address == GuestAddress(0xD001_2000) && last.gsi == 23, "IOAPIC pins end at 23")
        #expect(last.address.rawValue + VirtioMMIORegisters.windowSize <= X86Layout.ioapicAddress.rawValue)
        #expect(first.address.rawValue >= X86Layout.mmioTestDeviceAddress.rawValue + X86Layout.mmioTestDeviceSize)
        #expect(first.commandLineWord == "virtio_mmio.device=4K@0xd0000000:5")
        #expect(X86Layout.virtioSlot(2)!.commandLineWord == "virtio_mmio.device=4K@0xd0002000:7")
    }

    @Test("the kernel command line gets one virtio_mmio.device word per device, after the base and the CPUID mask")
    func commandLine() throws {
        let slots = [X86Layout.virtioSlot(0)!, X86Layout.virtioSlot(1)!]
        #expect(
            LinuxBoot.commandLine(base: "console=ttyS0", cpuidMask: [], deviceWords: slots.map(\.commandLineWord))
                == "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
        let mask = try CPUIDFeature.parseMask("popcnt")
        #expect(
            LinuxBoot.commandLine(base: "", cpuidMask: mask, deviceWords: [slots[0].commandLineWord])
                == "clearcpuid=popcnt virtio_mmio.device=4K@0xd0000000:5")
        #expect(LinuxBoot.commandLine(base: "quiet", cpuidMask: []) == "quiet")
        #expect(LinuxBoot.commandLine(base: "", cpuidMask: []) == "")
    }

    @Test("the VMM's words go before a `--` so Linux reads them and init gets only the command")
    func commandLineBeforeInitArguments() throws {
        let mask = try CPUIDFeature.parseMask("popcnt")
        let slot = X86Layout.virtioSlot(0)!
        #expect(
            LinuxBoot.commandLine(
                base: "console=ttyS0 root=/dev/vda -- /bin/sh -c \"exit 7\"", cpuidMask: mask, deviceWords: [slot.commandLineWord]
            )
                == "console=ttyS0 root=/dev/vda clearcpuid=popcnt virtio_mmio.device=4K@0xd0000000:5 -- /bin/sh -c \"exit 7\"")
        #expect(LinuxBoot.commandLine(base: "-- true", cpuidMask: mask) == "clearcpuid=popcnt -- true")
        #expect(LinuxBoot.commandLine(base: "quiet --", cpuidMask: mask) == "quiet clearcpuid=popcnt --")
        // Only a word that is exactly "--", outside double quotes, splits.
        #expect(
            LinuxBoot.commandLine(base: "a --b c-- swiftlet.cmd=\"x -- y\"", cpuidMask: mask)
                == "a --b c-- swiftlet.cmd=\"x -- y\" clearcpuid=popcnt")
        // A second "--" belongs to init's arguments.
        #expect(LinuxBoot.commandLine(base: "a -- echo -- b", cpuidMask: mask) == "a clearcpuid=popcnt -- echo -- b")
    }

    @Test("the configuration refuses more disks than slots, empty paths and long ids")
    func validation() throws {
        var configuration = MachineConfiguration(kernelPath: "/k", disks: [DiskConfiguration(path: "/d")])
        try configuration.validate()
        configuration.disks = Array(repeating: DiskConfiguration(path: "/d"), count: 20)
        #expect(throws: ConfigurationError.tooManyDisks(20)) { try configuration.validate() }
        configuration.disks = [DiskConfiguration(path: "")]
        #expect(throws: ConfigurationError.diskWithoutPath) { try configuration.validate() }
        configuration.disks = [DiskConfiguration(path: "/d", id: String(repeating: "x", count: 21))]
        #expect(throws: ConfigurationError.diskIdentifierTooLong(String(repeating: "x", count: 21))) {
            try configuration.validate()
        }
    }

    @Test("slots end at the layout's last one")
    func slotCount() {
        #expect(X86Layout.virtioSlot(X86Layout.virtioMMIOSlotCount) == nil)
        #expect(X86Layout.virtioSlot(-1) == nil)
        #expect((0..<X86Layout.virtioMMIOSlotCount).compactMap { X86Layout.virtioSlot($0)?.index } == Array(0..<19))
    }

    @Test("the configuration refuses more virtio devices than slots, bad tap names, multicast and duplicate MACs")
    func networkValidation() throws {
        var configuration = MachineConfiguration(
            kernelPath: "/k", disks: Array(repeating: DiskConfiguration(path: "/d"), count: 17),
            networks: [NetworkConfiguration(tap: "tap0")], rng: true)
        try configuration.validate()
        configuration.networks.append(NetworkConfiguration(tap: "tap1"))
        #expect(throws: ConfigurationError.tooManyVirtioDevices(20)) { try configuration.validate() }
        configuration.disks = []
        configuration.networks = [NetworkConfiguration(tap: "bad name")]
        #expect(throws: ConfigurationError.badTapName("bad name")) { try configuration.validate() }
        let multicast = MACAddress([0x01, 0, 0x5E, 0, 0, 1])
        configuration.networks = [NetworkConfiguration(tap: "tap0", mac: multicast)]
        #expect(throws: ConfigurationError.macNotUnicast(multicast)) { try configuration.validate() }
        let mac = MACAddress([0x02, 0, 0, 0, 0, 7])
        configuration.networks = [NetworkConfiguration(tap: "tap0", mac: mac), NetworkConfiguration(tap: "tap1", mac: mac)]
        #expect(throws: ConfigurationError.duplicateMAC(mac)) { try configuration.validate() }
        configuration.networks = [NetworkConfiguration(tap: "tap0"), NetworkConfiguration(tap: "tap0")]
        #expect(throws: ConfigurationError.duplicateMAC(MACAddress.generated(from: "tap0"))) { try configuration.validate() }
    }

    @Test("MAC addresses: parsing, printing, and a stable generated unicast, locally administered address per tap")
    func macAddresses() throws {
        let mac = try #require(MACAddress(parsing: "02:53:57:4c:54:0A"))
        #expect(mac.octets == [0x02, 0x53, 0x57, 0x4C, 0x54, 0x0A])
        #expect("\(mac)" == "02:53:57:4c:54:0a")
        #expect(MACAddress(parsing: "02-53-57-4c-54-0a") == mac)
        for bad in ["", "02:53:57:4c:54", "02:53:57:4c:54:0a:00", "2:53:57:4c:54:0a", "02:53:57:4c:54:zz", "02:53-57:4c:54:0a"] {
            #expect(MACAddress(parsing: bad) == nil, "\(bad)")
        }
        let generated = MACAddress.generated(from: "tap0")
        #expect(generated == MACAddress.generated(from: "tap0"), "stable")
        #expect(generated != MACAddress.generated(from: "tap1"))
        #expect(generated.octets[0] == 0x02 && generated.isLocallyAdministered && !generated.isMulticast)
        #expect(NetworkConfiguration(tap: "tap0").effectiveMAC == generated)
        #expect(NetworkConfiguration(tap: "tap0", mac: mac).effectiveMAC == mac)
    }
}
