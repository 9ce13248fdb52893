import CHost
import SwiftletHost
import SwiftletMemory

/// The register file of a virtio-mmio device, version 2 (virtio 1.2, 4.2.2), as a plain value.
///
/// Guest accesses go in through `read(offset:)` / `write(offset:value:)` (32-bit registers,
/// offsets below 0x100) and `readConfiguration(offset:count:)` (the device configuration space
/// from 0x100); out come register values and `WriteEffect`s that the transport carries out
/// (a queue notification, a reset, an activation). It knows nothing of threads, memory or VMs,
/// so every rule is testable on its own, and it is `Codable` for snapshots.
///
///     0x000 MagicValue "virt"   0x004 Version 2        0x008 DeviceID        0x00c VendorID
///     0x010 DeviceFeatures      0x014 DeviceFeaturesSel
///     0x020 DriverFeatures      0x024 DriverFeaturesSel
///     0x030 QueueSel            0x034 QueueNumMax      0x038 QueueNum        0x044 QueueReady
///     0x050 QueueNotify         0x060 InterruptStatus  0x064 InterruptACK    0x070 Status
///     0x080/0x084 QueueDesc     0x090/0x094 QueueDriver (available ring)
///     0x0a0/0x0a4 QueueDevice (used ring)              0x0ac SHMSel, 0x0b0-0x0bc SHM len/base
///     0x0c0 QueueReset          0x0fc ConfigGeneration 0x100+ device configuration
public struct VirtioMMIORegisters: Equatable, Codable, Sendable {
    /// MagicValue: 0x74726976, the bytes "virt" read as a little-endian word.
    public static let magic: UInt32 = 0x7472_6976  // "virt"
    /// Version: 2, the virtio 1.x register layout (1 is the legacy interface, which Swiftlet lacks).
    public static let version: UInt32 = 2
    /// "SWLT" (as the MMIO test device); drivers do not look at it.
    public static let vendorID: UInt32 = 0x5357_4C54
    /// The window a device occupies on the MMIO bus (registers and configuration space).
    public static let windowSize: UInt64 = 0x1000
    /// Where the device configuration space starts within the window.
    public static let configurationOffset: UInt64 = 0x100

    /// Register offsets.
    public enum Offset {
        /// MagicValue (R): `VirtioMMIORegisters.magic`.
        public static let magic: UInt64 = 0x000
        /// Version (R): `VirtioMMIORegisters.version`.
        public static let version: UInt64 = 0x004
        /// DeviceID (R): the virtio device type; 0 would mean no device.
        public static let deviceID: UInt64 = 0x008
        /// VendorID (R): `VirtioMMIORegisters.vendorID`.
        public static let vendorID: UInt64 = 0x00C
        /// DeviceFeatures (R): 32 of the offered feature bits, the word chosen by DeviceFeaturesSel.
        public static let deviceFeatures: UInt64 = 0x010
        /// DeviceFeaturesSel (W): which word DeviceFeatures shows (0 for bits 0-31, 1 for bits 32-63).
        public static let deviceFeaturesSelect: UInt64 = 0x014
        /// DriverFeatures (W): 32 of the accepted feature bits, the word chosen by DriverFeaturesSel.
        public static let driverFeatures: UInt64 = 0x020
        /// DriverFeaturesSel (W): which word a DriverFeatures write sets (0 for bits 0-31, 1 for bits 32-63).
        public static let driverFeaturesSelect: UInt64 = 0x024
        /// QueueSel (W): the queue, from 0, that the Queue* registers below refer to.
        public static let queueSelect: UInt64 = 0x030
        /// QueueNumMax (R): the largest size the selected queue takes; 0 if it does not exist.
        public static let queueSizeMaximum: UInt64 = 0x034
        /// QueueNum (W): the size, in descriptors, the driver chose for the selected queue.
        public static let queueSize: UInt64 = 0x038
        /// QueueReady (RW): 1 enables the selected queue; reads whether it is enabled.
        public static let queueReady: UInt64 = 0x044
        /// QueueNotify (W): the driver tells the device that a queue, given by index, has new buffers.
        public static let queueNotify: UInt64 = 0x050
        /// InterruptStatus (R): why the device interrupted (`VirtioInterruptBit`).
        public static let interruptStatus: UInt64 = 0x060
        /// InterruptACK (W): clears the InterruptStatus bits written as 1.
        public static let interruptAcknowledge: UInt64 = 0x064
        /// Status (RW): the device status bits (`VirtioDeviceStatus`); writing 0 resets the device.
        public static let status: UInt64 = 0x070
        /// QueueDescLow (W): bits 0-31 of the selected queue's descriptor table address.
        public static let queueDescriptorLow: UInt64 = 0x080
        /// QueueDescHigh (W): bits 32-63 of the selected queue's descriptor table address.
        public static let queueDescriptorHigh: UInt64 = 0x084
        /// QueueDriverLow (W): bits 0-31 of the selected queue's available (driver) ring address.
        public static let queueDriverLow: UInt64 = 0x090
        /// QueueDriverHigh (W): bits 32-63 of the selected queue's available (driver) ring address.
        public static let queueDriverHigh: UInt64 = 0x094
        /// QueueDeviceLow (W): bits 0-31 of the selected queue's used (device) ring address.
        public static let queueDeviceLow: UInt64 = 0x0A0
        /// QueueDeviceHigh (W): bits 32-63 of the selected queue's used (device) ring address.
        public static let queueDeviceHigh: UInt64 = 0x0A4
        /// SHMSel (W): the shared memory region SHMLen/SHMBase describe; Swiftlet's devices have none.
        public static let sharedMemorySelect: UInt64 = 0x0AC
        /// SHMLenLow (R): bits 0-31 of the selected region's length; all ones means no such region.
        public static let sharedMemoryLengthLow: UInt64 = 0x0B0
        /// SHMLenHigh (R): bits 32-63 of the selected region's length; all ones means no such region.
        public static let sharedMemoryLengthHigh: UInt64 = 0x0B4
        /// SHMBaseLow (R): bits 0-31 of the selected region's guest address.
        public static let sharedMemoryBaseLow: UInt64 = 0x0B8
        /// SHMBaseHigh (R): bits 32-63 of the selected region's guest address.
        public static let sharedMemoryBaseHigh: UInt64 = 0x0BC
        /// QueueReset (RW): resets the selected queue alone; needs VIRTIO_F_RING_RESET, which is not offered.
        public static let queueReset: UInt64 = 0x0C0
        /// ConfigGeneration (R): changes whenever the configuration space does, so the driver can detect
        /// a read torn by a change (2.5).
        public static let configGeneration: UInt64 = 0x0FC
    }

