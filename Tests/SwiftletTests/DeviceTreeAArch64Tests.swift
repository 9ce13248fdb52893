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

/// One machine to describe.
struct AArch64TreeCase: Sendable, CustomTestStringConvertible {
    var vcpuCount: Int
    var initrdSize: UInt64?
    var virtioDeviceCount: Int
    var memorySize: UInt64 = 128 << 20

    var testDescription: String {
        let initrd = initrdSize.map { "initrd of \($0) bytes" } ?? "no initrd"
        return "\(vcpuCount) vCPU(s), \(initrd), \(virtioDeviceCount) virtio, \(memorySize >> 20) MiB"
    }

    func description() throws -> AArch64MachineDescription {
        try AArch64MachineDescription(
            memorySize: memorySize, vcpuCount: vcpuCount, initrdSize: initrdSize, virtioDeviceCount: virtioDeviceCount)
    }
}

/// 1 and 4 vCPUs, with and without an initrd (of a size that is not page-aligned), 0 to 4
/// virtio devices; and a few larger machines.
private let treeCases: [AArch64TreeCase] =
    [1, 4].flatMap { cpus in
        [nil, (3 << 20) + 123].flatMap { initrd in
            (0...4).map { AArch64TreeCase(vcpuCount: cpus, initrdSize: initrd, virtioDeviceCount: $0) }
        }
    } + [
        AArch64TreeCase(vcpuCount: 2, initrdSize: 1 << 20, virtioDeviceCount: 2, memorySize: 6 << 30),
        AArch64TreeCase(vcpuCount: 17, initrdSize: 0, virtioDeviceCount: 32, memorySize: 4 << 20),
        AArch64TreeCase(vcpuCount: AArch64Layout.maximumVCPUs, initrdSize: 64 << 20, virtioDeviceCount: 32, memorySize: 1 << 30),
    ]

@Suite("Device tree for aarch64")
struct DeviceTreeAArch64Tests {
    @Test("the blob passes fdt_check_full and has every node and property", arguments: treeCases)
    func structure(testCase: AArch64TreeCase) throws {
        let machine = try testCase.description()
        let blob = try machine.deviceTree()
        try blob.check()
        #expect(UInt64(blob.bytes.count) <= AArch64Layout.deviceTreeMaxSize)
        try expectMachine(blob, machine)
    }

    @Test("dtc decompiles the blob without a warning", .enabled(if: DTC.path != nil, DTC.absentReason), arguments: treeCases)
    func dtcAcceptsTree(testCase: AArch64TreeCase) throws {
        let blob = try testCase.description().deviceTree()
        let result = try DTC.decompile(blob)
        #expect(result.status == 0)
        #expect(result.stderr == "")
        #expect(result.dts.hasPrefix("/dts-v1/;"))
        #expect(result.dts.contains("compatible = \"arm,gic-v3\";"))
    }

    @Test(
        "dtc's stricter checks (Linux's W=1 and W=2) find nothing either", .enabled(if: DTC.path != nil, DTC.absentReason),
        arguments: treeCases)
    func dtcStrictChecks(testCase: AArch64TreeCase) throws {
        let result = try DTC.decompile(try testCase.description().deviceTree(), extraChecks: DTC.strictChecks)
        #expect(result.status == 0)
        #expect(result.stderr == "")
    }

    @Test("MPIDRs follow KVM's default: 16 vCPUs per Aff0 cluster, then Aff1, then Aff2")
    func mpidrs() {
        #expect(AArch64DeviceTree.mpidr(vcpu: 0) == 0)
        #expect(AArch64DeviceTree.mpidr(vcpu: 15) == 0xF)
        #expect(AArch64DeviceTree.mpidr(vcpu: 16) == 0x100)
        #expect(AArch64DeviceTree.mpidr(vcpu: 17) == 0x101)
        #expect(AArch64DeviceTree.mpidr(vcpu: 511) == 0x1F0F)
        #expect(AArch64DeviceTree.mpidr(vcpu: 4096) == 0x1_0000)
        let all = (0..<AArch64Layout.maximumVCPUs).map { AArch64DeviceTree.mpidr(vcpu: $0) }
        #expect(Set(all).count == all.count)
    }

    @Test("the command line defaults to ttyS0 without x86 options; a given one is used as is")
    func commandLine() throws {
        let standard = try AArch64MachineDescription()
        #expect(standard.commandLine == AArch64MachineDescription.defaultCommandLine)
        #expect(standard.commandLine.contains("console=ttyS0"))
        #expect(!standard.commandLine.contains("i8042"))
        #expect(!standard.commandLine.contains("reboot=k"))
        let custom = try AArch64MachineDescription(commandLine: "")
        #expect(try custom.deviceTree().string("bootargs", of: "/chosen") == "")
        let longest = String(repeating: "x", count: AArch64MachineDescription.commandLineLimit)
        #expect(try AArch64MachineDescription(commandLine: longest).deviceTree().string("bootargs", of: "/chosen") == longest)
    }

