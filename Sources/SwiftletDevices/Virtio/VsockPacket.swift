/// `struct virtio_vsock_hdr` (virtio 1.2, 5.10.6): the 44 bytes before every packet on the
/// virtio-vsock rx and tx queues. All fields little-endian.
///
///     0  src_cid: u64     8  dst_cid: u64
///     16 src_port: u32    20 dst_port: u32
///     24 len: u32         28 type: u16      30 op: u16
///     32 flags: u32       36 buf_alloc: u32 40 fwd_cnt: u32
public struct VsockPacketHeader: Equatable, Codable, Sendable {
    /// The header's length in bytes.
    public static let size = 44

    /// Values of `op` (VIRTIO_VSOCK_OP_*).
    public enum Operation: UInt16, Codable, Sendable, CaseIterable {
        /// VIRTIO_VSOCK_OP_REQUEST: open a connection.
        case request = 1
        /// VIRTIO_VSOCK_OP_RESPONSE: accept a connection.
        case response = 2
        /// VIRTIO_VSOCK_OP_RST: refuse or abort a connection.
        case reset = 3
        /// VIRTIO_VSOCK_OP_SHUTDOWN: stop receiving and/or sending (`ShutdownFlag`).
        case shutdown = 4
        /// VIRTIO_VSOCK_OP_RW: `len` bytes of stream data follow the header.
        case readWrite = 5
        /// VIRTIO_VSOCK_OP_CREDIT_UPDATE: the sender's `buf_alloc`/`fwd_cnt` changed.
        case creditUpdate = 6
        /// VIRTIO_VSOCK_OP_CREDIT_REQUEST: the sender asks for a credit update.
        case creditRequest = 7
    }

    /// Bits of `flags` for `Operation.shutdown` (VIRTIO_VSOCK_SHUTDOWN_*).
    public enum ShutdownFlag {
        /// The sender will receive no more data.
        public static let receive: UInt32 = 1
        /// The sender will send no more data.
        public static let send: UInt32 = 2
    }

    /// VIRTIO_VSOCK_TYPE_STREAM, the only socket type the device supports.
    public static let typeStream: UInt16 = 1

    /// `src_cid`.
    public var sourceCID: UInt64
    /// `dst_cid`.
    public var destinationCID: UInt64
    /// `src_port`.
    public var sourcePort: UInt32
    /// `dst_port`.
    public var destinationPort: UInt32
    /// `len`: payload bytes after the header (only `readWrite` carries any).
    public var length: UInt32
    /// `type`: `typeStream`.
    public var type: UInt16
    /// `op`: the raw operation (`Operation` when known).
    public var operation: UInt16
    /// `flags`: `ShutdownFlag` bits for a shutdown, otherwise 0.
    public var flags: UInt32
    /// `buf_alloc`: the sender's receive buffer for this connection, in bytes.
    public var bufferAllocation: UInt32
    /// `fwd_cnt`: bytes the sender has consumed from its receive buffer so far (wrapping).
    public var forwardCount: UInt32

    /// A header with these fields (a stream packet unless `type` says otherwise).
    public init(
        sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32,
        operation: Operation, length: UInt32 = 0, flags: UInt32 = 0, bufferAllocation: UInt32 = 0,
        forwardCount: UInt32 = 0, type: UInt16 = VsockPacketHeader.typeStream
    ) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.type = type
        self.operation = operation.rawValue
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    /// The header in the first `size` bytes of `bytes` (little-endian), without validation.
    /// Throws `VsockPacketError.truncated` when fewer than `size` bytes are given.
    public init(bytes: some Collection<UInt8>) throws(VsockPacketError) {
        guard bytes.count >= Self.size else { throw .truncated(bytes.count) }
        let b = Array(bytes.prefix(Self.size))
        func le(_ offset: Int, _ count: Int) -> UInt64 {
            var value: UInt64 = 0
            for i in (0..<count).reversed() { value = value << 8 | UInt64(b[offset + i]) }
            return value
        }
        sourceCID = le(0, 8)
        destinationCID = le(8, 8)
        sourcePort = UInt32(le(16, 4))
        destinationPort = UInt32(le(20, 4))
        length = UInt32(le(24, 4))
        type = UInt16(le(28, 2))
        operation = UInt16(le(30, 2))
        flags = UInt32(le(32, 4))
        bufferAllocation = UInt32(le(36, 4))
        forwardCount = UInt32(le(40, 4))
    }

