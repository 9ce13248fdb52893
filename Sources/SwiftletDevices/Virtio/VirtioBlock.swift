import CHost
import Glibc
import SwiftletHost
import SwiftletMemory

/// A virtio block device (virtio 1.2, 5.2) over a `BlockBackend` (a raw image file).
///
/// Requests (one descriptor chain each; the split between descriptors does not matter):
///
///     device-readable   header { type: u32, reserved: u32, sector: u64 }, then OUT data
///     device-writable   IN or GET_ID data, then the status byte (the chain's last byte)
///
/// - `IN` (0) reads and `OUT` (1) writes whole 512-byte sectors at `sector`; the request must
///   lie inside the disk, have at most `seg_max` data segments of at most `size_max` bytes
///   each, and `OUT` fails on a read-only disk. A write completes only after the backend wrote
///   it (pwrite returned).
/// - `FLUSH` (4) calls fdatasync. `GET_ID` (8) returns the device's id string (20 bytes,
///   NUL-padded). Other types answer `UNSUPP`.
/// A request without a status byte cannot be answered: it is returned with length 0.
///
/// With a `rateLimiter`, every request costs one operation, and IN and OUT requests their data
/// bytes as well; a request the limiter refuses is left in the ring (`.throttled`) untouched, to
/// be served once the limiter allows it.
public struct VirtioBlock: VirtioDevice {
    /// The virtio-blk sector in bytes: `sector`, `capacity` and IN/OUT lengths count in these whatever
    /// `blk_size` says (5.2.4, 5.2.6).
    public static let sectorSize: UInt64 = 512
    /// Length of the GET_ID answer.
    public static let identifierLength = 20

    /// Feature bits of virtio-blk (5.2.3).
    public enum Feature {
        /// VIRTIO_BLK_F_SIZE_MAX: the largest single data segment is in `size_max`.
        public static let sizeMax: UInt64 = 1 << 1
        /// VIRTIO_BLK_F_SEG_MAX: the most data segments in one request is in `seg_max`.
        public static let segmentMax: UInt64 = 1 << 2
        /// VIRTIO_BLK_F_RO: the device is read-only; offered only for a read-only disk.
        public static let readOnly: UInt64 = 1 << 5
        /// VIRTIO_BLK_F_BLK_SIZE: the logical block size is in `blk_size`.
        public static let blockSize: UInt64 = 1 << 6
        /// VIRTIO_BLK_F_FLUSH: the device takes FLUSH requests.
        public static let flush: UInt64 = 1 << 9
    }

    /// Request types.
    public enum RequestType {
        /// VIRTIO_BLK_T_IN: read sectors into the device-writable buffers.
        public static let read: UInt32 = 0
        /// VIRTIO_BLK_T_OUT: write the device-readable data after the header to the disk.
        public static let write: UInt32 = 1
        /// VIRTIO_BLK_T_FLUSH: make completed writes durable.
        public static let flush: UInt32 = 4
        /// VIRTIO_BLK_T_GET_ID: return the device's id string (20 bytes, NUL-padded).
        public static let getID: UInt32 = 8
    }

    /// The status byte the device writes last.
    public enum Status {
        /// VIRTIO_BLK_S_OK: the request succeeded.
        public static let ok: UInt8 = 0
        /// VIRTIO_BLK_S_IOERR: the request was refused or failed (bad range or segments, read-only disk,
        /// backend error).
        public static let ioError: UInt8 = 1
        /// VIRTIO_BLK_S_UNSUPP: the request type is not one the device knows.
        public static let unsupported: UInt8 = 2
    }

    /// What the device is, as a plain value (what a snapshot would save besides the image).
    public struct Settings: Equatable, Codable, Sendable {
        /// Disk size in 512-byte sectors.
        public var capacity: UInt64
        /// The disk refuses writes: VIRTIO_BLK_F_RO is offered and OUT requests answer IOERR.
        public var isReadOnly: Bool
        /// The GET_ID answer (at most 20 bytes; shorter ids are NUL-padded).
        public var identifier: [UInt8]
        /// Largest data segment, in bytes (config `size_max`).
        public var segmentSizeMaximum: UInt32
        /// Most data segments in one request (config `seg_max`).
        public var segmentCountMaximum: UInt32
        /// Logical block size reported to the driver (config `blk_size`).
        public var blockSize: UInt32
        /// The largest queue size the driver may choose.
        public var queueSizeMaximum: UInt16