    @Test("values the machine cannot have are refused")
    func invalidDescriptions() {
        let limit = AArch64MachineDescription.commandLineLimit
        let cases: [(AArch64MachineError, () throws(AArch64MachineError) -> AArch64MachineDescription)] = [
            (.memoryTooSmall(2 << 20), { () throws(AArch64MachineError) in try AArch64MachineDescription(memorySize: 2 << 20) }),
            (.memoryTooLarge(1 << 40), { () throws(AArch64MachineError) in try AArch64MachineDescription(memorySize: 1 << 40) }),
            (
                .memoryNotPageAligned((128 << 20) + 1),
                { () throws(AArch64MachineError) in try AArch64MachineDescription(memorySize: (128 << 20) + 1) }
            ),
            (.vcpuCount(0), { () throws(AArch64MachineError) in try AArch64MachineDescription(vcpuCount: 0) }),
            (.vcpuCount(513), { () throws(AArch64MachineError) in try AArch64MachineDescription(vcpuCount: 513) }),
            (.virtioDeviceCount(-1), { () throws(AArch64MachineError) in try AArch64MachineDescription(virtioDeviceCount: -1) }),
            (.virtioDeviceCount(33), { () throws(AArch64MachineError) in try AArch64MachineDescription(virtioDeviceCount: 33) }),
            (
                .commandLineContainsNUL,
                { () throws(AArch64MachineError) in try AArch64MachineDescription(commandLine: "a\u{0}b") }
            ),
            (
                .commandLineTooLong(length: limit + 1, limit: limit),
                { () throws(AArch64MachineError) in
                    try AArch64MachineDescription(commandLine: String(repeating: "x", count: limit + 1))
                }
            ),
            (
                .initrdDoesNotFit(size: 127 << 20, memorySize: 128 << 20),
                { () throws(AArch64MachineError) in try AArch64MachineDescription(initrdSize: 127 << 20) }
            ),
        ]
        for (expected, make) in cases {
            #expect(throws: expected) { try make() }
            #expect(!expected.description.isEmpty)
        }
        // The largest initrd that fits: everything between RAM start and the device tree.
        #expect(throws: Never.self) { try AArch64MachineDescription(initrdSize: 126 << 20) }
    }

