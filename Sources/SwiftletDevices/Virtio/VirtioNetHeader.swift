import CHost
import SwiftletHost
import SwiftletMemory

/// `struct virtio_net_hdr_v1` (virtio 1.2, 5.1.6): the 12 bytes before every frame in both
/// virtio-net queues, and before every frame a tap with IFF_VNET_HDR reads or writes. All
/// fields little-endian.
///
///     0  flags: u8          NEEDS_CSUM 1, DATA_VALID 2, RSC_INFO 4
///     1  gso_type: u8       NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; | ECN 0x80
///     2  hdr_len: u16       4  gso_size: u16
///     6  csum_start: u16    8  csum_offset: u16
///     10 num_buffers: u16   (receive: how many buffers the frame spans; 1 without MRG_RXBUF)
public struct VirtioNetHeader: Equatable, Codable, Sendable {
    /// The header's length in bytes: the VERSION_1 layout, which always includes `num_buffers`.
    public static let size = 12

    /// Bits of `flags` (VIRTIO_NET_HDR_F_*).
    public enum Flag {
        /// The frame's checksum from `checksumStart` is partial: the receiver completes it.
        public static let needsChecksum: UInt8 = 1
        /// The checksum was verified (receive only).
        public static let dataValid: UInt8 = 2
        /// Receive-segment-coalescing information (receive only; never negotiated here).
        public static let rscInfo: UInt8 = 4
    }

    /// Values of `gso_type` (VIRTIO_NET_HDR_GSO_*).
    public enum SegmentationType {
        /// VIRTIO_NET_HDR_GSO_NONE: a frame no larger than the MTU, not to be segmented.
        public static let none: UInt8 = 0
        /// VIRTIO_NET_HDR_GSO_TCPV4: TCP over IPv4, to be cut into segments of `segmentSize` bytes.
        public static let tcp4: UInt8 = 1
        /// VIRTIO_NET_HDR_GSO_UDP: UDP fragmentation (UFO); never negotiated here, so always refused.
        public static let udp: UInt8 = 3
        /// VIRTIO_NET_HDR_GSO_TCPV6: TCP over IPv6, to be cut into segments of `segmentSize` bytes.
        public static let tcp6: UInt8 = 4
        /// VIRTIO_NET_HDR_GSO_UDP_L4: UDP segmentation (USO); never negotiated here, so always refused.
        public static let udpL4: UInt8 = 5
        /// Added to a TCP type when the segments carry ECN bits.
        public static let ecn: UInt8 = 0x80
    }

    /// `flags`: `Flag` bits.
    public var flags: UInt8 = 0
    /// `gso_type`: a `SegmentationType`, possibly with `SegmentationType.ecn` added.
    public var segmentationType: UInt8 = SegmentationType.none
    /// `hdr_len`: bytes of headers (Ethernet through TCP) that each segment repeats.
    public var headerLength: UInt16 = 0
    /// `gso_size`: payload bytes per segment (the MSS) of a frame to be segmented.
    public var segmentSize: UInt16 = 0
    /// `csum_start`: offset in the frame where the partial checksum starts (with NEEDS_CSUM).
    public var checksumStart: UInt16 = 0
    /// `csum_offset`: where the completed checksum goes, in bytes after `checksumStart`.
    public var checksumOffset: UInt16 = 0
    /// `num_buffers`: on receive, how many buffers the frame spans (always 1 here, without
    /// MRG_RXBUF); 0 on transmit.
    public var bufferCount: UInt16 = 0

    /// A header with these fields; by default all zero, a complete frame with no offload.
    public init(
        flags: UInt8 = 0, segmentationType: UInt8 = SegmentationType.none, headerLength: UInt16 = 0, segmentSize: UInt16 = 0,
        checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0, bufferCount: UInt16 = 0
    ) {
        self.flags = flags
        self.segmentationType = segmentationType
        self.headerLength = headerLength
        self.segmentSize = segmentSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
        self.bufferCount = bufferCount
    }

