/// The connection state machine of a virtio-vsock device (virtio 1.2, 5.10.6): every stream
/// between the guest and the host, with credit-based flow control in both directions.
///
/// Pure state: packets from the guest go in (`receive(_:payload:now:)`), host-side happenings go
/// in (`hostConnect`, `hostAccepted`, `sendToGuest`, `hostConsumed`, `hostShutdown`, `hostReset`,
/// `expire`), and out come packets for the guest's rx queue (`nextPacketForGuest`) and
/// `HostEvent`s for whoever owns the host sockets (`takeEvents`). No I/O, no clock of its own.
///
/// Bounds: at most `maximumConnections` connections; each buffers at most `bufferBytes` of guest
/// data not yet taken by the host (the guest is told so in `buf_alloc`; a guest that sends more
/// than its credit is reset), and at most `bufferBytes` of host data not yet sent (the host may
/// offer no more than `credit(for:)`, which is also bounded by the guest's free credit); at most
/// `maximumControlPackets` control packets wait for rx buffers, after which the device stops
/// reading the tx queue until the guest drains rx.
public struct VsockConnections: Sendable {
    /// The most connections at once; a further request is reset.
    public static let maximumConnections = 1024
    /// The receive buffer per connection, in bytes (the `buf_alloc` the host advertises).
    public static let bufferBytes: UInt32 = 256 << 10
    /// The largest payload of one packet, either direction.
    public static let maximumPayload: UInt32 = 64 << 10
    /// How long a host-initiated connection waits for the guest's response.
    public static let connectTimeoutNanoseconds: UInt64 = 5_000_000_000
    /// The most control packets waiting for the guest's rx queue.
    public static let maximumControlPackets = 2 * maximumConnections
    /// VMADDR_CID_HOST, the host's CID.
    public static let hostCID: UInt64 = 2
    /// The first port the host assigns to host-initiated connections.
    public static let firstEphemeralPort: UInt32 = 1 << 30

    /// One connection: the guest's port and the host's.
    public struct Key: Hashable, Sendable, CustomStringConvertible {
        /// The port on the guest's side.
        public var guestPort: UInt32
        /// The port on the host's side.
        public var hostPort: UInt32
        /// A key for these ports.
        public init(guestPort: UInt32, hostPort: UInt32) {
            self.guestPort = guestPort
            self.hostPort = hostPort
        }
        /// `guest:G host:H`.
        public var description: String { "guest:\(guestPort) host:\(hostPort)" }
    }

    /// Something the host side has to act on.
    public enum HostEvent: Equatable, Sendable {
        /// The guest accepted a host-initiated connection (answer `OK <hostPort>`).
        case accepted(Key)
        /// The guest opened a connection to host port `key.hostPort` (connect to `PATH_<port>`,
        /// then call `hostAccepted` or `hostReset`).
        case guestConnects(Key)
        /// Guest data waits for the host (`takeForHost`).
        case dataForHost(Key)
        /// The guest will send no more data (half close: shut down writing to the host socket).
        case guestShutdownSend(Key)
        /// The connection is gone (reset, refused, timed out, or closed both ways): close the socket.
        case closed(Key)
    }

    enum Phase: Equatable, Sendable {
        /// Host-initiated, REQUEST sent, waiting for RESPONSE until `deadline`.
        case connecting(deadline: UInt64)
        /// Guest-initiated, waiting for the host socket to connect.
        case awaitingHost
        /// Both sides open.
        case established
        /// The host sent SHUTDOWN for both directions and waits for the guest's RST.
        case closing
    }

    struct Connection: Sendable {
        var phase: Phase
        var peerBufferAllocation: UInt32 = 0
        var peerForwardCount: UInt32 = 0
        /// Bytes sent to the guest (wrapping), for the guest's credit.
        var sentToGuest: UInt32 = 0
        /// Guest data the host has not taken yet.
        var toHost: [UInt8] = []
        /// Bytes the host took (the `fwd_cnt` advertised to the guest, wrapping).
        var forwardCount: UInt32 = 0
        var advertisedForwardCount: UInt32 = 0
        /// Host data not yet sent to the guest.
        var fromHost: [UInt8] = []
        var guestShutdown: UInt32 = 0
    }

    struct Control: Sendable {
        var key: Key
        var operation: VsockPacketHeader.Operation
        var flags: UInt32 = 0
    }

    /// The guest's CID, the source it must use and the destination of every packet sent to it.
    public let guestCID: UInt64
    var connections: [Key: Connection] = [:]
    var control: [Control] = []
    var controlHead = 0
    var dataQueue: [Key] = []
    var events: [HostEvent] = []
    var nextEphemeralPort = VsockConnections.firstEphemeralPort

