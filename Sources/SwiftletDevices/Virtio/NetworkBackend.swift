import CHost
import Glibc
import SwiftletHost
import SwiftletMemory

/// Offloads a network backend hands to the guest in the frames it reads (the `TUN_F_*` bits of
/// `TUNSETOFFLOAD`): partially checksummed frames, and TCP segmentation (frames up to 64 KiB that
/// the guest's stack takes as they are).
public struct NetworkOffloads: OptionSet, Hashable, Codable, Sendable {
    /// The `TUN_F_*` bits, as `TUNSETOFFLOAD` takes them.
    public let rawValue: UInt32
    /// The set with these `TUN_F_*` bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Frames with a partial checksum (virtio `NEEDS_CSUM`) may be delivered.
    public static let checksum = NetworkOffloads(rawValue: UInt32(TUN_F_CSUM))
    /// TCP over IPv4 segmentation (needs `checksum`).
    public static let tcp4 = NetworkOffloads(rawValue: UInt32(TUN_F_TSO4))
    /// TCP over IPv6 segmentation (needs `checksum`).
    public static let tcp6 = NetworkOffloads(rawValue: UInt32(TUN_F_TSO6))
    /// Segmentation of frames with ECN bits (needs `tcp4` or `tcp6`).
    public static let tcpECN = NetworkOffloads(rawValue: UInt32(TUN_F_TSO_ECN))

    /// Every offload Swiftlet can hand to a guest: checksums, and TCP segmentation over IPv4 and IPv6
    /// including ECN.
    public static let all: NetworkOffloads = [.checksum, .tcp4, .tcp6, .tcpECN]

    /// The same set with the dependencies the tap (and virtio) require: segmentation only with
    /// checksums, ECN only with segmentation.
    public var consistent: NetworkOffloads {
        guard contains(.checksum) else { return [] }
        var result = self
        if !result.contains(.tcp4) && !result.contains(.tcp6) { result.remove(.tcpECN) }
        return result
    }
}

/// Where virtio-net frames go and come from: a tap device, or an in-memory double in tests.
///
/// Every frame is preceded by a 12-byte `virtio_net_hdr_v1` (`VirtioNetHeader`) in both
/// directions, as a tap with IFF_VNET_HDR and TUNSETVNETHDRSZ 12 reads and writes it. Called on
/// the event-loop thread only.
public protocol NetworkBackend: AnyObject, Sendable {
    /// The interface name (for messages).
    var name: String { get }
    /// The offloads the backend can deliver to the guest (what `setReceiveOffloads` accepts).
    var supportedOffloads: NetworkOffloads { get }
    /// Which offloads may appear in frames read from now on (what the guest negotiated).
    func setReceiveOffloads(_ offloads: NetworkOffloads) throws(SystemError)
    /// Reads one frame, header first, into `vectors`. Returns its full length, which is larger
    /// than the vectors when the frame did not fit (it is then truncated and gone), or nil when
    /// no frame is waiting.
    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemError) -> Int?
    /// Sends one frame, header first, gathered from `vectors`.
    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemError)
}
