import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// Builds the flattened device tree an aarch64 Linux guest boots with: the whole machine
/// description, with every address from `AArch64Layout`.
///
///     /                      compatible "linux,dummy-virt", #address-cells = #size-cells = 2,
///                            interrupt-parent = the GIC
///       chosen               bootargs, stdout-path, linux,initrd-start/-end
///       aliases              serial0 = the UART (so it is ttyS0 whatever the probe order)
///       memory@80000000      RAM
///       cpus/cpu@N           one per vCPU: reg = MPIDR affinity, enable-method "psci"
///       psci                 PSCI 1.0/0.2 through HVC (KVM implements it)
///       intc@8000000         GICv3: distributor and redistributor regions
///       timer                the architected timer's four PPIs
///       serial@9000000       the ns16550a UART
///       virtio-mmio@a000000  one per virtio device, in slot order
package enum AArch64DeviceTree {
    // Interrupt specifiers for "arm,gic-v3" (#interrupt-cells = 3): type, number, flags
    // (Linux: Documentation/devicetree/bindings/interrupt-controller/arm,gic-v3.yaml).
    static let spiType: UInt32 = 0
    static let ppiType: UInt32 = 1
    static let edgeRising: UInt32 = 1
    static let levelHigh: UInt32 = 4

    /// The MPIDR_EL1 affinity KVM gives vCPU `index` by default (its `reset_mpidr`): 16 vCPUs
    /// per Aff0 cluster, then Aff1, then Aff2. A cpu node's `reg` must equal it.
    package static func mpidr(vcpu index: Int) -> UInt64 {
        let id = UInt64(index)
        return (id & 0xF) | ((id >> 4) & 0xFF) << 8 | ((id >> 12) & 0xFF) << 16
    }

    /// The path of the UART node, which `/chosen/stdout-path` names.
    package static let uartPath = "/serial@" + unitAddress(AArch64Layout.uartAddress)

    /// The device tree for `machine`, checked by libfdt and at most `deviceTreeMaxSize` bytes.
    package static func build(_ machine: AArch64MachineDescription) throws(FDTError) -> DeviceTreeBlob {
        var tree = try DeviceTreeBuilder()
        try tree.setProperties(
            [
                "compatible": .strings(["linux,dummy-virt"]),
                "model": .string("swiftlet,aarch64-microvm"),
                "#address-cells": .u32(2),
                "#size-cells": .u32(2),
            ], on: .root)

        try addChosen(to: &tree, machine: machine)
        let aliases = try tree.addNode("aliases")
        try tree.setProperty("serial0", .string(uartPath), on: aliases)

        let memory = try tree.addNode("memory@" + unitAddress(AArch64Layout.ramStart))
        try tree.setProperties(
            ["device_type": .string("memory"), "reg": .cells(splitting: [AArch64Layout.ramStart.rawValue, machine.memorySize])],
            on: memory)

        try addCPUs(to: &tree, vcpuCount: machine.vcpuCount)
        let psci = try tree.addNode("psci")
        try tree.setProperties(["compatible": .strings(["arm,psci-1.0", "arm,psci-0.2"]), "method": .string("hvc")], on: psci)

        // Every interrupt below goes to the GIC: the root's interrupt-parent is its phandle (1).
        let gic = try addInterruptController(to: &tree, vcpuCount: machine.vcpuCount)
        try tree.setProperty("interrupt-parent", .phandle(try tree.addPhandle(to: gic)), on: .root)

        let timer = try tree.addNode("timer")
        try tree.setProperties(
            [
                "compatible": .strings(["arm,armv8-timer"]),
                "interrupts": .cells(AArch64Layout.timerPPIs.flatMap { [ppiType, $0, levelHigh] }),
                "always-on": .empty,
            ], on: timer)

        try addUART(to: &tree)
        for slot in 0..<machine.virtioDeviceCount {
            try addVirtioMMIO(to: &tree, slot: slot)
        }

        let blob = try tree.finish()
        guard UInt64(blob.bytes.count) <= AArch64Layout.deviceTreeMaxSize else {
            throw FDTError("fit the device tree in \(AArch64Layout.deviceTreeMaxSize >> 20) MiB", code: FDT_ERR_NOSPACE)
        }
        return blob
    }

    // MARK: - Nodes

    private static func addInterruptController(to tree: inout DeviceTreeBuilder, vcpuCount: Int) throws(FDTError)
        -> DeviceTreeNode
    {
        let gic = try tree.addNode("intc@" + unitAddress(AArch64Layout.gicDistributorAddress))
        try tree.setProperties(
            [
                "compatible": .strings(["arm,gic-v3"]),
                "#interrupt-cells": .u32(3),
                "interrupt-controller": .empty,
                "reg": .cells(splitting: [
                    AArch64Layout.gicDistributorAddress.rawValue, AArch64Layout.gicDistributorSize,
                    AArch64Layout.gicRedistributorAddress.rawValue, AArch64Layout.gicRedistributorSize(vcpuCount: vcpuCount),
                ]),
                // No child nodes (no ITS), but an interrupt provider states its address cells
                // for interrupt-map parsing: 0, as dtc expects.
                "#address-cells": .u32(0),
            ], on: gic)
        return gic
    }

    private static func addChosen(to tree: inout DeviceTreeBuilder, machine: AArch64MachineDescription) throws(FDTError) {
        let chosen = try tree.addNode("chosen")
        try tree.setProperties(["bootargs": .string(machine.commandLine), "stdout-path": .string(uartPath)], on: chosen)
        if let size = machine.initrdSize, let start = machine.initrdAddress {
            try tree.setProperties(
                ["linux,initrd-start": .u64(start.rawValue), "linux,initrd-end": .u64(start.rawValue + size)], on: chosen)
        }
    }

    private static func addCPUs(to tree: inout DeviceTreeBuilder, vcpuCount: Int) throws(FDTError) {
        let cpus = try tree.addNode("cpus")
        // MPIDRs of up to 512 vCPUs fit in Aff0-Aff2, so one address cell.
        try tree.setProperties(["#address-cells": .u32(1), "#size-cells": .u32(0)], on: cpus)
        for index in 0..<vcpuCount {
            let mpidr = mpidr(vcpu: index)
            let cpu = try tree.addNode("cpu@" + String(mpidr, radix: 16), under: cpus)
            try tree.setProperties(
                [
                    "device_type": .string("cpu"),
                    "compatible": .strings(["arm,arm-v8"]),
                    "enable-method": .string("psci"),
                    "reg": .u32(UInt32(mpidr)),
                ], on: cpu)
        }
    }

    private static func addUART(to tree: inout DeviceTreeBuilder) throws(FDTError) {
        let uart = try tree.addNode(String(uartPath.dropFirst()))
        try tree.setProperties(
            [
                "compatible": .strings(["ns16550a"]),
                "reg": .cells(splitting: [AArch64Layout.uartAddress.rawValue, AArch64Layout.uartSize]),
                "clock-frequency": .u32(AArch64Layout.uartClockFrequency),
                // Edge-triggered: the VMM signals device interrupts as pulses (irqfd), and the
                // 8250 driver copes with edge interrupts (it was written for ISA).
                "interrupts": .cells([spiType, AArch64Layout.uartSPI, edgeRising]),
            ], on: uart)
    }

    private static func addVirtioMMIO(to tree: inout DeviceTreeBuilder, slot: Int) throws(FDTError) {
        let (address, spi) = AArch64Layout.virtioMMIOSlot(slot)
        let device = try tree.addNode("virtio-mmio@" + unitAddress(address))
        try tree.setProperties(
            [
                "compatible": .strings(["virtio,mmio"]),
                "reg": .cells(splitting: [address.rawValue, AArch64Layout.virtioMMIOSize]),
                "interrupts": .cells([spiType, spi, edgeRising]),
                "dma-coherent": .empty,
            ], on: device)
    }

    /// A unit address as the spec writes it: lowercase hex, no `0x`, no leading zeros.
    private static func unitAddress(_ address: GuestAddress) -> String { String(address.rawValue, radix: 16) }
}
