import CHost
import Glibc
import SwiftletHost
import SwiftletMemory

/// A virtio network device (virtio 1.2, 5.1) over a `NetworkBackend` (a tap).
///
/// Two queues: receive (0) and transmit (1), no control queue, no multi-queue, no mergeable
/// receive buffers. Every frame carries a 12-byte `VirtioNetHeader` in front, and so does
/// every frame on the tap, so frames move between guest memory and the tap with one readv or
/// writev each, without copying the frame.
///
/// - Receive. A chain the driver offers gets the next frame the tap has: readv straight into
///   its writable buffers, followed by a 64 KiB overflow buffer of the device's own. No frame
///   waiting: the chain is left for later (`.deferred`) and the machine goes on watching the
///   tap. A frame that reached the overflow buffer was larger than the chain: it is dropped and
///   counted, and the chain takes the next one. (A tap truncates a frame to the buffers it is
///   given and, depending on the kernel version, returns the full or the truncated length; the
///   overflow buffer detects both.) The header's offloads are checked against what the driver
///   accepted and `num_buffers` set to 1.
/// - Transmit. Each chain is one frame: its header is checked against the negotiated features
///   (a copy goes to the tap, so the guest cannot change it in between), the frame goes to the
///   tap with writev, and the chain is returned with length 0. Frames that cannot be sent are
///   counted and returned all the same.
///
/// Rate limits (`receiveLimiter`, `transmitLimiter`): a frame costs one operation and its bytes
/// without the virtio-net header. A transmit chain the limiter refuses stays in the ring
/// (`.throttled`). On receive the frame's size is known only once it has been read into the
/// driver's buffers, so the device reads only while the limiter has an operation and is not in
/// debt, and charges the frame's bytes after the read (possibly into debt, which the following
/// frames wait for): over time the rate is the limit's all the same.
///
/// The receive offloads the driver accepted are applied to the tap (TUNSETOFFLOAD) on the
/// event loop before the first read after activation: `activate` and `reset` run on a vCPU
/// thread, which never touches the tap.
public struct VirtioNet: VirtioDevice {
    /// Index of receiveq1 (5.1.2): buffers the device fills with frames from the tap.
    public static let receiveQueue = 0
    /// Index of transmitq1 (5.1.2): frames the driver sends to the tap.
    public static let transmitQueue = 1
    /// The largest frame (without the virtio-net header) a driver may send: 64 KiB of IP
    /// packet, segmented or not, plus an Ethernet header and a VLAN tag.
    public static let maximumFrameLength = 65_535 + 14 + 4
    /// The Ethernet header: the shortest frame.
    public static let minimumFrameLength = 14
    /// Frames dropped as too large for one receive chain before the device lets other work run.
    static let dropsPerChainLimit = 64

    /// Feature bits of virtio-net (5.1.3).
    public enum Feature {
        /// The device completes partial checksums of frames the driver sends.
        public static let checksum: UInt64 = 1 << 0
        /// The driver takes frames with partial checksums.
        public static let guestChecksum: UInt64 = 1 << 1
        /// VIRTIO_NET_F_MAC: the configuration space holds the device's MAC address.
        public static let mac: UInt64 = 1 << 5
        /// VIRTIO_NET_F_GUEST_TSO4: the driver takes TCP over IPv4 frames larger than the MTU, unsegmented.
        public static let guestTSO4: UInt64 = 1 << 7
        /// VIRTIO_NET_F_GUEST_TSO6: the driver takes TCP over IPv6 frames larger than the MTU, unsegmented.
        public static let guestTSO6: UInt64 = 1 << 8
        /// VIRTIO_NET_F_GUEST_ECN: the driver takes such TCP frames with ECN bits.
        public static let guestECN: UInt64 = 1 << 9
        /// VIRTIO_NET_F_HOST_TSO4: the driver may send TCP over IPv4 frames larger than the MTU
        /// for the device (the host) to segment.
        public static let hostTSO4: UInt64 = 1 << 11
        /// VIRTIO_NET_F_HOST_TSO6: the driver may send TCP over IPv6 frames larger than the MTU
        /// for the device (the host) to segment.
        public static let hostTSO6: UInt64 = 1 << 12
        /// VIRTIO_NET_F_HOST_ECN: the driver may send such TCP frames with ECN bits.
        public static let hostECN: UInt64 = 1 << 13
        /// The configuration space has a link status.
        public static let status: UInt64 = 1 << 16
    }

