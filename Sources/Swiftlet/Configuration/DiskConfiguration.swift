import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// One virtio-blk disk of a machine, as a plain value (`MachineConfiguration.disks`).
public struct DiskConfiguration: Equatable, Sendable {
    /// The raw image file (or host block device).
    public var path: String
    /// The guest may only read: VIRTIO_BLK_F_RO is offered and writes fail with IOERR.
    public var readOnly: Bool
    /// The GET_ID answer (at most 20 bytes); nil means `disk<N>` for the N-th disk.
    public var id: String?
    /// Open the image with O_DIRECT (no host page cache); its size must be a multiple of 4 KiB.
    public var directIO: Bool
    /// Limits on the guest's requests (bytes and operations, Firecracker-style token buckets); nil:
    /// none. A request the limiter refuses waits in the queue, retried from a timer.
    public var rateLimit: RateLimit?

    /// A disk backed by the image at `path`; by default writable, with the id `disk<N>`, through the
    /// host page cache, as `--disk path=FILE` gives (the CLI reads `--disk` itself). Nothing is
    /// checked until `validate()`.
    public init(path: String, readOnly: Bool = false, id: String? = nil, directIO: Bool = false, rateLimit: RateLimit? = nil) {
        self.path = path
        self.readOnly = readOnly
        self.id = id
        self.directIO = directIO
        self.rateLimit = rateLimit
    }

    /// Checks what can be checked without opening the image: there is a path, the id (if any)
    /// fits the GET_ID answer, and the rate limit's buckets are usable. `MachineConfiguration.validate()`
    /// calls it for every disk.
    public func validate() throws(ConfigurationError) {
        guard !path.isEmpty else { throw .diskWithoutPath }
        if let id, id.utf8.count > VirtioBlock.identifierLength { throw .diskIdentifierTooLong(id) }
        if let problem = rateLimit?.bandwidth?.problem { throw .badDiskRateLimit(path: path, bucket: "bw", reason: problem) }
        if let problem = rateLimit?.operations?.problem { throw .badDiskRateLimit(path: path, bucket: "ops", reason: problem) }
    }
}