    /// Counters of what went wrong, for tests and statistics.
    public struct Statistics: Equatable, Codable, Sendable {
        /// Packets dropped or reset because they were malformed (`VsockPacketError`).
        public var malformed = 0
        /// Connections reset because the guest sent beyond its credit.
        public var creditViolations = 0
        /// Requests reset because `maximumConnections` were open.
        public var refusedForLimit = 0
        /// Host-initiated connections the guest did not answer in time.
        public var timeouts = 0
        /// Packets for no connection (answered with a reset).
        public var unknownConnection = 0
    }
    /// What went wrong so far.
    public private(set) var statistics = Statistics()

    /// No connections, for a guest with CID `guestCID`.
    public init(guestCID: UInt64) { self.guestCID = guestCID }

    /// How many connections exist, in any phase.
    public var count: Int { connections.count }
    /// Whether `key` is a connection now.
    public func contains(_ key: Key) -> Bool { connections[key] != nil }
    /// Whether `key` is open both ways.
    public func isEstablished(_ key: Key) -> Bool { connections[key]?.phase == .established }
    /// Whether the device may read another packet from the tx queue: its answer has room.
    public var acceptsGuestPackets: Bool { control.count - controlHead < Self.maximumControlPackets }

    /// Whether `takeEvents()` has something.
    public var hasPendingEvents: Bool { !events.isEmpty }

    /// The events since the last call, oldest first.
    public mutating func takeEvents() -> [HostEvent] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    // MARK: Guest → host

    /// Handles one packet from the guest's tx queue whose header `header` passed
    /// `VsockPacketHeader.validate` and whose payload is `payload` (`header.length` bytes).
    public mutating func receive(_ header: VsockPacketHeader, payload: [UInt8]) {
        guard let op = header.knownOperation else { return }
        let key = Key(guestPort: header.sourcePort, hostPort: header.destinationPort)
        guard header.destinationCID == Self.hostCID else {
            if op != .reset { queue(key, .reset) }
            statistics.unknownConnection += 1
            return
        }
        guard var connection = connections[key] else {
            switch op {
            case .request:
                guard connections.count < Self.maximumConnections else {
                    statistics.refusedForLimit += 1
                    queue(key, .reset)
                    return
                }
                var new = Connection(phase: .awaitingHost)
                new.peerBufferAllocation = header.bufferAllocation
                new.peerForwardCount = header.forwardCount
                connections[key] = new
                events.append(.guestConnects(key))
            case .reset:
                break
            default:
                statistics.unknownConnection += 1
                queue(key, .reset)
            }
            return
        }
        connection.peerBufferAllocation = header.bufferAllocation
        connection.peerForwardCount = header.forwardCount
        switch op {
        case .request:
            // A second request for a live connection: the guest is confused; drop both ends.
            close(key, sendReset: true)
            return
        case .response:
            guard case .connecting = connection.phase else {
                close(key, sendReset: true)
                return
            }
            connection.phase = .established
            events.append(.accepted(key))
        case .reset:
            close(key, sendReset: false)
            return
        case .shutdown:
            connection.guestShutdown |= header.flags
            let both = VsockPacketHeader.ShutdownFlag.receive | VsockPacketHeader.ShutdownFlag.send
            // Guest data the host has not taken yet is still delivered: the connection closes
            // once it is (`hostConsumed`).
            if (connection.phase == .closing || connection.guestShutdown & both == both) && connection.toHost.isEmpty {
                close(key, sendReset: true)
                return
            }
            if header.flags & VsockPacketHeader.ShutdownFlag.send != 0 { events.append(.guestShutdownSend(key)) }
        case .readWrite:
            guard connection.phase == .established, connection.guestShutdown & VsockPacketHeader.ShutdownFlag.send == 0
            else {
                close(key, sendReset: true)
                return
            }
            guard connection.toHost.count + payload.count <= Int(Self.bufferBytes) else {
                statistics.creditViolations += 1
                close(key, sendReset: true)
                return
            }
            if !payload.isEmpty {
                let wasEmpty = connection.toHost.isEmpty
                connection.toHost.append(contentsOf: payload)
                if wasEmpty { events.append(.dataForHost(key)) }
            }
        case .creditUpdate:
            break
        case .creditRequest:
            queue(key, .creditUpdate)
        }
        connections[key] = connection
        if !connection.fromHost.isEmpty { dataQueue.append(key) }
    }

    /// Counts a packet `VsockPacketHeader.validate` refused; a parsed header that was not itself a
    /// reset gets a reset for its ports (and its connection, if any, is closed).
    public mutating func refuse(_ header: VsockPacketHeader?) {
        statistics.malformed += 1
        guard let header, header.operation != VsockPacketHeader.Operation.reset.rawValue else { return }
        let key = Key(guestPort: header.sourcePort, hostPort: header.destinationPort)
        if connections[key] != nil, header.sourceCID == guestCID {
            close(key, sendReset: true)
        } else {
            queue(key, .reset)
        }
    }

