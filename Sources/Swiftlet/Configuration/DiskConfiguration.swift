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

    /// A disk backed by the image at `path`; by default writable, with the id `disk<N>`, through the
    /// host page cache, as `--disk path=FILE` gives.
    public init(path: String, readOnly: Bool = false, id: String? = nil, directIO: Bool = false) {
        self.path = path
        self.readOnly = readOnly
        self.id = id
        self.directIO = directIO
    }

    /// Parses the CLI's `--disk` value: `path=FILE[,readonly=on][,id=NAME][,direct=on]`
    /// (`on`/`off` also as `true`/`false`, `yes`/`no`, `1`/`0`). A value without `=` is taken
    /// as the path.
    public static func parse(_ text: String) throws(DiskOptionError) -> DiskConfiguration {
        var path: String?
        var disk = DiskConfiguration(path: "")
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let equals = item.firstIndex(of: "=") else {
                guard path == nil, !item.isEmpty else { throw .malformed(String(item)) }
                path = String(item)
                continue
            }
            let key = String(item[..<equals])
            let value = String(item[item.index(after: equals)...])
            switch key {
            case "path", "file":
                guard path == nil else { throw .duplicate(key) }
                path = value
            case "readonly", "ro": disk.readOnly = try flag(key, value)
            case "direct": disk.directIO = try flag(key, value)
            case "id", "serial":
                guard value.utf8.count <= VirtioBlock.identifierLength else { throw .identifierTooLong(value) }
                disk.id = value
            default: throw .unknownKey(key)
            }
        }
        guard let path, !path.isEmpty else { throw .missingPath }
        disk.path = path
        return disk
    }

    private static func flag(_ key: String, _ value: String) throws(DiskOptionError) -> Bool {
        switch value {
        case "on", "true", "yes", "1": true
        case "off", "false", "no", "0": false
        default: throw .badFlag(key: key, value: value)
        }
    }
}

/// A `--disk` value that cannot be read.
public enum DiskOptionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No image: neither `path=FILE` nor a bare path was given, or it was empty.
    case missingPath
    /// An empty item, or a second item without `=` (only the path may be given bare).
    case malformed(String)
    /// The path (`path`/`file`) was given twice; the key as written.
    case duplicate(String)
    /// A key other than `path` (`file`), `readonly` (`ro`), `id` (`serial`) and `direct`.
    case unknownKey(String)
    /// A `readonly` or `direct` value other than `on`/`off` (or `true`/`false`, `yes`/`no`, `1`/`0`).
    case badFlag(key: String, value: String)
    /// An `id` longer than 20 bytes in UTF-8 (`VirtioBlock.identifierLength`), the size of the GET_ID answer.
    case identifierTooLong(String)

    /// A one-line explanation of the item, with the form it should take.
    public var description: String {
        switch self {
        case .missingPath: "no image given (path=FILE)"
        case .malformed(let item): "cannot read '\(item)': use key=value"
        case .duplicate(let key): "'\(key)' given twice"
        case .unknownKey(let key): "unknown option '\(key)'; use path, readonly, id or direct"
        case .badFlag(let key, let value): "\(key)=\(value): use on or off"
        case .identifierTooLong(let id): "id '\(id)' is longer than \(VirtioBlock.identifierLength) bytes"
        }
    }
}