    @Test("from a MachineConfiguration: sizes, vCPUs, command line and the initrd file's size")
    func fromConfiguration() throws {
        let initrd = try TemporaryFile(contents: [UInt8](repeating: 7, count: 10_000))
        let configuration = MachineConfiguration(
            kernelPath: "/unused", memorySize: 256 << 20, vcpuCount: 3, commandLine: "console=ttyS0 quiet",
            initrdPath: initrd.path)
        let machine = try AArch64MachineDescription(configuration, virtioDeviceCount: 2)
        #expect(machine.memorySize == 256 << 20)
        #expect(machine.vcpuCount == 3)
        #expect(machine.commandLine == "console=ttyS0 quiet")
        #expect(machine.initrdSize == 10_000)
        #expect(machine.virtioDeviceCount == 2)

        let plain = try AArch64MachineDescription(MachineConfiguration(kernelPath: ""))
        #expect(plain.commandLine == AArch64MachineDescription.defaultCommandLine)
        #expect(plain.initrdSize == nil)
        #expect(plain.virtioDeviceCount == 0)

        let missing = MachineConfiguration(kernelPath: "", initrdPath: "/nonexistent/initrd.cpio")
        #expect(throws: AArch64MachineError.initrdUnreadable(SystemError("open /nonexistent/initrd.cpio", errno: ENOENT))) {
            try AArch64MachineDescription(missing)
        }
        let device = MachineConfiguration(kernelPath: "", initrdPath: "/dev/null")
        #expect(throws: AArch64MachineError.initrdNotARegularFile(path: "/dev/null", kind: .characterDevice)) {
            try AArch64MachineDescription(device)
        }
    }

    @Test("the layout: devices below RAM, apart from each other, redistributors for every vCPU")
    func layout() {
        let maximumRedistributors = AArch64Layout.gicRedistributorSize(vcpuCount: AArch64Layout.maximumVCPUs)
        let lastSlot = AArch64Layout.virtioMMIOSlot(AArch64Layout.virtioMMIOSlotCount - 1)
        let regions: [(start: UInt64, size: UInt64)] = [
            (AArch64Layout.gicDistributorAddress.rawValue, AArch64Layout.gicDistributorSize),
            (AArch64Layout.uartAddress.rawValue, AArch64Layout.uartSize),
            (
                AArch64Layout.virtioMMIOBase.rawValue,
                lastSlot.address.rawValue + AArch64Layout.virtioMMIOSize - AArch64Layout.virtioMMIOBase.rawValue
            ),
            (AArch64Layout.gicRedistributorAddress.rawValue, maximumRedistributors),
        ].sorted { $0.start < $1.start }
        for (lower, upper) in zip(regions, regions.dropFirst()) { #expect(lower.start + lower.size <= upper.start) }
        #expect(regions.last!.start + regions.last!.size <= AArch64Layout.ramStart.rawValue)
        // KVM wants 64 KiB-aligned GIC frames.
        #expect(AArch64Layout.gicDistributorAddress.rawValue % 0x1_0000 == 0)
        #expect(AArch64Layout.gicRedistributorAddress.rawValue % 0x1_0000 == 0)

        let spis = [AArch64Layout.uartSPI] + (0..<AArch64Layout.virtioMMIOSlotCount).map { AArch64Layout.virtioMMIOSlot($0).spi }
        #expect(Set(spis).count == spis.count)
        #expect(spis.allSatisfy { Int($0) < AArch64Layout.requiredSPICount })
        #expect(AArch64Layout.virtioMMIOSlot(3) == (GuestAddress(0x0A00_3000), 19))
    }

    @Test("the initrd goes page-aligned right below the device tree, above the kernel")
    func initrdPlacement() {
        let memory: UInt64 = 64 << 20
        let dtb = AArch64Layout.deviceTreeAddress(memorySize: memory)
        #expect(dtb == GuestAddress(0x8000_0000 + (62 << 20)))
        let start = AArch64Layout.initrdAddress(size: 5000, memorySize: memory)
        #expect(start == GuestAddress(dtb.rawValue - 0x2000))
        #expect(AArch64Layout.initrdAddress(size: 0x3000, memorySize: memory) == GuestAddress(dtb.rawValue - 0x3000))
        #expect(AArch64Layout.initrdAddress(size: 62 << 20, memorySize: memory) == AArch64Layout.ramStart)
        #expect(AArch64Layout.initrdAddress(size: (62 << 20) + 1, memorySize: memory) == nil)
        #expect(
            AArch64Layout.initrdAddress(size: 1 << 20, memorySize: memory, kernelSize: 61 << 20)
                == GuestAddress(0x8000_0000 + (61 << 20)))
        #expect(AArch64Layout.initrdAddress(size: 1 << 20, memorySize: memory, kernelSize: (61 << 20) + 1) == nil)
        #expect(AArch64Layout.initrdAddress(size: 0, memorySize: memory, kernelSize: .max) == nil)
        #expect(AArch64Layout.initrdAddress(size: .max, memorySize: memory) == nil)
        #expect(AArch64Layout.initrdAddress(size: 0, memorySize: 1 << 20) == nil)
    }

    // MARK: - What every tree must say

    private func expectMachine(_ blob: DeviceTreeBlob, _ machine: AArch64MachineDescription) throws {
        // The nodes, in the documented order.
        let virtioNodes = (0..<machine.virtioDeviceCount).map { "virtio-mmio@" + String(0x0A00_0000 + $0 * 0x1000, radix: 16) }
        #expect(
            try blob.childNames(of: "/")
                == ["chosen", "aliases", "memory@80000000", "cpus", "psci", "intc@8000000", "timer", "serial@9000000"]
                + virtioNodes)

        // Root: 64-bit addresses and sizes; every interrupt goes to the GIC.
        #expect(try blob.strings("compatible", of: "/") == ["linux,dummy-virt"])
        #expect(blob.hasProperty("model", of: "/"))
        #expect(try blob.u32("#address-cells", of: "/") == 2)
        #expect(try blob.u32("#size-cells", of: "/") == 2)
        let gicPath = "/intc@8000000"
        let gicPhandle = try #require(try blob.phandle(of: gicPath))
        #expect(try blob.u32("interrupt-parent", of: "/") == gicPhandle.rawValue)
        #expect(try blob.path(of: gicPhandle) == gicPath)

        // Memory.
        #expect(try blob.string("device_type", of: "/memory@80000000") == "memory")
        #expect(try blob.cells("reg", of: "/memory@80000000") == split([0x8000_0000, machine.memorySize]))

        // CPUs: one node per vCPU, reg = MPIDR, started through PSCI.
        #expect(try blob.u32("#address-cells", of: "/cpus") == 1)
        #expect(try blob.u32("#size-cells", of: "/cpus") == 0)
        let cpuNames = try blob.childNames(of: "/cpus")
        #expect(cpuNames == (0..<machine.vcpuCount).map { "cpu@" + String(AArch64DeviceTree.mpidr(vcpu: $0), radix: 16) })
        for (index, name) in cpuNames.enumerated() {
            let path = "/cpus/" + name
            #expect(try blob.string("device_type", of: path) == "cpu")
            #expect(try blob.strings("compatible", of: path) == ["arm,arm-v8"])
            #expect(try blob.string("enable-method", of: path) == "psci")
            #expect(try blob.u32("reg", of: path) == UInt32(AArch64DeviceTree.mpidr(vcpu: index)))
        }
        #expect(try blob.strings("compatible", of: "/psci") == ["arm,psci-1.0", "arm,psci-0.2"])
        #expect(try blob.string("method", of: "/psci") == "hvc")

        // GICv3: distributor, then a redistributor region sized for the vCPUs.
        #expect(try blob.strings("compatible", of: gicPath) == ["arm,gic-v3"])
        #expect(try blob.u32("#interrupt-cells", of: gicPath) == 3)
        #expect(try blob.property("interrupt-controller", of: gicPath) == [])
        #expect(
            try blob.cells("reg", of: gicPath)
                == split([0x0800_0000, 0x1_0000, 0x1000_0000, UInt64(machine.vcpuCount) * 0x2_0000]))

        // Timer: secure, non-secure, virtual and hypervisor PPIs, level-triggered.
        #expect(try blob.strings("compatible", of: "/timer") == ["arm,armv8-timer"])
        #expect(try blob.cells("interrupts", of: "/timer") == [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        #expect(try blob.property("always-on", of: "/timer") == [])

        // UART, named by /chosen and /aliases.
        let uartPath = "/serial@9000000"
        #expect(AArch64DeviceTree.uartPath == uartPath)
        #expect(try blob.strings("compatible", of: uartPath) == ["ns16550a"])
        #expect(try blob.cells("reg", of: uartPath) == split([0x0900_0000, 0x1000]))
        #expect(try blob.cells("interrupts", of: uartPath) == [0, AArch64Layout.uartSPI, 1])
        #expect(try blob.u32("clock-frequency", of: uartPath) == 1_843_200)
        #expect(try blob.string("serial0", of: "/aliases") == uartPath)

        // Virtio-mmio devices, one per slot in use.
        let virtioNames = try blob.childNames(of: "/").filter { $0.hasPrefix("virtio-mmio@") }
        #expect(virtioNames.count == machine.virtioDeviceCount)
        for (slot, name) in virtioNames.enumerated() {
            let path = "/" + name
            let address = 0x0A00_0000 + UInt64(slot) * 0x1000
            #expect(name == "virtio-mmio@" + String(address, radix: 16))
            #expect(try blob.strings("compatible", of: path) == ["virtio,mmio"])
            #expect(try blob.cells("reg", of: path) == split([address, 0x1000]))
            #expect(try blob.cells("interrupts", of: path) == [0, 16 + UInt32(slot), 1])
            #expect(try blob.property("dma-coherent", of: path) == [])
        }

        // /chosen: the command line, the console and the initrd's range.
        #expect(try blob.string("bootargs", of: "/chosen") == machine.commandLine)
        #expect(try blob.string("stdout-path", of: "/chosen") == uartPath)
        if let size = machine.initrdSize {
            let start = try blob.u64("linux,initrd-start", of: "/chosen")
            let end = try blob.u64("linux,initrd-end", of: "/chosen")
            #expect(end - start == size)
            #expect(start % 0x1000 == 0)
            #expect(start >= 0x8000_0000)
            #expect(end <= machine.deviceTreeAddress.rawValue)
            #expect(machine.deviceTreeAddress.rawValue - end < 0x1000)
            #expect(GuestAddress(start) == machine.initrdAddress)
        } else {
            #expect(!blob.hasProperty("linux,initrd-start", of: "/chosen"))
            #expect(!blob.hasProperty("linux,initrd-end", of: "/chosen"))
        }
        #expect(machine.deviceTreeAddress.rawValue == 0x8000_0000 + machine.memorySize - (2 << 20))
    }

    private func split(_ values: [UInt64]) -> [UInt32] {
        values.flatMap { [UInt32($0 >> 32), UInt32($0 & 0xFFFF_FFFF)] }
    }
}
