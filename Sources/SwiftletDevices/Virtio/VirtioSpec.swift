import CHost
import SwiftletHost
import SwiftletMemory

/// Numbers from the virtio 1.2 specification that the transport, the virtqueue and the devices
/// share: feature bits, device status bits, interrupt bits and device types.
public enum VirtioFeature {
    /// Descriptors may point to a table of further descriptors (2.7.5.3).
    public static let ringIndirectDescriptors: UInt64 = 1 << 28
    /// `used_event` / `avail_event` notification suppression (2.7.7, 2.7.10).
    public static let ringEventIndex: UInt64 = 1 << 29
    /// A virtio 1.x ("modern") device; Swiftlet requires the driver to accept it.
    public static let version1: UInt64 = 1 << 32
}

/// Bits of the device status register (2.1).
public enum VirtioDeviceStatus {
    /// ACKNOWLEDGE: the guest found the device and recognised it as a virtio device.
    public static let acknowledge: UInt32 = 0x01
    /// DRIVER: the guest has a driver for the device type.
    public static let driver: UInt32 = 0x02
    /// DRIVER_OK: the driver is set up and the device may serve requests.
    public static let driverOK: UInt32 = 0x04
    /// FEATURES_OK: the driver accepted its features; the device clears it if it cannot take them (3.1.1).
    public static let featuresOK: UInt32 = 0x08
    /// Set by the device: it hit an error it cannot recover from until the driver resets it.
    public static let deviceNeedsReset: UInt32 = 0x40
    /// FAILED: the driver gave up on the device; it stays inactive until reset.
    public static let failed: UInt32 = 0x80
}

/// Bits of the interrupt status register (4.2.2).
public enum VirtioInterruptBit {
    /// The device added buffers to a used ring.
    public static let usedBuffer: UInt32 = 0x1
    /// The device configuration (or the device status, for NEEDS_RESET) changed.
    public static let configurationChange: UInt32 = 0x2
}

/// Virtio device types (5).
public enum VirtioDeviceType {
    /// virtio-net, the network device (5.1).
    public static let network: UInt32 = 1
    /// virtio-blk, the block device (5.2).
    public static let block: UInt32 = 2
    /// virtio-rng, the entropy device (5.4).
    public static let entropy: UInt32 = 4
    /// virtio-vsock, the socket device (5.10).
    public static let socket: UInt32 = 19
}