    /// `VIRTIO_NET_S_LINK_UP` in the configuration's status field.
    public static let statusLinkUp: UInt16 = 1

    /// What the device is, as a plain value.
    public struct Settings: Equatable, Codable, Sendable {
        /// The guest's address, in the configuration's `mac` field.
        public var mac: MACAddress
        /// VIRTIO_NET_S_LINK_UP in the configuration's `status` field; false once the tap went away.
        public var linkUp: Bool
        /// The offloads offered to the driver (in both directions): what the tap supports, or
        /// none when the configuration turned them off.
        public var offloads: NetworkOffloads
        /// The largest size the driver may give either queue, in descriptors.
        public var queueSizeMaximum: UInt16

        /// The default `queueSizeMaximum`, in descriptors.
        public static let defaultQueueSize: UInt16 = 256

        /// Settings with `offloads` made `consistent` (segmentation only with checksums, ECN only with
        /// segmentation).
        public init(mac: MACAddress, linkUp: Bool = true, offloads: NetworkOffloads, queueSizeMaximum: UInt16 = defaultQueueSize)
        {
            self.mac = mac
            self.linkUp = linkUp
            self.offloads = offloads.consistent
            self.queueSizeMaximum = queueSizeMaximum
        }
    }

    /// Frames moved and frames dropped, by reason.
    public struct Statistics: Equatable, Codable, Sendable {
        /// Receive: frames delivered to the driver.
        public var receivedFrames = 0
        /// Receive: bytes of the delivered frames, without the virtio-net header.
        public var receivedBytes: UInt64 = 0
        /// Transmit: frames the tap accepted.
        public var transmittedFrames = 0
        /// Transmit: bytes of the accepted frames, without the virtio-net header.
        public var transmittedBytes: UInt64 = 0
        /// Receive: frames read from the tap that were larger than the driver's chain.
        public var receiveTooLarge = 0
        /// Receive: frames with an offload (partial checksum, segmentation) the driver did not
        /// accept; possible only for frames queued in the tap before the offloads changed.
        public var receiveOffloadRefused = 0
        /// Receive: chains too short for the header, returned empty (no frame lost).
        public var receiveChainTooSmall = 0
        /// Receive: tap reads that failed.
        public var receiveErrors = 0
        /// Transmit: chains without a header and an Ethernet header, or longer than
        /// `maximumFrameLength`.
        public var transmitMalformed = 0
        /// Transmit: headers asking for an offload that was not negotiated.
        public var transmitOffloadRefused = 0
        /// Transmit: tap writes that failed (the interface is down, or refused the frame).
        public var transmitErrors = 0
        /// Receive: times the device stopped reading the tap while frames were waiting in it,
        /// because the driver had no receive buffers (flow control, not a drop).
        public var receiveStalls = 0
        /// The errno of the last failed tap read or write.
        public var lastBackendErrno: Int32?

        /// Every counter at zero and no errno.
        public init() {}

        /// Every frame dropped, for whatever reason.
        public var droppedFrames: Int {
            receiveTooLarge + receiveOffloadRefused + transmitMalformed + transmitOffloadRefused + transmitErrors
        }
    }

    /// The device's properties; only the link status changes after creation.
    public private(set) var settings: Settings
    /// Where frames go and come from (the tap).
    public let backend: any NetworkBackend
    /// The features the driver accepted (0 until activation and after a reset).
    public private(set) var negotiatedFeatures: UInt64 = 0
    /// Frames moved and dropped since the device was created; a reset does not clear them.
    public private(set) var statistics = Statistics()
    /// A tap read failed with something other than "no frame": the machine stops watching it.
    public private(set) var backendFailure: SystemError?
    /// Receive offloads to switch the tap to before its next read.
    private var pendingReceiveOffloads: NetworkOffloads?
    /// Scratch I/O vectors, reused for every frame.
    private var vectors: [iovec] = []
    /// Where the part of a received frame that does not fit the driver's chain goes.
    private let overflow = ReceiveOverflowBuffer()
    /// Limits on frames delivered to the guest; nil: none. Host configuration, not saved with the
    /// device's state.
    public var receiveLimiter: RateLimiter?
    /// Limits on frames the guest sends; nil: none. Host configuration, not saved with the
    /// device's state.
    public var transmitLimiter: RateLimiter?