    /// What the driver programmed for one queue.
    public struct QueueRegisters: Equatable, Codable, Sendable {
        /// QueueNum: the size the driver chose, in descriptors; starts at `queueSizeMaximum`, and the
        /// queue becomes ready only if it is a power of two no larger.
        public var size: UInt16
        /// QueueReady: the driver enabled the queue with a valid size before DRIVER_OK.
        public var ready = false
        /// QueueDescLow/High: guest physical address of the descriptor table.
        public var descriptorTable: UInt64 = 0
        /// QueueDriverLow/High: guest physical address of the available (driver) ring.
        public var availableRing: UInt64 = 0
        /// QueueDeviceLow/High: guest physical address of the used (device) ring.
        public var usedRing: UInt64 = 0
    }

    /// What the transport must do after a register write.
    public enum WriteEffect: Equatable, Sendable {
        /// Nothing more to do: the write only changed registers, or was ignored.
        case none
        /// Signal queue `index`'s notifier (the driver wrote QueueNotify after DRIVER_OK).
        case notify(queue: Int)
        /// The driver wrote 0 to Status: reset the device and its queues.
        case reset
        /// The driver set DRIVER_OK: create the ready queues and start the device.
        case activate
    }

    // Identity, fixed when the device is created.
    /// DeviceID: the virtio device type (`VirtioDeviceType`).
    public let deviceID: UInt32
    /// DeviceFeatures: every feature bit the device offers, read 32 bits at a time.
    public let offeredFeatures: UInt64
    /// QueueNumMax: the largest size of every queue, in descriptors.
    public let queueSizeMaximum: UInt16
    /// The device configuration space.
    public private(set) var configuration: [UInt8]

    // Driver-visible state.
    /// DeviceFeaturesSel as last written; words other than 0 and 1 read as 0.
    public private(set) var deviceFeaturesSelect: UInt32 = 0
    /// DriverFeaturesSel as last written; DriverFeatures writes to words other than 0 and 1 are ignored.
    public private(set) var driverFeaturesSelect: UInt32 = 0
    /// The feature bits the driver wrote (accepted or not).
    public private(set) var driverFeatures: UInt64 = 0
    /// QueueSel as last written; a queue that does not exist reads 0 and ignores writes.
    public private(set) var queueSelect: UInt32 = 0
    /// The registers of each queue, indexed by queue number.
    public private(set) var queues: [QueueRegisters]
    /// Status: the `VirtioDeviceStatus` bits the driver set, plus DEVICE_NEEDS_RESET set by the device.
    public private(set) var status: UInt32 = 0
    /// InterruptStatus: the pending `VirtioInterruptBit`s. The transport sets `usedBuffer`,
    /// `updateConfiguration` and `setNeedsReset` set `configurationChange`; InterruptACK clears them.
    public internal(set) var interruptStatus: UInt32 = 0
    /// ConfigGeneration: bumped (wrapping) by every `updateConfiguration`; kept across a reset.
    public private(set) var configGeneration: UInt32 = 0

