import Glibc
import SwiftletDevices
import SwiftletHost

/// A snapshot that cannot be taken or restored: what failed, naming the file or field.
public enum SnapshotError: Error, Sendable, CustomStringConvertible {
    /// A host call on a snapshot file failed (open, read, write, mmap...).
    case file(path: String, SystemError)
    /// The state file is shorter than its header or than the payload length it gives.
    case truncated(path: String, bytes: Int, expected: Int)
    /// The state file does not start with `SnapshotFile.magic`.
    case notASnapshot(path: String)
    /// The state file has a format version this Swiftlet does not read.
    case unsupportedVersion(path: String, found: UInt32, supported: UInt32)
    /// The payload's CRC-32 is not the one in the header: the file was changed or damaged.
    case checksumMismatch(path: String, stored: UInt32, computed: UInt32)
    /// The payload passed its checksum but does not decode (written by a different build).
    case malformed(path: String, String)
    /// The memory file's size is not the guest RAM size the state records.
    case memorySizeMismatch(path: String, size: UInt64, expected: UInt64)
    /// Disk `index` (its path) has another size than when the snapshot was taken.
    case diskSizeChanged(index: Int, path: String, size: UInt64, saved: UInt64)
    /// More `--disk`/`--net` overrides than the snapshot has disks or interfaces.
    case tooManyOverrides(kind: String, given: Int, saved: Int)
    /// A saved vCPU or VM value has the wrong size for this host's KVM structures.
    case wrongStructureSize(field: String, size: Int, expected: Int)
    /// The machine has a device snapshots do not cover.
    case unsupportedDevice(String)
    /// Reading or writing KVM state failed.
    case kvm(SystemError)

    /// One line naming the file or field and what is wrong.
    public var description: String {
        switch self {
        case .file(let path, let error): "snapshot file \(path): \(error)"
        case .truncated(let path, let bytes, let expected):
            "snapshot state file \(path) is truncated: \(bytes) bytes, expected \(expected)"
        case .notASnapshot(let path): "\(path) is not a Swiftlet snapshot state file (bad magic)"
        case .unsupportedVersion(let path, let found, let supported):
            "snapshot state file \(path) has format version \(found); this Swiftlet reads version \(supported)"
        case .checksumMismatch(let path, let stored, let computed):
            "snapshot state file \(path) is corrupted: checksum \(hex(UInt64(computed))), header says \(hex(UInt64(stored)))"
        case .malformed(let path, let problem): "snapshot state file \(path) does not decode: \(problem)"
        case .memorySizeMismatch(let path, let size, let expected):
            "snapshot memory file \(path) has \(size) bytes, the state says \(expected)"
        case .diskSizeChanged(let index, let path, let size, let saved):
            "disk \(index) (\(path)) has \(size) bytes, but had \(saved) when the snapshot was taken"
        case .tooManyOverrides(let kind, let given, let saved):
            "\(given) \(kind) overrides given, but the snapshot has \(saved)"
        case .wrongStructureSize(let field, let size, let expected):
            "saved \(field) has \(size) bytes, this host's KVM structure \(expected)"
        case .unsupportedDevice(let device): "snapshots do not cover the \(device)"
        case .kvm(let error): "snapshot: \(error)"
        }
    }
}

/// The state file's layout: an 8-byte magic, the format version (u32), the payload's length
/// (u64) and CRC-32 (u32), all little-endian, then the payload (`BinaryEncoder` of a
/// `SnapshotState`).
enum SnapshotFile {
    /// `SWLTSNAP`.
    static let magic: [UInt8] = Array("SWLTSNAP".utf8)
    /// The format this build writes and reads.
    static let version: UInt32 = 2
    /// Magic, version, length, checksum.
    static let headerSize = 8 + 4 + 8 + 4
    /// The state file's name in a snapshot directory.
    static let stateName = "state"
    /// The memory file's name in a snapshot directory.
    static let memoryName = "memory"

    /// Header and payload.
    static func encode(payload: [UInt8]) -> [UInt8] {
        var out = magic
        appendLittleEndian(version, to: &out)
        appendLittleEndian(UInt64(payload.count), to: &out)
        appendLittleEndian(CRC32.checksum(payload), to: &out)
        out += payload
        return out
    }

    /// The payload of the state file `bytes` (read from `path`), after checking the header.
    static func payload(of bytes: [UInt8], path: String) throws(SnapshotError) -> [UInt8] {
        guard bytes.count >= headerSize else {
            if bytes.count >= magic.count, Array(bytes[0..<magic.count]) != magic { throw .notASnapshot(path: path) }
            throw .truncated(path: path, bytes: bytes.count, expected: headerSize)
        }
        guard Array(bytes[0..<8]) == magic else { throw .notASnapshot(path: path) }
        let found = UInt32(littleEndianBytes: bytes[8..<12])
        guard found == version else { throw .unsupportedVersion(path: path, found: found, supported: version) }
        let length = UInt64(littleEndianBytes: bytes[12..<20])
        let stored = UInt32(littleEndianBytes: bytes[20..<24])
        let available = UInt64(bytes.count - headerSize)
        guard length == available else {
            if length > available {
                throw .truncated(path: path, bytes: bytes.count, expected: headerSize + Int(clamping: length))
            }
            throw .malformed(path: path, "\(available - length) bytes after the payload")
        }
        let payload = Array(bytes[headerSize...])
        let computed = CRC32.checksum(payload)
        guard computed == stored else { throw .checksumMismatch(path: path, stored: stored, computed: computed) }
        return payload
    }

    private static func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        for i in 0..<MemoryLayout<T>.size { out.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }
}

extension FixedWidthInteger {
    /// The integer whose little-endian bytes are `bytes` (exactly its size).
    init(littleEndianBytes bytes: ArraySlice<UInt8>) {
        var value = Self.zero
        for (i, byte) in bytes.enumerated() { value |= Self(byte) << (8 * i) }
        self = value
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib computes it.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { (n: UInt32) in
        var c = n
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// The CRC-32 of `bytes`.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}

/// Whole-file reads and writes for snapshot files.
enum SnapshotIO {
    /// Every byte of `path`.
    static func readAll(_ path: String) throws(SnapshotError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw .file(path: path, SystemError.current("open")) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .file(path: path, SystemError.current("read"))
            }
            if count == 0 { return out }
            out += chunk[0..<count]
        }
    }

    /// Creates (or truncates) `path` and returns its descriptor.
    static func create(_ path: String) throws(SnapshotError) -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw .file(path: path, SystemError.current("create")) }
        return fd
    }

    /// Writes `count` bytes from `base` at `offset` of `fd`.
    static func write(_ fd: Int32, _ base: UnsafeRawPointer, count: Int, at offset: Int, path: String)
        throws(SnapshotError)
    {
        var done = 0
        while done < count {
            let written = pwrite(fd, base + done, count - done, off_t(offset + done))
            if written < 0 {
                if errno == EINTR { continue }
                throw .file(path: path, SystemError.current("write"))
            }
            done += written
        }
    }
}
