import Testing

@testable import Swiftlet

/// How virtio devices are placed in the machine and described to the guest, and the `--disk`
/// option. No KVM needed.
@Suite("Virtio: machine wiring")
struct VirtioMachineTests {
    @Test("slot i sits at 0xd0000000 + i * 4 KiB with GSI 5 + i, inside the MMIO gap")
    func slots() {
        let first = VirtioMMIOSlot(x86: 0)
        #expect(first.address == GuestAddress(0xD000_0000) && first.gsi == 5)
        let last = VirtioMMIOSlot(x86: X86Layout.virtioMMIOSlotCount - 1)
        #expect(last.address == GuestAddress(0xD001_2000) && last.gsi == 23, "IOAPIC pins end at 23")
        #expect(last.address.rawValue + VirtioMMIORegisters.windowSize <= X86Layout.ioapicAddress.rawValue)
        #expect(first.address.rawValue >= X86Layout.mmioTestDeviceAddress.rawValue + X86Layout.mmioTestDeviceSize)
        #expect(first.commandLineWord == "virtio_mmio.device=4K@0xd0000000:5")
        #expect(VirtioMMIOSlot(x86: 2).commandLineWord == "virtio_mmio.device=4K@0xd0002000:7")
    }

    @Test("the kernel command line gets one virtio_mmio.device word per device, after the base and the CPUID mask")
    func commandLine() throws {
        let slots = [VirtioMMIOSlot(x86: 0), VirtioMMIOSlot(x86: 1)]
        #expect(LinuxBoot.commandLine(base: "console=ttyS0", cpuidMask: [], virtioDevices: slots)
            == "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
        let mask = try CPUIDFeature.parseMask("popcnt")
        #expect(LinuxBoot.commandLine(base: "", cpuidMask: mask, virtioDevices: [slots[0]])
            == "clearcpuid=popcnt virtio_mmio.device=4K@0xd0000000:5")
        #expect(LinuxBoot.commandLine(base: "quiet", cpuidMask: []) == "quiet")
        #expect(LinuxBoot.commandLine(base: "", cpuidMask: []) == "")
    }

    @Test("--disk values", arguments: [
        ("path=/img", DiskConfiguration(path: "/img")),
        ("/img", DiskConfiguration(path: "/img")),
        ("path=/a b,readonly=on", DiskConfiguration(path: "/a b", readOnly: true)),
        ("readonly=off,path=/img,id=root,direct=on", DiskConfiguration(path: "/img", id: "root", directIO: true)),
        ("path=/img,ro=yes,direct=0", DiskConfiguration(path: "/img", readOnly: true)),
        ("path=/img,id=12345678901234567890", DiskConfiguration(path: "/img", id: "12345678901234567890")),
    ])
    func parse(text: String, expected: DiskConfiguration) throws {
        #expect(try DiskConfiguration.parse(text) == expected)
    }

    @Test("bad --disk values say what is wrong", arguments: [
        ("", DiskOptionError.malformed("")),
        ("readonly=on", .missingPath),
        ("path=", .missingPath),
        ("path=/a,path=/b", .duplicate("path")),
        ("/a,/b", .malformed("/b")),
        ("path=/a,,readonly=on", .malformed("")),
        ("path=/a,cache=none", .unknownKey("cache")),
        ("path=/a,readonly=maybe", .badFlag(key: "readonly", value: "maybe")),
        ("path=/a,id=123456789012345678901", .identifierTooLong("123456789012345678901")),
    ])
    func parseErrors(text: String, expected: DiskOptionError) {
        #expect(throws: expected) { try DiskConfiguration.parse(text) }
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
        #expect(throws: ConfigurationError.diskIdentifierTooLong(String(repeating: "x", count: 21))) { try configuration.validate() }
    }
}