    /// Decodes the first 12 bytes of `bytes` (which must hold at least that many).
    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= Self.size)
        func u16(_ offset: Int) -> UInt16 { UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
        flags = bytes[0]
        segmentationType = bytes[1]
        headerLength = u16(2)
        segmentSize = u16(4)
        checksumStart = u16(6)
        checksumOffset = u16(8)
        bufferCount = u16(10)
    }

    /// Encodes the header into the first 12 bytes of `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.size)
        func u16(_ value: UInt16, _ offset: Int) {
            bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self)
        }
        bytes[0] = flags
        bytes[1] = segmentationType
        u16(headerLength, 2)
        u16(segmentSize, 4)
        u16(checksumStart, 6)
        u16(checksumOffset, 8)
        u16(bufferCount, 10)
    }

    /// The 12 encoded bytes.
    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { encode(into: $0) }
        return bytes
    }

    /// Why a header cannot go through with the negotiated features.
    public enum Refusal: Error, Equatable, Sendable {
        /// A partial checksum, and the receiving side did not accept checksum offload.
        case checksumNotNegotiated
        /// A segmentation type the receiving side did not accept (or that is not offered).
        case segmentationNotNegotiated(UInt8)
    }

    /// The header of a frame the driver sends, as it goes to the tap: a partial checksum needs
    /// VIRTIO_NET_F_CSUM, TCP segmentation HOST_TSO4 / HOST_TSO6 (and HOST_ECN for the ECN bit);
    /// UDP segmentation is not offered. Receive-only flags and `num_buffers` are cleared.
    public func forTransmit(features: UInt64) -> Result<VirtioNetHeader, Refusal> {
        var header = self
        header.flags &= Flag.needsChecksum
        header.bufferCount = 0
        if header.flags & Flag.needsChecksum != 0 && features & VirtioNet.Feature.checksum == 0 {
            return .failure(.checksumNotNegotiated)
        }
        let allowed = Self.allowedSegmentation(
            features: features, tcp4: VirtioNet.Feature.hostTSO4, tcp6: VirtioNet.Feature.hostTSO6, ecn: VirtioNet.Feature.hostECN
        )
        guard allowed(segmentationType) else { return .failure(.segmentationNotNegotiated(segmentationType)) }
        return .success(header)
    }

    /// The header of a frame read from the tap, as the driver gets it: offloads the driver did
    /// not accept (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) refuse the frame; without GUEST_CSUM the
    /// flags are cleared (the frame is complete and checksummed); `num_buffers` is 1.
    public func forReceive(features: UInt64) -> Result<VirtioNetHeader, Refusal> {
        var header = self
        header.bufferCount = 1
        header.flags &= Flag.needsChecksum | Flag.dataValid
        if features & VirtioNet.Feature.guestChecksum == 0 {
            guard header.flags & Flag.needsChecksum == 0 else { return .failure(.checksumNotNegotiated) }
            header.flags = 0
        }
        let allowed = Self.allowedSegmentation(
            features: features, tcp4: VirtioNet.Feature.guestTSO4, tcp6: VirtioNet.Feature.guestTSO6,
            ecn: VirtioNet.Feature.guestECN)
        guard allowed(segmentationType) else { return .failure(.segmentationNotNegotiated(segmentationType)) }
        return .success(header)
    }

    private static func allowedSegmentation(features: UInt64, tcp4: UInt64, tcp6: UInt64, ecn: UInt64) -> (UInt8) -> Bool {
        { type in
            if type & SegmentationType.ecn != 0 && features & ecn == 0 { return false }
            switch type & ~SegmentationType.ecn {
            case SegmentationType.none: return type & SegmentationType.ecn == 0
            case SegmentationType.tcp4: return features & tcp4 != 0
            case SegmentationType.tcp6: return features & tcp6 != 0
            default: return false
            }
        }
    }
}
