import SwiftletDevices

/// The machine's virtio-vsock device, as a plain value (`MachineConfiguration.vsock`): the guest's
/// CID and the host's Unix socket, Firecracker's hybrid vsock (Docs/VSOCK.md).
///
/// A host program connects to `udsPath` and writes `CONNECT <port>\n` to reach guest port
/// `port`; a guest connection to host CID 2 port P is connected to the Unix socket
/// `udsPath + "_" + P`.
public struct VsockConfiguration: Equatable, Sendable {
    /// The guest's context id (3 or more; 0-2 are reserved, 0xffffffff is VMADDR_CID_ANY).
    public var guestCID: UInt64
    /// The Unix socket Swiftlet listens on (it must not exist; it is removed when the machine ends).
    public var udsPath: String

    /// A device for the guest `guestCID` listening at `udsPath`. Nothing is checked until
    /// `validate()`.
    public init(guestCID: UInt64, udsPath: String) {
        self.guestCID = guestCID
        self.udsPath = udsPath
    }

    /// The longest `udsPath` in bytes: `sun_path` holds 107 bytes and a NUL, and a guest-initiated
    /// connection adds `_` and up to 10 digits.
    public static let maximumPathBytes = 107 - 11

    /// Checks the CID (3 ..< 0xffffffff) and that the path is non-empty and short enough.
    public func validate() throws(ConfigurationError) {
        guard guestCID >= 3, guestCID < 0xFFFF_FFFF else {
            throw .badVsock("cid \(guestCID) is reserved or too large; use 3 to 4294967294")
        }
        guard !udsPath.isEmpty else { throw .badVsock("the socket path is empty") }
        guard udsPath.utf8.count <= Self.maximumPathBytes else {
            throw .badVsock("socket path \(udsPath) is longer than \(Self.maximumPathBytes) bytes")
        }
    }
}