    /// Up to `maximum` bytes of guest data waiting for the host on `key` (without taking them;
    /// call `hostConsumed` with what was written).
    public func pendingForHost(_ key: Key, maximum: Int) -> ArraySlice<UInt8> {
        guard let c = connections[key] else { return [] }
        return c.toHost.prefix(maximum)
    }

    /// The host wrote `count` bytes of `pendingForHost` to its socket: they leave the buffer and
    /// the guest gets its credit back (a credit update once a quarter of the buffer is free
    /// again, or the buffer is empty).
    public mutating func hostConsumed(_ key: Key, count: Int) {
        guard var c = connections[key], count > 0 else { return }
        let n = min(count, c.toHost.count)
        c.toHost.removeFirst(n)
        c.forwardCount &+= UInt32(n)
        let unadvertised = c.forwardCount &- c.advertisedForwardCount
        connections[key] = c
        let both = VsockPacketHeader.ShutdownFlag.receive | VsockPacketHeader.ShutdownFlag.send
        if c.toHost.isEmpty && (c.phase == .closing || c.guestShutdown & both == both) && c.guestShutdown != 0 {
            close(key, sendReset: true)
            return
        }
        if unadvertised >= Self.bufferBytes / 4 || (c.toHost.isEmpty && unadvertised > 0) {
            queue(key, .creditUpdate)
        }
    }

    // MARK: Host → guest

    /// A host program asked for guest port `guestPort`: sends REQUEST from a fresh host port and
    /// returns the connection, or nil when `maximumConnections` are open. It is `accepted` when
    /// the guest responds, `closed` when it resets or does not answer before `now` plus
    /// `connectTimeoutNanoseconds` (see `expire`).
    public mutating func hostConnect(guestPort: UInt32, now: UInt64) -> Key? {
        guard connections.count < Self.maximumConnections else {
            statistics.refusedForLimit += 1
            return nil
        }
        var key = Key(guestPort: guestPort, hostPort: nextEphemeralPort)
        while connections[key] != nil { key.hostPort = advanceEphemeral() }
        _ = advanceEphemeral()
        connections[key] = Connection(phase: .connecting(deadline: now &+ Self.connectTimeoutNanoseconds))
        queue(key, .request)
        return key
    }

    private mutating func advanceEphemeral() -> UInt32 {
        nextEphemeralPort = nextEphemeralPort == UInt32.max ? Self.firstEphemeralPort : nextEphemeralPort + 1
        return nextEphemeralPort
    }

    /// The host socket for a guest-initiated connection connected: the guest gets RESPONSE.
    public mutating func hostAccepted(_ key: Key) {
        guard var c = connections[key], c.phase == .awaitingHost else { return }
        c.phase = .established
        connections[key] = c
        queue(key, .response)
    }

    /// How many bytes the host may offer with `sendToGuest` now: the guest's free credit less
    /// what is already waiting, never more than `bufferBytes` waiting.
    public func credit(for key: Key) -> Int {
        guard let c = connections[key], c.phase == .established,
            c.guestShutdown & VsockPacketHeader.ShutdownFlag.receive == 0
        else { return 0 }
        let inFlight = c.sentToGuest &- c.peerForwardCount
        let peerFree = c.peerBufferAllocation >= inFlight ? Int(c.peerBufferAllocation - inFlight) : 0
        return max(0, min(peerFree, Int(Self.bufferBytes)) - c.fromHost.count)
    }

    /// Queues host data for the guest; takes at most `credit(for:)` bytes and returns how many.
    @discardableResult
    public mutating func sendToGuest(_ key: Key, _ bytes: some Collection<UInt8>) -> Int {
        let n = min(bytes.count, credit(for: key))
        guard n > 0, var c = connections[key] else { return 0 }
        let wasEmpty = c.fromHost.isEmpty
        c.fromHost.append(contentsOf: bytes.prefix(n))
        connections[key] = c
        if wasEmpty { dataQueue.append(key) }
        return n
    }

    /// The host side of `key` reached end of file: the guest gets SHUTDOWN for both directions
    /// once waiting data is sent, and the connection closes when it resets.
    public mutating func hostShutdown(_ key: Key) {
        guard var c = connections[key] else { return }
        guard c.phase == .established else {
            close(key, sendReset: true)
            return
        }
        c.phase = .closing
        connections[key] = c
        if c.fromHost.isEmpty {
            queue(key, .shutdown, flags: VsockPacketHeader.ShutdownFlag.receive | VsockPacketHeader.ShutdownFlag.send)
        }
    }