    /// A device in its reset state.
    public init(deviceID: UInt32, offeredFeatures: UInt64, queueCount: Int, queueSizeMaximum: UInt16, configuration: [UInt8]) {
        self.deviceID = deviceID
        self.offeredFeatures = offeredFeatures
        self.queueSizeMaximum = queueSizeMaximum
        self.configuration = configuration
        self.queues = Array(repeating: QueueRegisters(size: queueSizeMaximum), count: queueCount)
    }

    /// The negotiated features, once FEATURES_OK is set.
    public var negotiatedFeatures: UInt64 { status & VirtioDeviceStatus.featuresOK != 0 ? driverFeatures : 0 }

    /// The driver has set DRIVER_OK and the device is not asking for a reset.
    public var isLive: Bool {
        status & VirtioDeviceStatus.driverOK != 0 && status & VirtioDeviceStatus.deviceNeedsReset == 0
    }

    // MARK: Registers

    /// The 32-bit register at `offset` (below 0x100). Write-only and unknown registers read 0;
    /// shared-memory regions do not exist (length and base read all ones).
    public func read(offset: UInt64) -> UInt32 {
        switch offset {
        case Offset.magic: Self.magic
        case Offset.version: Self.version
        case Offset.deviceID: deviceID
        case Offset.vendorID: Self.vendorID
        case Offset.deviceFeatures:
            switch deviceFeaturesSelect {
            case 0: UInt32(truncatingIfNeeded: offeredFeatures)
            case 1: UInt32(truncatingIfNeeded: offeredFeatures >> 32)
            default: 0
            }
        case Offset.queueSizeMaximum: selectedQueue == nil ? 0 : UInt32(queueSizeMaximum)
        case Offset.queueReady: selectedQueue.map { queues[$0].ready ? 1 : 0 } ?? 0
        case Offset.interruptStatus: interruptStatus
        case Offset.status: status
        case Offset.sharedMemoryLengthLow, Offset.sharedMemoryLengthHigh, Offset.sharedMemoryBaseLow,
            Offset.sharedMemoryBaseHigh:
            0xFFFF_FFFF
        case Offset.configGeneration: configGeneration
        default: 0
        }
    }

    /// The driver writes `value` to the 32-bit register at `offset` (below 0x100).
    public mutating func write(offset: UInt64, value: UInt32) -> WriteEffect {
        switch offset {
        case Offset.deviceFeaturesSelect:
            deviceFeaturesSelect = value
        case Offset.driverFeaturesSelect:
            driverFeaturesSelect = value
        case Offset.driverFeatures:
            // Features are chosen between DRIVER and FEATURES_OK; later writes cannot change them.
            guard status & VirtioDeviceStatus.driver != 0, status & VirtioDeviceStatus.featuresOK == 0 else { break }
            switch driverFeaturesSelect {
            case 0: driverFeatures = driverFeatures & 0xFFFF_FFFF_0000_0000 | UInt64(value)
            case 1: driverFeatures = driverFeatures & 0xFFFF_FFFF | UInt64(value) << 32
            default: break
            }
        case Offset.queueSelect:
            queueSelect = value
        case Offset.queueSize:
            modifySelectedQueue { $0.size = UInt16(truncatingIfNeeded: min(value, 0xFFFF)) }
        case Offset.queueReady:
            // A queue is enabled before DRIVER_OK, with a valid size; stopping one on its own
            // needs VIRTIO_F_RING_RESET, which is not offered, so later writes are ignored.
            guard status & VirtioDeviceStatus.driverOK == 0, let index = selectedQueue else { break }
            if value == 1 {
                let size = queues[index].size
                queues[index].ready = size > 0 && size & (size - 1) == 0 && size <= queueSizeMaximum
            } else if value == 0 {
                queues[index].ready = false
            }
        case Offset.queueNotify:
            // VIRTIO_F_NOTIFICATION_DATA is not offered: the value is the queue index.
            guard isLive, value < UInt32(queues.count), queues[Int(value)].ready else { break }
            return .notify(queue: Int(value))
        case Offset.interruptAcknowledge:
            interruptStatus &= ~value
        case Offset.status:
            return writeStatus(value)
        case Offset.queueDescriptorLow: modifySelectedQueue { $0.descriptorTable.setLow(value) }
        case Offset.queueDescriptorHigh: modifySelectedQueue { $0.descriptorTable.setHigh(value) }
        case Offset.queueDriverLow: modifySelectedQueue { $0.availableRing.setLow(value) }
        case Offset.queueDriverHigh: modifySelectedQueue { $0.availableRing.setHigh(value) }
        case Offset.queueDeviceLow: modifySelectedQueue { $0.usedRing.setLow(value) }
        case Offset.queueDeviceHigh: modifySelectedQueue { $0.usedRing.setHigh(value) }
        default:
            // Read-only registers, SHMSel (no regions), QueueReset (not offered), unknown offsets.
            break
        }
        return .none
    }