        /// The default `queueSizeMaximum`, in descriptors.
        public static let defaultQueueSize: UInt16 = 256
        /// The default `segmentSizeMaximum`: 4 MiB.
        public static let defaultSegmentSizeMaximum: UInt32 = 4 << 20

        /// A disk of `capacity` sectors. `identifier` is cut to its first 20 bytes; `seg_max` follows from
        /// the queue size, less the two descriptors a chain needs for the header and the status byte.
        public init(
            capacity: UInt64, isReadOnly: Bool, identifier: [UInt8], queueSizeMaximum: UInt16 = defaultQueueSize,
            segmentSizeMaximum: UInt32 = defaultSegmentSizeMaximum, blockSize: UInt32 = UInt32(VirtioBlock.sectorSize)
        ) {
            self.capacity = capacity
            self.isReadOnly = isReadOnly
            self.identifier = Array(identifier.prefix(VirtioBlock.identifierLength))
            self.queueSizeMaximum = queueSizeMaximum
            self.segmentSizeMaximum = segmentSizeMaximum
            // Header and status take two descriptors of a chain no longer than the queue.
            self.segmentCountMaximum = UInt32(max(queueSizeMaximum, 3) - 2)
            self.blockSize = blockSize
        }
    }

    /// Requests served, by outcome.
    public struct Statistics: Equatable, Codable, Sendable {
        /// Successful IN requests.
        public var reads = 0
        /// Successful OUT requests.
        public var writes = 0
        /// Successful FLUSH requests.
        public var flushes = 0
        /// GET_ID requests answered.
        public var identifies = 0
        /// Bytes read from the disk into guest memory by successful IN requests.
        public var bytesRead: UInt64 = 0
        /// Bytes written to the disk by successful OUT requests.
        public var bytesWritten: UInt64 = 0
        /// Requests answered IOERR or UNSUPP, or that had no status byte.
        public var failures = 0
    }

    /// The device's fixed properties, taken from the backend and the options at creation.
    public let settings: Settings
    /// Where the sectors live.
    public let backend: any BlockBackend
    /// Requests served since the device was created; a reset does not clear them.
    public private(set) var statistics = Statistics()
    /// Scratch I/O vectors, reused for every request.
    private var vectors: [iovec] = []
    /// Limits on requests and bytes; nil: none. Host configuration, not saved with the device's
    /// state (the machine sets it again on restore, with full buckets).
    public var rateLimiter: RateLimiter?

    /// A device serving `backend`'s sectors; `identifier` is the GET_ID answer (its first 20
    /// bytes).
    public init(
        backend: any BlockBackend, readOnly: Bool, identifier: String, queueSizeMaximum: UInt16 = Settings.defaultQueueSize
    ) {
        self.backend = backend
        self.settings = Settings(
            capacity: backend.size / Self.sectorSize, isReadOnly: readOnly, identifier: Array(identifier.utf8),
            queueSizeMaximum: queueSizeMaximum)
        vectors.reserveCapacity(Int(settings.segmentCountMaximum))
    }

    /// A device with these settings and statistics over `backend` (restoring a saved state).
    private init(backend: any BlockBackend, settings: Settings, statistics: Statistics) {
        self.backend = backend
        self.settings = settings
        self.statistics = statistics
        vectors.reserveCapacity(Int(settings.segmentCountMaximum))
    }

    // MARK: VirtioDevice

    /// `VirtioDeviceType.block` (5.2.1).
    public var deviceType: UInt32 { VirtioDeviceType.block }
    /// One request queue (`requestq`, 5.2.2); VIRTIO_BLK_F_MQ is not offered.
    public var queueCount: Int { 1 }
    /// `settings.queueSizeMaximum`.
    public var maximumQueueSize: UInt16 { settings.queueSizeMaximum }

