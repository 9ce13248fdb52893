import CHost
import SwiftletHost
import SwiftletMemory

/// A virtio device as its transport (`VirtioMMIOTransport`) sees it: identity, features,
/// queues, configuration space, and a handler for one request at a time.
///
/// The transport owns the virtqueues: it takes chains from the available ring, validates them,
/// hands each well-formed chain to `handle(_:queue:memory:)` and returns it to the used ring
/// with the length the device reports. A device never sees a malformed chain, guest register
/// accesses, or threads: `handle` runs on the event-loop thread under the transport's lock
/// for this device, so a device needs no locking of its own.
///
/// A device may also leave a chain for later (`.deferred`): virtio-net does when the driver
/// offers a receive buffer and no frame is waiting. The chain stays in the available ring and
/// the transport stops serving that queue until it is asked again (`processQueue`). A device
/// with a rate limiter leaves a chain its limiter refuses in the same way (`.throttled`), saying
/// when to try again.
public protocol VirtioDevice: SendableMetatype {
    /// The virtio device type (`VirtioDeviceType`).
    var deviceType: UInt32 { get }
    /// Every feature bit the device offers, including the ring features and
    /// `VirtioFeature.version1`.
    var offeredFeatures: UInt64 { get }
    /// How many virtqueues the device has.
    var queueCount: Int { get }
    /// The largest size the driver may give a queue (a power of two).
    var maximumQueueSize: UInt16 { get }
    /// The device-specific configuration space (offset 0x100 of the MMIO window), as the
    /// little-endian bytes of the device's configuration structure.
    var configurationSpace: [UInt8] { get }

    /// The driver set DRIVER_OK having accepted `features`; requests may follow.
    mutating func activate(features: UInt64)
    /// Handles one request on queue `queue`: `.used(n)` returns the chain to the driver with
    /// `n` bytes written into its device-writable buffers (the used-ring length); `.deferred`
    /// leaves it available for later.
    mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult
    /// The driver reset the device (no request is in progress).
    mutating func reset()
}

/// What a device did with a chain (`VirtioDevice.handle`).
public enum VirtioChainResult: Equatable, Sendable {
    /// Done: the chain goes back to the driver with this many bytes written into it.
    case used(UInt32)
    /// Not now: the chain stays in the available ring (its buffers untouched or to be
    /// overwritten) and the transport stops serving the queue until asked again.
    case deferred
    /// Not yet: the device's rate limiter refused the request, which would be allowed after this
    /// many nanoseconds. The chain stays in the available ring, untouched, and the transport stops
    /// serving the queue; the machine serves it again from a timer.
    case throttled(nanoseconds: UInt64)
}

/// Something that wakes another party: a queue's notification eventfd, or an irqfd that
/// raises the device's interrupt. Tests substitute counters.
public protocol VirtioSignal: Sendable {
    /// Wakes the other party (for an eventfd, adds 1 to its counter). Must not block; cannot fail.
    func signal()
}

/// A `VirtioSignal` backed by an eventfd (a queue notifier or an irqfd).
package struct EventFDSignal: VirtioSignal {
    let eventfd: EventFD
    /// A signal that adds to `eventfd`.
    package init(eventfd: EventFD) { self.eventfd = eventfd }
    /// Adding to an eventfd counter fails only when it would overflow, which the reader
    /// prevents by consuming it; there is nothing better to do then than drop the wake-up.
    package func signal() { try? eventfd.signal() }
}