    /// A device with address `mac` over `backend`; `offloads: false` offers none.
    public init(
        backend: any NetworkBackend, mac: MACAddress, offloads: Bool = true, queueSizeMaximum: UInt16 = Settings.defaultQueueSize
    ) {
        self.backend = backend
        self.settings = Settings(
            mac: mac, offloads: offloads ? backend.supportedOffloads : [], queueSizeMaximum: queueSizeMaximum)
        vectors.reserveCapacity(Int(queueSizeMaximum) + 1)
    }

    // MARK: VirtioDevice

    /// `VirtioDeviceType.network` (5.1.1).
    public var deviceType: UInt32 { VirtioDeviceType.network }
    /// Two, `receiveQueue` and `transmitQueue`: no control queue, no multi-queue.
    public var queueCount: Int { 2 }
    /// `settings.queueSizeMaximum`.
    public var maximumQueueSize: UInt16 { settings.queueSizeMaximum }

    /// VERSION_1, indirect descriptors, event index, MAC and STATUS, plus for each offload in
    /// `settings.offloads` its pair of bits: CSUM and GUEST_CSUM, HOST_ and GUEST_TSO4, TSO6, ECN.
    public var offeredFeatures: UInt64 {
        var features = VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors | VirtioFeature.ringEventIndex
        features |= Feature.mac | Feature.status
        let offloads = settings.offloads
        if offloads.contains(.checksum) { features |= Feature.checksum | Feature.guestChecksum }
        if offloads.contains(.tcp4) { features |= Feature.hostTSO4 | Feature.guestTSO4 }
        if offloads.contains(.tcp6) { features |= Feature.hostTSO6 | Feature.guestTSO6 }
        if offloads.contains(.tcpECN) { features |= Feature.hostECN | Feature.guestECN }
        return features
    }

    /// `struct virtio_net_config` up to `max_virtqueue_pairs`: mac[6], status (LINK_UP),
    /// max_virtqueue_pairs (1).
    public var configurationSpace: [UInt8] {
        var bytes = settings.mac.octets
        let status = settings.linkUp ? Self.statusLinkUp : 0
        withUnsafeBytes(of: status.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt16(1).littleEndian) { bytes += $0 }
        return bytes
    }

    /// The tap's receive offloads that match what a driver accepted.
    public static func receiveOffloads(for features: UInt64) -> NetworkOffloads {
        var offloads: NetworkOffloads = []
        if features & Feature.guestChecksum != 0 { offloads.insert(.checksum) }
        if features & Feature.guestTSO4 != 0 { offloads.insert(.tcp4) }
        if features & Feature.guestTSO6 != 0 { offloads.insert(.tcp6) }
        if features & Feature.guestECN != 0 { offloads.insert(.tcpECN) }
        return offloads.consistent
    }

    /// Records the accepted features; the matching receive offloads (limited to those offered) are
    /// applied to the tap before its next read, on the event loop.
    public mutating func activate(features: UInt64) {
        negotiatedFeatures = features
        pendingReceiveOffloads = Self.receiveOffloads(for: features).intersection(settings.offloads)
    }

    /// Forgets the negotiated features; the tap's receive offloads are switched off before its next read.
    public mutating func reset() {
        negotiatedFeatures = 0
        pendingReceiveOffloads = []
    }