    /// VERSION_1, indirect descriptors and event index, with SIZE_MAX, SEG_MAX, BLK_SIZE and FLUSH,
    /// and RO for a read-only disk.
    public var offeredFeatures: UInt64 {
        var features = VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors | VirtioFeature.ringEventIndex
        features |= Feature.sizeMax | Feature.segmentMax | Feature.blockSize | Feature.flush
        if settings.isReadOnly { features |= Feature.readOnly }
        return features
    }

    /// `struct virtio_blk_config` up to `num_queues`: capacity (u64), size_max, seg_max,
    /// geometry (zero), blk_size, topology (zero), writeback (0), num_queues (1).
    public var configurationSpace: [UInt8] {
        var bytes: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        append(settings.capacity)
        append(settings.segmentSizeMaximum)
        append(settings.segmentCountMaximum)
        append(UInt32(0))  // geometry
        append(settings.blockSize)
        append(UInt64(0))  // topology
        append(UInt8(0))  // writeback
        append(UInt8(0))
        append(UInt16(1))  // num_queues
        return bytes
    }

    /// Nothing to set up: requests are served the same whichever features the driver accepted.
    public mutating func activate(features: UInt64) {}

    /// Nothing to do: the device keeps no state between requests (the statistics stay).
    public mutating func reset() {}

    /// Serves one request (see the type's description) and writes its status byte last. Returns the
    /// data bytes written into the chain plus one for the status byte, or 0 for a chain without a
    /// device-writable byte (no status can be given, so it counts as a failure).
    public mutating func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) -> VirtioChainResult {
        // The status byte is the last device-writable byte; without one there is no answer.
        guard chain.writableLength >= 1 else {
            statistics.failures += 1
            return .used(0)
        }
        let dataLength = chain.writableLength - 1
        var header = (UInt64(0), UInt64(0))
        let headerRead = withUnsafeMutableBytes(of: &header) { chain.copyReadable(from: 0, into: $0, memory: memory) }
        let type = headerRead == 16 ? UInt32(truncatingIfNeeded: UInt64(littleEndian: header.0)) : nil
        if rateLimiter != nil {
            let bytes: UInt64 =
                switch type {
                case RequestType.read: dataLength
                case RequestType.write: chain.readableLength - 16
                default: 0
                }
            if case .throttled(let nanoseconds) = rateLimiter?.consume(bytes: bytes, operations: 1) {
                return .throttled(nanoseconds: nanoseconds)
            }
        }
        let (status, written) = serve(
            chain, type: type, sector: UInt64(littleEndian: header.1), writableData: dataLength, memory: memory)
        var byte = status
        withUnsafeBytes(of: &byte) { _ = chain.copyToWritable(at: dataLength, from: $0, memory: memory) }
        if status != Status.ok { statistics.failures += 1 }
        return .used(UInt32(truncatingIfNeeded: written + 1))
    }

    /// Serves the request of `type` at `sector` (nil: the header was short); returns its status
    /// and how many data bytes went into the chain.
    private mutating func serve(
        _ chain: DescriptorChain, type: UInt32?, sector: UInt64, writableData: UInt64, memory: GuestMemory
    ) -> (UInt8, UInt64) {
        guard let type else { return (Status.ioError, 0) }
        switch type {
        case RequestType.read:
            guard transfer(chain, writing: false, sector: sector, dataOffset: 0, length: writableData, memory: memory) else {
                return (Status.ioError, 0)
            }
            statistics.reads += 1
            statistics.bytesRead += writableData
            return (Status.ok, writableData)
        case RequestType.write:
            let length = chain.readableLength - 16
            guard !settings.isReadOnly,
                transfer(chain, writing: true, sector: sector, dataOffset: 16, length: length, memory: memory)
            else { return (Status.ioError, 0) }
            statistics.writes += 1
            statistics.bytesWritten += length
            return (Status.ok, 0)
        case RequestType.flush:
            do { try backend.flush() } catch { return (Status.ioError, 0) }
            statistics.flushes += 1
            return (Status.ok, 0)
        case RequestType.getID:
            var identifier = settings.identifier + [UInt8](repeating: 0, count: Self.identifierLength - settings.identifier.count)
            identifier.removeLast(max(0, identifier.count - Int(min(writableData, UInt64(Self.identifierLength)))))
            let written = identifier.withUnsafeBytes { chain.copyToWritable(at: 0, from: $0, memory: memory) }
            statistics.identifies += 1
            return (Status.ok, UInt64(written))
        default:
            return (Status.unsupported, 0)
        }
    }

    /// Moves `length` bytes between the disk at `sector` and the chain's data buffers (the
    /// readable part from `dataOffset` for a write, the writable part before the status byte
    /// for a read). Returns false for a request the device refuses or that failed.
    private mutating func transfer(
        _ chain: DescriptorChain, writing: Bool, sector: UInt64, dataOffset: UInt64, length: UInt64, memory: GuestMemory
    ) -> Bool {
        guard length % Self.sectorSize == 0, sector <= settings.capacity,
            length / Self.sectorSize <= settings.capacity - sector
        else { return false }
        guard length > 0 else { return true }
        vectors.removeAll(keepingCapacity: true)
        var tooLarge = false
        let mapped = chain.forEachPiece(writable: !writing, offset: dataOffset, count: Int(length), memory: memory) {
            pointer, _, count in
            if count > Int(settings.segmentSizeMaximum) { tooLarge = true }
            vectors.append(iovec(iov_base: pointer, iov_len: count))
        }
        guard mapped == Int(length), !tooLarge, vectors.count <= Int(settings.segmentCountMaximum) else { return false }
        let backend = self.backend
        let offset = sector * Self.sectorSize
        do {
            try vectors.withUnsafeMutableBufferPointer { (vectors) throws(SystemError) in
                if writing { try backend.write(vectors, at: offset) } else { try backend.read(vectors, at: offset) }
            }
        } catch {
            return false
        }
        return true
    }
}