    /// The status register's state machine (virtio 1.2, 3.1.1). Writing 0 resets. Otherwise
    /// the driver only adds bits, in order: ACKNOWLEDGE, DRIVER, FEATURES_OK (kept only when the
    /// accepted features are a subset of the offered ones and include VERSION_1), DRIVER_OK
    /// (only after FEATURES_OK). FAILED may be added at any time. A write that clears a bit or
    /// skips a step is ignored. DEVICE_NEEDS_RESET belongs to the device.
    private mutating func writeStatus(_ value: UInt32) -> WriteEffect {
        if value == 0 { return .reset }
        let old = status
        var new = value & ~VirtioDeviceStatus.deviceNeedsReset | old & VirtioDeviceStatus.deviceNeedsReset
        guard new & old == old else { return .none }
        let added = new & ~old
        if added & VirtioDeviceStatus.driver != 0, new & VirtioDeviceStatus.acknowledge == 0 { return .none }
        if added & VirtioDeviceStatus.featuresOK != 0 {
            guard new & VirtioDeviceStatus.driver != 0 else { return .none }
            let acceptable = driverFeatures & ~offeredFeatures == 0 && driverFeatures & VirtioFeature.version1 != 0
            if !acceptable { new &= ~VirtioDeviceStatus.featuresOK }
        }
        if added & VirtioDeviceStatus.driverOK != 0 {
            guard new & VirtioDeviceStatus.featuresOK != 0 else { return .none }
        }
        status = new
        let activates =
            added & VirtioDeviceStatus.driverOK != 0 && new & VirtioDeviceStatus.failed == 0
            && new & VirtioDeviceStatus.deviceNeedsReset == 0
        return activates ? .activate : .none
    }

    // MARK: Configuration space

    /// `count` (1, 2, 4 or 8) bytes of the configuration space at `offset` from its start,
    /// little-endian; bytes past its end read 0.
    public func readConfiguration(offset: UInt64, count: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<min(count, 8) {
            let (index, overflow) = offset.addingReportingOverflow(UInt64(i))
            if !overflow, index < UInt64(configuration.count) {
                value |= UInt64(configuration[Int(index)]) << (8 * UInt64(i))
            }
        }
        return value
    }

    /// Replaces the configuration space (the device changed it): bumps the generation and sets
    /// the configuration-change interrupt bit.
    public mutating func updateConfiguration(_ bytes: [UInt8]) {
        configuration = bytes
        configGeneration &+= 1
        interruptStatus |= VirtioInterruptBit.configurationChange
    }

    // MARK: Device-side changes

    /// Back to the reset state (Status = 0), keeping the identity and configuration.
    public mutating func reset() {
        self = VirtioMMIORegisters(
            deviceID: deviceID, offeredFeatures: offeredFeatures, queueCount: queues.count,
            queueSizeMaximum: queueSizeMaximum, configuration: configuration, generation: configGeneration)
    }

    private init(
        deviceID: UInt32, offeredFeatures: UInt64, queueCount: Int, queueSizeMaximum: UInt16, configuration: [UInt8],
        generation: UInt32
    ) {
        self.init(
            deviceID: deviceID, offeredFeatures: offeredFeatures, queueCount: queueCount,
            queueSizeMaximum: queueSizeMaximum, configuration: configuration)
        configGeneration = generation
    }

    /// The device cannot go on until the driver resets it: sets DEVICE_NEEDS_RESET and the
    /// configuration-change interrupt bit (4.2.3.4: the device notifies as for a config change).
    public mutating func setNeedsReset() {
        status |= VirtioDeviceStatus.deviceNeedsReset
        interruptStatus |= VirtioInterruptBit.configurationChange
    }

    private var selectedQueue: Int? { queueSelect < UInt32(queues.count) ? Int(queueSelect) : nil }

    /// Applies `change` to the selected queue unless it does not exist or is already enabled
    /// (the driver must not reprogram an enabled queue).
    private mutating func modifySelectedQueue(_ change: (inout QueueRegisters) -> Void) {
        guard let index = selectedQueue, !queues[index].ready else { return }
        change(&queues[index])
    }
}

extension UInt64 {
    fileprivate mutating func setLow(_ value: UInt32) { self = self & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
    fileprivate mutating func setHigh(_ value: UInt32) { self = self & 0xFFFF_FFFF | UInt64(value) << 32 }
}