    /// The header's `size` little-endian bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        func put(_ value: UInt64, _ count: Int) {
            for i in 0..<count { out.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
        }
        put(sourceCID, 8)
        put(destinationCID, 8)
        put(UInt64(sourcePort), 4)
        put(UInt64(destinationPort), 4)
        put(UInt64(length), 4)
        put(UInt64(type), 2)
        put(UInt64(operation), 2)
        put(UInt64(flags), 4)
        put(UInt64(bufferAllocation), 4)
        put(UInt64(forwardCount), 4)
        return out
    }

    /// The operation, or nil for a value virtio 1.2 does not define.
    public var knownOperation: Operation? { Operation(rawValue: operation) }

    /// Checks a header the guest sent on the tx queue from CID `guestCID`, whose chain has
    /// `payloadBytes` readable bytes after the header: the source is the guest's CID, the type is
    /// a stream, the operation is known, only `readWrite` carries a payload, the payload is no
    /// longer than `maximumPayload` nor than the chain, and shutdown flags are known bits.
    /// Returns the operation.
    public func validate(guestCID: UInt64, payloadBytes: UInt64, maximumPayload: UInt32) throws(VsockPacketError) -> Operation {
        guard sourceCID == guestCID else { throw .sourceCID(sourceCID, expected: guestCID) }
        guard type == Self.typeStream else { throw .type(type) }
        guard let op = knownOperation else { throw .operation(operation) }
        if op == .readWrite {
            guard length <= maximumPayload else { throw .lengthBeyondLimit(length, limit: maximumPayload) }
            guard UInt64(length) <= payloadBytes else { throw .lengthBeyondDescriptor(length, available: payloadBytes) }
        } else if length != 0 {
            throw .lengthOnControlPacket(length, operation: op)
        }
        if op == .shutdown, flags & ~(ShutdownFlag.receive | ShutdownFlag.send) != 0 {
            throw .flags(flags)
        }
        return op
    }
}

/// Why a packet from the guest was dropped (`VsockPacketHeader.validate`); each names the field.
public enum VsockPacketError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The chain's readable part is shorter than the 44-byte header.
    case truncated(Int)
    /// `src_cid` is not the guest's CID.
    case sourceCID(UInt64, expected: UInt64)
    /// `type` is not VIRTIO_VSOCK_TYPE_STREAM.
    case type(UInt16)
    /// `op` is not an operation virtio 1.2 defines.
    case operation(UInt16)
    /// `len` is larger than the device's maximum payload.
    case lengthBeyondLimit(UInt32, limit: UInt32)
    /// `len` is larger than the readable bytes the chain has after the header.
    case lengthBeyondDescriptor(UInt32, available: UInt64)
    /// `len` is non-zero on an operation that carries no data.
    case lengthOnControlPacket(UInt32, operation: VsockPacketHeader.Operation)
    /// `flags` of a shutdown has bits other than RCV and SEND.
    case flags(UInt32)

    /// One line naming the field and the value.
    public var description: String {
        switch self {
        case .truncated(let n): "vsock packet: header truncated (\(n) of 44 bytes)"
        case .sourceCID(let c, let e): "vsock packet: src_cid \(c) is not the guest's CID \(e)"
        case .type(let t): "vsock packet: type \(t) is not a stream (1)"
        case .operation(let o): "vsock packet: op \(o) is unknown"
        case .lengthBeyondLimit(let l, let m): "vsock packet: len \(l) exceeds the maximum payload \(m)"
        case .lengthBeyondDescriptor(let l, let a): "vsock packet: len \(l) exceeds the \(a) bytes in the descriptors"
        case .lengthOnControlPacket(let l, let o): "vsock packet: len \(l) on a \(o) packet, which carries no data"
        case .flags(let f): "vsock packet: shutdown flags 0x\(String(f, radix: 16)) have unknown bits"
        }
    }
}
