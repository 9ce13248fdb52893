import CHost
import Glibc
import SwiftletHost
import SwiftletMemory

/// A virtio entropy device (virtio-rng, virtio 1.2, 5.4) backed by the host's getrandom(2).
///
/// One queue (`requestq`); no feature bits of its own, no configuration space. Each chain's
/// device-writable buffers are filled with random bytes, at most `maximumRequestBytes` per
/// chain (the used length says how many), straight into guest memory.
public struct VirtioRNG: VirtioDevice {
    /// The most bytes one request gets, so a guest cannot keep the event loop busy with one
    /// huge buffer (Linux asks for at most a page at a time).
    public static let maximumRequestBytes = 64 << 10

    /// Requests served.
    public struct Statistics: Equatable, Codable, Sendable {
        /// Chains served, including those getrandom(2) failed for.
        public var requests = 0
        /// Random bytes written into guest memory.
        public var bytes: UInt64 = 0
        /// getrandom(2) failures (the request got fewer bytes, possibly none).
        public var failures = 0
    }

    /// The largest size the driver may give `requestq`, in descriptors.
    public let queueSizeMaximum: UInt16
    /// Requests served since the device was created; a reset does not clear them.
    public private(set) var statistics = Statistics()

    /// A device whose queue takes up to `queueSizeMaximum` descriptors (a power of two).
    public init(queueSizeMaximum: UInt16 = 64) {
        self.queueSizeMaximum = queueSizeMaximum
    }

    /// `VirtioDeviceType.entropy` (5.4.1).
    public var deviceType: UInt32 { VirtioDeviceType.entropy }
    /// One queue, `requestq` (5.4.2).
    public var queueCount: Int { 1 }
    /// `queueSizeMaximum`.
    public var maximumQueueSize: UInt16 { queueSizeMaximum }
    /// VERSION_1, indirect descriptors and event index; virtio-rng has no feature bits of its own (5.4.3).
    public var offeredFeatures: UInt64 {
        VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors | VirtioFeature.ringEventIndex
    }
    /// Empty: virtio-rng has no device configuration (5.4.4).
    public var configurationSpace: [UInt8] { [] }

    /// Nothing to set up: no device-specific features.
    public mutating func activate(features: UInt64) {}
    /// Nothing to do: the device keeps no state between requests (the statistics stay).
    public mutating func reset() {}

    /// Fills the chain's device-writable buffers, up to `maximumRequestBytes`, with getrandom(2)
    /// (retrying on EINTR) and returns how many bytes it wrote; after a failure the rest is left
    /// unwritten and the shorter length returned.
    public mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        let wanted = Int(min(chain.writableLength, UInt64(Self.maximumRequestBytes)))
        var failed = false
        var filled = 0
        _ = chain.forEachPiece(writable: true, offset: 0, count: wanted, memory: memory) { pointer, _, count in
            guard !failed else { return }
            var done = 0
            while done < count {
                let got = getrandom(pointer + done, count - done, 0)
                if got > 0 {
                    done += got
                } else if got < 0 && Glibc.errno == EINTR {
                    continue
                } else {
                    failed = true
                    break
                }
            }
            filled += done
        }
        statistics.requests += 1
        statistics.bytes += UInt64(filled)
        if failed { statistics.failures += 1 }
        return .used(UInt32(filled))
    }
}

// MARK: - Saved state

extension VirtioRNG: PersistentDevice {
    /// The device model's saved state: its queue limit and the request counters.
    public struct State: Codable, Equatable, Sendable {
        /// The largest size the driver may give `requestq`.
        public var queueSizeMaximum: UInt16
        /// Requests served so far.
        public var statistics: Statistics

        /// A state with these parts.
        public init(queueSizeMaximum: UInt16, statistics: Statistics) {
            self.queueSizeMaximum = queueSizeMaximum
            self.statistics = statistics
        }
    }

    /// Nothing on the host side: getrandom(2) needs no descriptor.
    public typealias Resources = Void

    /// The queue limit and statistics now.
    public func saveState() -> State { State(queueSizeMaximum: queueSizeMaximum, statistics: statistics) }

    /// A device in `state`. Throws for a queue size limit that is not a power of two up to 32768, or
    /// a negative counter.
    public static func restore(from state: State, with resources: Void) throws(DeviceRestoreError) -> VirtioRNG {
        let check = StateValidator(device: "virtio-rng")
        try check.powerOfTwo(state.queueSizeMaximum, "queueSizeMaximum")
        try check.atMost(state.queueSizeMaximum, Virtqueue.maximumSize, "queueSizeMaximum")
        let s = state.statistics
        try check.nonNegative(["requests": s.requests, "failures": s.failures], in: "statistics")
        var device = VirtioRNG(queueSizeMaximum: state.queueSizeMaximum)
        device.statistics = s
        return device
    }
}