// MARK: - Saved state

extension VirtioBlock: PersistentDevice {
    /// The device model's saved state: what the driver sees of the disk and the request counters.
    /// (The negotiated features and the queue are the transport's.)
    public struct State: Codable, Equatable, Sendable {
        /// Capacity, read-only flag, id and limits, as offered to the driver.
        public var settings: Settings
        /// Requests served so far.
        public var statistics: Statistics

        /// A state with these parts.
        public init(settings: Settings, statistics: Statistics) {
            self.settings = settings
            self.statistics = statistics
        }
    }

    /// The disk image the sectors live in (opened again by the restoring machine).
    public typealias Resources = any BlockBackend

    /// The settings and statistics now.
    public func saveState() -> State { State(settings: settings, statistics: statistics) }

    /// A device in `state` over `backend`. Throws when the backend's size is not the saved
    /// capacity (the driver already knows the disk's size), or a setting is one the device never
    /// offers (an id longer than 20 bytes, a queue or block size not a power of two, a segment
    /// limit the queue cannot hold).
    public static func restore(from state: State, with backend: any BlockBackend) throws(DeviceRestoreError) -> VirtioBlock {
        let check = StateValidator(device: "virtio-blk")
        let settings = state.settings
        try check.matches(settings.capacity, backend.size / sectorSize, "settings.capacity")
        guard settings.identifier.count <= identifierLength else {
            throw check.error("settings.identifier", .tooLong(count: settings.identifier.count, capacity: identifierLength))
        }
        try check.powerOfTwo(settings.queueSizeMaximum, "settings.queueSizeMaximum")
        try check.atMost(settings.queueSizeMaximum, Virtqueue.maximumSize, "settings.queueSizeMaximum")
        // Header and status take two descriptors of a chain no longer than the queue.
        try check.atLeast(settings.segmentCountMaximum, 1, "settings.segmentCountMaximum")
        try check.atMost(
            settings.segmentCountMaximum, UInt32(max(settings.queueSizeMaximum, 3) - 2), "settings.segmentCountMaximum")
        try check.atLeast(settings.segmentSizeMaximum, 1, "settings.segmentSizeMaximum")
        try check.powerOfTwo(settings.blockSize, "settings.blockSize")
        try check.atLeast(settings.blockSize, UInt32(sectorSize), "settings.blockSize")
        let s = state.statistics
        try check.nonNegative(
            ["reads": s.reads, "writes": s.writes, "flushes": s.flushes, "identifies": s.identifies, "failures": s.failures],
            in: "statistics")
        return VirtioBlock(backend: backend, settings: settings, statistics: s)
    }
}
