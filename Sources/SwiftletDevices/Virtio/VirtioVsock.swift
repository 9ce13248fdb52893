import SwiftletMemory

/// A virtio socket device (virtio-vsock, virtio 1.2, 5.10): stream connections between the guest
/// and the host, kept by `VsockConnections`.
///
/// Three queues: `rx` (0, packets for the guest), `tx` (1, packets from the guest) and `event`
/// (2, transport events). The configuration space is the guest's 64-bit CID. A tx packet is
/// validated (`VsockPacketHeader.validate`) and handed to the connections; a malformed one is
/// counted and answered with a reset. An rx buffer is filled with the next packet the
/// connections have, or deferred until there is one; the host side calls `processQueue(rx)` on
/// the transport after it changes the connections. When `transportResetPending` (after a
/// restore) the first event buffer gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, which makes the
/// guest drop every connection it had.
public struct VirtioVsock: VirtioDevice {
    /// Queue indexes.
    public enum Queue {
        /// Packets for the guest.
        public static let rx = 0
        /// Packets from the guest.
        public static let tx = 1
        /// Transport events for the guest.
        public static let event = 2
    }

    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the one event id (5.10.6.7).
    public static let transportResetEvent: UInt32 = 0

    /// The connections, which the host side drives between requests.
    public var connections: VsockConnections
    /// Whether the next event buffer gets a transport reset.
    public private(set) var transportResetPending = false
    /// The largest size the driver may give a queue.
    public let queueSizeMaximum: UInt16

    /// A device for the guest with CID `guestCID` (3 or more; 0-2 are reserved).
    public init(guestCID: UInt64, queueSizeMaximum: UInt16 = 256) {
        connections = VsockConnections(guestCID: guestCID)
        self.queueSizeMaximum = queueSizeMaximum
    }

    /// `VirtioDeviceType.socket`.
    public var deviceType: UInt32 { VirtioDeviceType.socket }
    /// rx, tx and event.
    public var queueCount: Int { 3 }
    /// `queueSizeMaximum`.
    public var maximumQueueSize: UInt16 { queueSizeMaximum }
    /// VERSION_1, indirect descriptors, event index; stream sockets need no feature bit.
    public var offeredFeatures: UInt64 {
        VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors | VirtioFeature.ringEventIndex
    }
    /// `guest_cid`, little-endian u64 (5.10.4).
    public var configurationSpace: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: connections.guestCID >> (8 * UInt64($0))) }
    }

    /// Nothing to set up.
    public mutating func activate(features: UInt64) {}

    /// Drops every connection (the host closes their sockets).
    public mutating func reset() {
        connections.removeAll()
        transportResetPending = false
    }

    /// Serves one chain: a tx packet, an rx buffer or an event buffer.
    public mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        switch queue {
        case Queue.tx: return transmit(chain, memory: memory)
        case Queue.rx: return receive(chain, memory: memory)
        default: return event(chain, memory: memory)
        }
    }

    private mutating func transmit(_ chain: DescriptorChain, memory: GuestMemory) -> VirtioChainResult {
        guard connections.acceptsGuestPackets else { return .deferred }
        var raw = [UInt8](repeating: 0, count: VsockPacketHeader.size)
        let got = raw.withUnsafeMutableBytes { chain.copyReadable(from: 0, into: $0, memory: memory) }
        let header: VsockPacketHeader
        do {
            header = try VsockPacketHeader(bytes: raw.prefix(got))
            let payloadBytes = chain.readableLength - UInt64(VsockPacketHeader.size)
            _ = try header.validate(
                guestCID: connections.guestCID, payloadBytes: payloadBytes, maximumPayload: VsockConnections.maximumPayload)
        } catch {
            connections.refuse(got == VsockPacketHeader.size ? try? VsockPacketHeader(bytes: raw) : nil)
            return .used(0)
        }
        var payload: [UInt8] = []
        if header.length > 0 {
            payload = [UInt8](repeating: 0, count: Int(header.length))
            _ = payload.withUnsafeMutableBytes {
                chain.copyReadable(from: UInt64(VsockPacketHeader.size), into: $0, memory: memory)
            }
        }
        connections.receive(header, payload: payload)
        return .used(0)
    }

    private mutating func receive(_ chain: DescriptorChain, memory: GuestMemory) -> VirtioChainResult {
        guard chain.writableLength >= UInt64(VsockPacketHeader.size) else { return .used(0) }
        let room = Int(min(chain.writableLength - UInt64(VsockPacketHeader.size), UInt64(VsockConnections.maximumPayload)))
        guard let (header, payload) = connections.nextPacketForGuest(maximumPayload: room) else { return .deferred }
        let bytes = header.bytes + payload
        let written = bytes.withUnsafeBytes { chain.copyToWritable(at: 0, from: $0, memory: memory) }
        return .used(UInt32(written))
    }

    private mutating func event(_ chain: DescriptorChain, memory: GuestMemory) -> VirtioChainResult {
        guard transportResetPending else { return .deferred }
        guard chain.writableLength >= 4 else { return .used(0) }
        var id = Self.transportResetEvent.littleEndian
        let written = withUnsafeBytes(of: &id) { chain.copyToWritable(at: 0, from: $0, memory: memory) }
        transportResetPending = false
        return .used(UInt32(written))
    }
}

// MARK: - Saved state

extension VirtioVsock: PersistentDevice {
    /// The device's saved state: its CID and queue limit. Connections are not saved: their host
    /// sockets do not survive a snapshot, so a restored device tells the guest with a transport
    /// reset event.
    public struct State: Codable, Equatable, Sendable {
        /// The guest's CID.
        public var guestCID: UInt64
        /// The largest size the driver may give a queue.
        public var queueSizeMaximum: UInt16

        /// A state with these parts.
        public init(guestCID: UInt64, queueSizeMaximum: UInt16) {
            self.guestCID = guestCID
            self.queueSizeMaximum = queueSizeMaximum
        }
    }

    /// The host side is recreated by the machine, not carried in the state.
    public typealias Resources = Void

    /// The CID and queue limit now.
    public func saveState() -> State { State(guestCID: connections.guestCID, queueSizeMaximum: queueSizeMaximum) }

    /// A device for `state` with no connections and a transport reset pending. Throws for a CID
    /// below 3 or a queue limit that is not a power of two up to 32768.
    public static func restore(from state: State, with resources: Void) throws(DeviceRestoreError) -> VirtioVsock {
        let check = StateValidator(device: "virtio-vsock")
        try check.powerOfTwo(state.queueSizeMaximum, "queueSizeMaximum")
        try check.atMost(state.queueSizeMaximum, Virtqueue.maximumSize, "queueSizeMaximum")
        try check.atLeast(state.guestCID, 3, "guestCID")
        var device = VirtioVsock(guestCID: state.guestCID, queueSizeMaximum: state.queueSizeMaximum)
        device.transportResetPending = true
        return device
    }
}