    /// The host side of `key` failed or went away (or could not connect): the guest gets RST.
    public mutating func hostReset(_ key: Key) {
        guard connections[key] != nil else { return }
        close(key, sendReset: true, notifyHost: false)
    }

    /// Resets host-initiated connections whose guest did not respond by `now`; returns them.
    @discardableResult
    public mutating func expire(now: UInt64) -> [Key] {
        var expired: [Key] = []
        for (key, c) in connections {
            if case .connecting(let deadline) = c.phase, now >= deadline { expired.append(key) }
        }
        for key in expired {
            statistics.timeouts += 1
            close(key, sendReset: true)
        }
        return expired
    }

    /// The earliest connect deadline, if a host-initiated connection waits.
    public var nextDeadline: UInt64? {
        connections.values.compactMap { if case .connecting(let d) = $0.phase { d } else { nil } }.min()
    }

    /// Whether `nextPacketForGuest` has something.
    public var hasPacketForGuest: Bool {
        controlHead < control.count || dataQueue.contains { credit0Sendable($0) }
    }

    private func credit0Sendable(_ key: Key) -> Bool {
        guard let c = connections[key], !c.fromHost.isEmpty else { return false }
        return peerFree(c) > 0
    }

    private func peerFree(_ c: Connection) -> Int {
        let inFlight = c.sentToGuest &- c.peerForwardCount
        return c.peerBufferAllocation >= inFlight ? Int(c.peerBufferAllocation - inFlight) : 0
    }

    /// The next packet for the guest's rx queue, with at most `maximumPayload` bytes of data:
    /// control packets first, then data from connections in turn, each within the guest's
    /// credit. Nil when nothing can be sent.
    public mutating func nextPacketForGuest(maximumPayload: Int) -> (VsockPacketHeader, [UInt8])? {
        while controlHead < control.count {
            let item = control[controlHead]
            controlHead += 1
            if controlHead == control.count {
                control.removeAll(keepingCapacity: true)
                controlHead = 0
            }
            var header = VsockPacketHeader(
                sourceCID: Self.hostCID, destinationCID: guestCID, sourcePort: item.key.hostPort,
                destinationPort: item.key.guestPort, operation: item.operation, flags: item.flags)
            if var c = connections[item.key] {
                header.bufferAllocation = Self.bufferBytes
                header.forwardCount = c.forwardCount
                c.advertisedForwardCount = c.forwardCount
                connections[item.key] = c
            } else if item.operation != .reset {
                continue
            }
            return (header, [])
        }
        let limit = min(maximumPayload, Int(Self.maximumPayload))
        var tries = dataQueue.count
        while tries > 0, !dataQueue.isEmpty {
            tries -= 1
            let key = dataQueue.removeFirst()
            guard var c = connections[key], !c.fromHost.isEmpty else { continue }
            let n = min(c.fromHost.count, peerFree(c), limit)
            guard n > 0 else {
                dataQueue.append(key)
                continue
            }
            let payload = Array(c.fromHost.prefix(n))
            c.fromHost.removeFirst(n)
            c.sentToGuest &+= UInt32(n)
            c.advertisedForwardCount = c.forwardCount
            let header = VsockPacketHeader(
                sourceCID: Self.hostCID, destinationCID: guestCID, sourcePort: key.hostPort,
                destinationPort: key.guestPort, operation: .readWrite, length: UInt32(n),
                bufferAllocation: Self.bufferBytes, forwardCount: c.forwardCount)
            connections[key] = c
            if !c.fromHost.isEmpty {
                dataQueue.append(key)
            } else if c.phase == .closing {
                queue(key, .shutdown, flags: VsockPacketHeader.ShutdownFlag.receive | VsockPacketHeader.ShutdownFlag.send)
            }
            return (header, payload)
        }
        return nil
    }

    /// Drops every connection (the device was reset or restored); the host closes every socket.
    public mutating func removeAll() {
        for key in connections.keys { events.append(.closed(key)) }
        connections.removeAll()
        control.removeAll()
        controlHead = 0
        dataQueue.removeAll()
    }

    // MARK: Helpers

    private mutating func queue(_ key: Key, _ operation: VsockPacketHeader.Operation, flags: UInt32 = 0) {
        // A reset for a connection that is not there is best effort: under a flood it is dropped.
        if connections[key] == nil, control.count - controlHead >= Self.maximumControlPackets { return }
        control.append(Control(key: key, operation: operation, flags: flags))
    }

    private mutating func close(_ key: Key, sendReset: Bool, notifyHost: Bool = true) {
        connections[key] = nil
        if sendReset { queue(key, .reset) }
        if notifyHost { events.append(.closed(key)) }
    }
}