    /// On the receive queue, fills the chain with the next frame from the tap (`.deferred` when none
    /// is waiting); on the transmit queue, sends the chain's frame and returns it with length 0. A chain
    /// on any other queue is returned unused.
    public mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        switch queue {
        case Self.receiveQueue: receive(into: chain, memory: memory)
        case Self.transmitQueue: transmit(chain, memory: memory)
        default: .used(0)
        }
    }

    /// The link status the guest sees changed (the machine's tap went away, or came back).
    mutating func setLinkUp(_ up: Bool) { settings.linkUp = up }

    /// Frames are waiting in the tap and the driver has no receive buffers.
    package mutating func countReceiveStall() { statistics.receiveStalls += 1 }

    // MARK: Receive

    private mutating func receive(into chain: DescriptorChain, memory: GuestMemory) -> VirtioChainResult {
        guard chain.writableLength >= UInt64(VirtioNetHeader.size) else {
            statistics.receiveChainTooSmall += 1
            return .used(0)
        }
        guard backendFailure == nil else { return .deferred }
        if let wait = receiveLimiter?.waitTime(bytes: 0, operations: 1), wait > 0 {
            return .throttled(nanoseconds: wait)
        }
        if let offloads = pendingReceiveOffloads {
            do {
                try backend.setReceiveOffloads(offloads)
                pendingReceiveOffloads = nil
            } catch {
                // Frames keep arriving with the old offloads; those the driver cannot take are
                // refused one by one below.
                statistics.lastBackendErrno = error.errno
            }
        }
        vectors.removeAll(keepingCapacity: true)
        _ = chain.forEachPiece(writable: true, offset: 0, count: Int(chain.writableLength), memory: memory) { pointer, _, count in
            vectors.append(iovec(iov_base: pointer, iov_len: count))
        }
        vectors.append(iovec(iov_base: overflow.bytes.baseAddress, iov_len: overflow.bytes.count))
        let backend = self.backend
        for _ in 0..<Self.dropsPerChainLimit {
            let received: Int?
            do {
                received = try vectors.withUnsafeBufferPointer { (vectors) throws(SystemError) in
                    try backend.receive(into: vectors)
                }
            } catch {
                statistics.receiveErrors += 1
                statistics.lastBackendErrno = error.errno
                backendFailure = error
                return .deferred
            }
            guard let length = received else { return .deferred }
            guard UInt64(length) <= chain.writableLength else {
                statistics.receiveTooLarge += 1
                continue
            }
            guard length >= VirtioNetHeader.size else {
                statistics.receiveErrors += 1
                continue
            }
            var raw = (UInt64(0), UInt32(0))
            withUnsafeMutableBytes(of: &raw) { bytes in
                _ = chain.forEachPiece(writable: true, offset: 0, count: VirtioNetHeader.size, memory: memory) {
                    pointer, done, count in
                    (bytes.baseAddress! + done).copyMemory(from: pointer, byteCount: count)
                }
            }
            let header = withUnsafeBytes(of: &raw) { VirtioNetHeader($0) }
            switch header.forReceive(features: negotiatedFeatures) {
            case .failure:
                statistics.receiveOffloadRefused += 1
                continue
            case .success(let fixed):
                withUnsafeMutableBytes(of: &raw) { bytes in
                    fixed.encode(into: bytes)
                    chain.copyToWritable(
                        at: 0, from: UnsafeRawBufferPointer(rebasing: bytes[0..<VirtioNetHeader.size]), memory: memory)
                }
            }
            statistics.receivedFrames += 1
            statistics.receivedBytes += UInt64(length - VirtioNetHeader.size)
            receiveLimiter?.charge(bytes: UInt64(length - VirtioNetHeader.size), operations: 1)
            return .used(UInt32(length))
        }
        // Many oversized frames in a row: give other work a turn; the tap is still readable.
        return .deferred
    }

    // MARK: Transmit

    private mutating func transmit(_ chain: DescriptorChain, memory: GuestMemory) -> VirtioChainResult {
        let frameLength = chain.readableLength &- UInt64(VirtioNetHeader.size)
        guard chain.readableLength >= UInt64(VirtioNetHeader.size + Self.minimumFrameLength),
            frameLength <= UInt64(Self.maximumFrameLength)
        else {
            statistics.transmitMalformed += 1
            return .used(0)
        }
        if case .throttled(let nanoseconds) = transmitLimiter?.consume(bytes: frameLength, operations: 1) {
            return .throttled(nanoseconds: nanoseconds)
        }
        var raw = (UInt64(0), UInt32(0))
        _ = withUnsafeMutableBytes(of: &raw) { chain.copyReadable(from: 0, into: $0, memory: memory) }
        let header: VirtioNetHeader
        switch withUnsafeBytes(of: &raw, { VirtioNetHeader($0) }).forTransmit(features: negotiatedFeatures) {
        case .failure:
            statistics.transmitOffloadRefused += 1
            return .used(0)
        case .success(let checked): header = checked
        }
        let backend = self.backend
        let sent = withUnsafeMutableBytes(of: &raw) { bytes -> SystemError? in
            header.encode(into: bytes)
            vectors.removeAll(keepingCapacity: true)
            vectors.append(iovec(iov_base: bytes.baseAddress, iov_len: VirtioNetHeader.size))
            _ = chain.forEachPiece(writable: false, offset: UInt64(VirtioNetHeader.size), count: Int(frameLength), memory: memory)
            {
                pointer, _, count in
                vectors.append(iovec(iov_base: pointer, iov_len: count))
            }
            do throws(SystemError) {
                try vectors.withUnsafeBufferPointer { (vectors) throws(SystemError) in try backend.send(vectors) }
                return nil
            } catch {
                return error
            }
        }
        if let sent {
            statistics.transmitErrors += 1
            statistics.lastBackendErrno = sent.errno
        } else {
            statistics.transmittedFrames += 1
            statistics.transmittedBytes += frameLength
        }
        return .used(0)
    }
}

