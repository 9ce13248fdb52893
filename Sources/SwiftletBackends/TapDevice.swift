import CHost
import Glibc
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// A tap interface opened through `/dev/net/tun`: the host end of a virtio-net device.
///
/// Opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (Ethernet frames, no packet-information
/// prefix, a virtio-net header before each frame), a 12-byte header (`TUNSETVNETHDRSZ`, the
/// VERSION_1 layout with `num_buffers`), non-blocking. An interface of that name that already
/// exists (`ip tuntap add NAME mode tap`) is attached to; otherwise the kernel creates one that
/// goes away with the descriptor. At open the supported offloads are probed with
/// `TUNSETOFFLOAD` and then switched off until a guest negotiates them.
///
/// Reads and writes happen on the event-loop thread only (`VirtioNet`).
public final class TapDevice: NetworkBackend {
    /// The interface name as the kernel reports it.
    public let name: String
    /// What the tun driver accepted when probed with `TUNSETOFFLOAD` at open: none, `checksum`, or `all`.
    public let supportedOffloads: NetworkOffloads
    let descriptor: OwnedFileDescriptor

    /// What Linux accepts as an interface name: 1-15 bytes, not `.` or `..`, no `/`, `:`,
    /// white space or NUL.
    public static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), name != ".", name != ".." else { return false }
        return !bytes.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }

    /// The virtio-net header size (`virtio_net_hdr_v1`).
    static let headerSize: Int32 = 12

    /// Opens (or creates) the tap interface `name` in the calling thread's network namespace.
    public init(name: String) throws(TapError) {
        guard Self.isValidInterfaceName(name) else { throw .invalidName(name) }
        let fd: OwnedFileDescriptor
        do { fd = try OwnedFileDescriptor(opening: "/dev/net/tun", flags: O_RDWR | O_NONBLOCK) } catch {
            throw .open(name: name, error)
        }
        var features: UInt32 = 0
        if swl_ioctl_pointer(fd.rawValue, SWL_TUNGETFEATURES, &features) != 0 {
            throw .open(name: name, SystemError.current("TUNGETFEATURES"))
        }
        let flags = Int32(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        guard features & UInt32(flags) == UInt32(flags) else { throw .unsupported(name: name, features: features) }
        var actual = [CChar](repeating: 0, count: 16)
        let attached = actual.withUnsafeMutableBufferPointer { swl_tun_set_iff(fd.rawValue, name, flags, $0.baseAddress!) }
        if attached != 0 { throw .open(name: name, SystemError.current("TUNSETIFF \(name)")) }
        var headerSize = Self.headerSize
        if swl_ioctl_pointer(fd.rawValue, SWL_TUNSETVNETHDRSZ, &headerSize) != 0 {
            throw .open(name: name, SystemError.current("TUNSETVNETHDRSZ"))
        }
        // Probe: checksums alone, then with segmentation. The kernel refuses what it cannot do.
        var supported: NetworkOffloads = []
        if swl_ioctl_value(fd.rawValue, SWL_TUNSETOFFLOAD, UInt(NetworkOffloads.checksum.rawValue)) == 0 {
            supported = .checksum
            if swl_ioctl_value(fd.rawValue, SWL_TUNSETOFFLOAD, UInt(NetworkOffloads.all.rawValue)) == 0 { supported = .all }
        }
        if swl_ioctl_value(fd.rawValue, SWL_TUNSETOFFLOAD, 0) != 0 {
            throw .open(name: name, SystemError.current("TUNSETOFFLOAD 0"))
        }
        self.name = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.supportedOffloads = supported
        self.descriptor = fd
    }

    /// The descriptor, for the event loop.
    public var fileDescriptor: Int32 { descriptor.rawValue }

    /// Sets `TUNSETOFFLOAD` to `offloads` limited to `supportedOffloads` and made `consistent`;
    /// throws the ioctl's error.
    public func setReceiveOffloads(_ offloads: NetworkOffloads) throws(SystemError) {
        let flags = offloads.intersection(supportedOffloads).consistent
        if swl_ioctl_value(descriptor.rawValue, SWL_TUNSETOFFLOAD, UInt(flags.rawValue)) != 0 {
            throw SystemError.current("TUNSETOFFLOAD \(name)")
        }
    }

    /// Reads the next frame, header first, with one readv(2), retrying on EINTR. Returns readv's
    /// count (for a frame cut to fit the vectors, the full or the cut length, depending on the
    /// kernel), or nil when no frame is waiting (EAGAIN: the descriptor is non-blocking); throws any
    /// other read error.
    public func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemError) -> Int? {
        while true {
            let count = readv(descriptor.rawValue, vectors.baseAddress, Int32(vectors.count))
            if count >= 0 { return count }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN: return nil
            default: throw SystemError.current("read from tap \(name)")
            }
        }
    }

    /// Writes one frame, header first, with one writev(2), retrying on EINTR; throws any other write
    /// error (the frame is then not sent).
    public func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemError) {
        while true {
            // A tap takes a whole frame per write or fails; it never writes part of one.
            if writev(descriptor.rawValue, vectors.baseAddress, Int32(vectors.count)) >= 0 { return }
            if Glibc.errno != EINTR { throw SystemError.current("write to tap \(name)") }
        }
    }
}

/// A tap that cannot be used.
public enum TapError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The name is not one Linux accepts for an interface (`TapDevice.isValidInterfaceName`).
    case invalidName(String)
    /// Opening `/dev/net/tun` or setting up the interface (TUNGETFEATURES, TUNSETIFF, TUNSETVNETHDRSZ,
    /// TUNSETOFFLOAD) failed, e.g. with EPERM when the user may not create or attach to the tap.
    case open(name: String, SystemError)
    /// The tun driver lacks IFF_TAP, IFF_NO_PI or IFF_VNET_HDR; `features` is what TUNGETFEATURES reported.
    case unsupported(name: String, features: UInt32)

    /// A one-line explanation naming the tap.
    public var description: String {
        switch self {
        case .invalidName(let name): "'\(name)' is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        case .open(let name, let error): "cannot open tap '\(name)': \(error)"
        case .unsupported(let name, let features):
            "cannot open tap '\(name)': the kernel's tun driver lacks IFF_TAP, IFF_NO_PI or IFF_VNET_HDR (features 0x\(String(features, radix: 16)))"
        }
    }
}