// MARK: - Saved state

extension VirtioNet: PersistentDevice {
    /// The device model's saved state: its settings (address, link status, offloads offered), the
    /// features the driver accepted at activation, and the frame counters.
    ///
    /// Host-side conditions are not saved: a failed tap read (`backendFailure`) belongs to the old
    /// tap, and the new tap is switched to the negotiated receive offloads before its first read.
    public struct State: Codable, Equatable, Sendable {
        /// MAC address, link status, offloads offered and queue limit.
        public var settings: Settings
        /// The features the driver accepted (0 before activation and after a reset).
        public var negotiatedFeatures: UInt64
        /// Frames moved and dropped so far.
        public var statistics: Statistics

        /// A state with these parts.
        public init(settings: Settings, negotiatedFeatures: UInt64, statistics: Statistics) {
            self.settings = settings
            self.negotiatedFeatures = negotiatedFeatures
            self.statistics = statistics
        }
    }

    /// The tap the frames go to and come from (opened again by the restoring machine).
    public typealias Resources = any NetworkBackend

    /// The settings, negotiated features and statistics now.
    public func saveState() -> State {
        State(settings: settings, negotiatedFeatures: negotiatedFeatures, statistics: statistics)
    }

    /// A device in `state` over `backend`, which is switched to the negotiated receive offloads
    /// before its first read. Throws when `backend` cannot deliver an offload the saved device
    /// offered (the driver may have accepted it), or a field holds a value the device never has (a
    /// MAC address wider than 48 bits, inconsistent offloads, features that were not offered, a
    /// queue size limit that is not a power of two, a negative counter).
    public static func restore(from state: State, with backend: any NetworkBackend) throws(DeviceRestoreError) -> VirtioNet {
        let check = StateValidator(device: "virtio-net")
        let settings = state.settings
        try check.bits(settings.mac.rawValue, allowed: 0xFFFF_FFFF_FFFF, "settings.mac")
        let offloads = settings.offloads
        try check.bits(offloads.rawValue, allowed: NetworkOffloads.all.rawValue, "settings.offloads")
        try check.require(
            offloads == offloads.consistent, "settings.offloads",
            "segmentation without checksums, or ECN without segmentation")
        try check.require(
            backend.supportedOffloads.isSuperset(of: offloads), "settings.offloads",
            "\(hex(UInt64(offloads.rawValue))) were offered, but \(backend.name) supports only \(hex(UInt64(backend.supportedOffloads.rawValue)))"
        )
        try check.powerOfTwo(settings.queueSizeMaximum, "settings.queueSizeMaximum")
        try check.atMost(settings.queueSizeMaximum, Virtqueue.maximumSize, "settings.queueSizeMaximum")
        var device = VirtioNet(backend: backend, mac: settings.mac, offloads: false, queueSizeMaximum: settings.queueSizeMaximum)
        device.settings = settings
        try check.bits(state.negotiatedFeatures, allowed: device.offeredFeatures, "negotiatedFeatures")
        let s = state.statistics
        try check.nonNegative(
            [
                "receivedFrames": s.receivedFrames, "transmittedFrames": s.transmittedFrames,
                "receiveTooLarge": s.receiveTooLarge, "receiveOffloadRefused": s.receiveOffloadRefused,
                "receiveChainTooSmall": s.receiveChainTooSmall, "receiveErrors": s.receiveErrors,
                "transmitMalformed": s.transmitMalformed, "transmitOffloadRefused": s.transmitOffloadRefused,
                "transmitErrors": s.transmitErrors, "receiveStalls": s.receiveStalls,
            ], in: "statistics")
        device.negotiatedFeatures = state.negotiatedFeatures
        device.statistics = s
        device.pendingReceiveOffloads = receiveOffloads(for: state.negotiatedFeatures).intersection(offloads)
        return device
    }
}

/// The 64 KiB (plus headers) a received frame can spill into past the driver's chain: one per
/// device, allocated once.
final class ReceiveOverflowBuffer: @unchecked Sendable {
    let bytes = UnsafeMutableRawBufferPointer.allocate(
        byteCount: VirtioNet.maximumFrameLength + VirtioNetHeader.size, alignment: 64)
    deinit { bytes.deallocate() }
}
