import FoundationEssentials
import Swiftlet

// Firecracker's request and response bodies (src/firecracker/swagger/firecracker.yaml), as
// Codable structs with Firecracker's snake_case field names. Decoding is strict, as
// Firecracker's (serde `deny_unknown_fields`): every object goes through `StrictObject`, which
// refuses a key the model does not have, naming it and the keys it expected.

/// A request body or configuration file that cannot be used as JSON of the expected shape.
public struct APIDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// One line: where in the document (`drives.rate_limiter.bandwidth`) and what is wrong.
    public let message: String

    /// An error with this message.
    public init(_ message: String) { self.message = message }

    /// The message.
    public var description: String { message }

    /// The error for a key no model field has.
    static func unknownField(_ key: String, at path: String, expected: [String]) -> APIDecodingError {
        let list = expected.map { "`\($0)`" }.joined(separator: ", ")
        return APIDecodingError("unknown field `\(key)`\(path.isEmpty ? "" : " in \(path)"), expected one of \(list)")
    }

    /// The error for a required field that is missing or null.
    static func missingField(_ key: String, at path: String) -> APIDecodingError {
        APIDecodingError("missing field `\(key)`\(path.isEmpty ? "" : " in \(path)")")
    }

    /// `error` (from JSONDecoder) as one line naming the field.
    static func from(_ error: any Error) -> APIDecodingError {
        if let error = error as? APIDecodingError { return error }
        guard let error = error as? DecodingError else { return APIDecodingError("\(error)") }
        switch error {
        case .typeMismatch(let type, let context):
            return APIDecodingError("invalid type at \(describe(context.codingPath)): expected \(typeName(type))")
        case .valueNotFound(let type, let context):
            return APIDecodingError("missing value at \(describe(context.codingPath)): expected \(typeName(type))")
        case .keyNotFound(let key, let context):
            return missingField(key.stringValue, at: codingPathDescription(context.codingPath))
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return APIDecodingError("the body is not valid JSON: \(context.debugDescription)")
            }
            return APIDecodingError("invalid value at \(describe(context.codingPath)): \(context.debugDescription)")
        @unknown default:
            return APIDecodingError("\(error)")
        }
    }

    private static func describe(_ path: [any CodingKey]) -> String {
        let text = codingPathDescription(path)
        return text.isEmpty ? "the top level" : "`\(text)`"
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is UInt64.Type, is UInt32.Type, is UInt8.Type, is UInt.Type: "an unsigned integer"
        case is Int.Type, is Int64.Type: "an integer"
        case is Double.Type: "a number"
        default: type is any Collection.Type ? "an array" : "an object"
        }
    }
}

/// A JSON object key of any name: lets `StrictObject` see every key an object has.
struct AnyJSONKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// One JSON object of a request, read field by field: `init` refuses any key that is not one of
/// `Keys` (as Firecracker does), and `required` refuses a missing or null field.
struct StrictObject<Keys: CodingKey & CaseIterable> {
    let container: KeyedDecodingContainer<Keys>
    let path: String

    init(_ decoder: any Decoder) throws {
        let all = try decoder.container(keyedBy: AnyJSONKey.self)
        path = codingPathDescription(decoder.codingPath)
        let known = Keys.allCases.map(\.stringValue)
        for key in all.allKeys where !known.contains(key.stringValue) {
            throw APIDecodingError.unknownField(key.stringValue, at: path, expected: known)
        }
        container = try decoder.container(keyedBy: Keys.self)
    }

    /// The field's value; nil when it is absent or null.
    func optional<T: Decodable>(_ key: Keys) throws -> T? {
        try container.decodeIfPresent(T.self, forKey: key)
    }

    /// The field's value; a missing or null field is an error naming it.
    func required<T: Decodable>(_ key: Keys) throws -> T {
        guard let value = try container.decodeIfPresent(T.self, forKey: key) else {
            throw APIDecodingError.missingField(key.stringValue, at: path)
        }
        return value
    }
}

/// JSON coding shared by the server and the config file: compact output, keys sorted so that
/// answers are stable.
enum APIJSON {
    /// Decodes `bytes` as `T`; every failure is an `APIDecodingError` naming the field.
    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(APIDecodingError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw APIDecodingError.from(error)
        }
    }

    /// `value` as JSON bytes.
    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Every model is plain strings, numbers, booleans and arrays: encoding cannot fail.
        guard let data = try? encoder.encode(value) else { return Array("{}".utf8) }
        return [UInt8](data)
    }
}

// MARK: - Machine

/// `machine-config` (PUT, PATCH, GET): the vCPUs and memory. In a PUT `vcpu_count` and
/// `mem_size_mib` are required; in a PATCH every field is optional.
public struct MachineConfigModel: Codable, Equatable, Sendable {
    /// 1 to `MachineConfiguration.maximumVCPUs`.
    public var vcpuCount: Int?
    /// Guest memory in MiB.
    public var memSizeMib: UInt64?
    /// Simultaneous multithreading: Swiftlet's vCPUs are single-thread cores, so only false.
    public var smt: Bool?
    /// Dirty-page tracking for diff snapshots: not in Swiftlet, so only false.
    public var trackDirtyPages: Bool?
    /// A static CPU template: only "None" (Swiftlet has `--cpuid-mask` instead).
    public var cpuTemplate: String?
    /// Huge pages for guest memory: only "None".
    public var hugePages: String?

    /// A configuration with these fields.
    public init(
        vcpuCount: Int? = nil, memSizeMib: UInt64? = nil, smt: Bool? = nil, trackDirtyPages: Bool? = nil,
        cpuTemplate: String? = nil, hugePages: String? = nil
    ) {
        self.vcpuCount = vcpuCount
        self.memSizeMib = memSizeMib
        self.smt = smt
        self.trackDirtyPages = trackDirtyPages
        self.cpuTemplate = cpuTemplate
        self.hugePages = hugePages
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case vcpuCount = "vcpu_count", memSizeMib = "mem_size_mib", smt, trackDirtyPages = "track_dirty_pages"
        case cpuTemplate = "cpu_template", hugePages = "huge_pages"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        vcpuCount = try object.optional(.vcpuCount)
        memSizeMib = try object.optional(.memSizeMib)
        smt = try object.optional(.smt)
        trackDirtyPages = try object.optional(.trackDirtyPages)
        cpuTemplate = try object.optional(.cpuTemplate)
        hugePages = try object.optional(.hugePages)
    }
}

/// `boot-source` (PUT): the kernel, its command line and the initrd.
public struct BootSourceModel: Codable, Equatable, Sendable {
    /// The kernel image (ELF vmlinux or bzImage).
    public var kernelImagePath: String
    /// The kernel command line; absent: Swiftlet's default (`LinuxBoot.defaultCommandLine`).
    public var bootArgs: String?
    /// The initrd or initramfs.
    public var initrdPath: String?

    /// A boot source with these fields.
    public init(kernelImagePath: String, bootArgs: String? = nil, initrdPath: String? = nil) {
        self.kernelImagePath = kernelImagePath
        self.bootArgs = bootArgs
        self.initrdPath = initrdPath
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kernelImagePath = "kernel_image_path", bootArgs = "boot_args", initrdPath = "initrd_path"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        kernelImagePath = try object.required(.kernelImagePath)
        bootArgs = try object.optional(.bootArgs)
        initrdPath = try object.optional(.initrdPath)
    }
}

// MARK: - Rate limiters

/// A token bucket (`TokenBucket` in Firecracker's document): `size` tokens refilled from empty
/// in `refill_time` ms, plus `one_time_burst` extra tokens. A size or refill time of 0 means no
/// limit, as in Firecracker.
public struct TokenBucketModel: Codable, Equatable, Sendable {
    /// Tokens (bytes or operations) the bucket holds.
    public var size: UInt64
    /// Extra tokens available once.
    public var oneTimeBurst: UInt64?
    /// Milliseconds to fill an empty bucket.
    public var refillTime: UInt64

    /// A bucket with these fields.
    public init(size: UInt64, oneTimeBurst: UInt64? = nil, refillTime: UInt64) {
        self.size = size
        self.oneTimeBurst = oneTimeBurst
        self.refillTime = refillTime
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case size, oneTimeBurst = "one_time_burst", refillTime = "refill_time"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        size = try object.required(.size)
        oneTimeBurst = try object.optional(.oneTimeBurst)
        refillTime = try object.required(.refillTime)
    }

    /// The library's bucket, or nil for a bucket that limits nothing (size or refill time 0).
    var limit: TokenBucketLimit? {
        guard size > 0, refillTime > 0 else { return nil }
        return TokenBucketLimit(size: size, refillTimeMilliseconds: refillTime, oneTimeBurst: oneTimeBurst ?? 0)
    }
}

/// A rate limiter (`RateLimiter`): a bandwidth bucket (bytes) and an operations bucket.
public struct RateLimiterModel: Codable, Equatable, Sendable {
    /// Bytes.
    public var bandwidth: TokenBucketModel?
    /// Requests or frames.
    public var ops: TokenBucketModel?

    /// A limiter with these buckets.
    public init(bandwidth: TokenBucketModel? = nil, ops: TokenBucketModel? = nil) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case bandwidth, ops
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        bandwidth = try object.optional(.bandwidth)
        ops = try object.optional(.ops)
    }

    /// The library's limits (Sources/SwiftletDevices/RateLimiter.swift), or nil when neither
    /// bucket limits anything.
    var rateLimit: RateLimit? {
        let limit = RateLimit(bandwidth: bandwidth?.limit, operations: ops?.limit)
        return limit.isUnlimited ? nil : limit
    }
}

// MARK: - Devices

/// `drives/{drive_id}` (PUT): a virtio-blk disk over a host file.
public struct DriveModel: Codable, Equatable, Sendable {
    /// The drive's name in the API (also the guest's serial for it, when it fits 20 bytes).
    public var driveID: String
    /// The raw image (file or host block device).
    public var pathOnHost: String?
    /// The guest's root file system: this drive becomes /dev/vda and `root=/dev/vda` (or
    /// `root=PARTUUID=`) is added to the command line.
    public var isRootDevice: Bool
    /// Offered read-only.
    public var isReadOnly: Bool?
    /// The partition's UUID, for the root device's `root=PARTUUID=`.
    public var partuuid: String?
    /// "Unsafe" or "Writeback": Swiftlet always honours flushes (Docs/API-SOCKET.md).
    public var cacheType: String?
    /// Limits on the guest's requests.
    public var rateLimiter: RateLimiterModel?
    /// "Sync" only (Swiftlet's disk I/O runs on its event loop; no io_uring).
    public var ioEngine: String?
    /// A vhost-user socket: not supported.
    public var socket: String?

    /// A drive with these fields.
    public init(
        driveID: String, pathOnHost: String?, isRootDevice: Bool, isReadOnly: Bool? = nil, partuuid: String? = nil,
        cacheType: String? = nil, rateLimiter: RateLimiterModel? = nil, ioEngine: String? = nil, socket: String? = nil
    ) {
        self.driveID = driveID
        self.pathOnHost = pathOnHost
        self.isRootDevice = isRootDevice
        self.isReadOnly = isReadOnly
        self.partuuid = partuuid
        self.cacheType = cacheType
        self.rateLimiter = rateLimiter
        self.ioEngine = ioEngine
        self.socket = socket
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case driveID = "drive_id", pathOnHost = "path_on_host", isRootDevice = "is_root_device", isReadOnly = "is_read_only"
        case partuuid, cacheType = "cache_type", rateLimiter = "rate_limiter", ioEngine = "io_engine", socket
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        driveID = try object.required(.driveID)
        pathOnHost = try object.optional(.pathOnHost)
        isRootDevice = try object.required(.isRootDevice)
        isReadOnly = try object.optional(.isReadOnly)
        partuuid = try object.optional(.partuuid)
        cacheType = try object.optional(.cacheType)
        rateLimiter = try object.optional(.rateLimiter)
        ioEngine = try object.optional(.ioEngine)
        socket = try object.optional(.socket)
    }
}

/// `drives/{drive_id}` (PATCH): a new backing file or rate limiter for a running guest's drive.
public struct PartialDriveModel: Codable, Equatable, Sendable {
    /// The drive.
    public var driveID: String
    /// A new backing file.
    public var pathOnHost: String?
    /// New limits.
    public var rateLimiter: RateLimiterModel?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case driveID = "drive_id", pathOnHost = "path_on_host", rateLimiter = "rate_limiter"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        driveID = try object.required(.driveID)
        pathOnHost = try object.optional(.pathOnHost)
        rateLimiter = try object.optional(.rateLimiter)
    }
}

/// `network-interfaces/{iface_id}` (PUT): a virtio-net interface over a host tap.
public struct NetworkInterfaceModel: Codable, Equatable, Sendable {
    /// The interface's name in the API.
    public var ifaceID: String
    /// The host tap.
    public var hostDevName: String
    /// The guest's MAC address (`02:00:00:00:00:01`); absent: generated from the tap name.
    public var guestMac: String?
    /// Limits on frames delivered to the guest.
    public var rxRateLimiter: RateLimiterModel?
    /// Limits on frames the guest sends.
    public var txRateLimiter: RateLimiterModel?

    /// An interface with these fields.
    public init(
        ifaceID: String, hostDevName: String, guestMac: String? = nil, rxRateLimiter: RateLimiterModel? = nil,
        txRateLimiter: RateLimiterModel? = nil
    ) {
        self.ifaceID = ifaceID
        self.hostDevName = hostDevName
        self.guestMac = guestMac
        self.rxRateLimiter = rxRateLimiter
        self.txRateLimiter = txRateLimiter
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case ifaceID = "iface_id", hostDevName = "host_dev_name", guestMac = "guest_mac"
        case rxRateLimiter = "rx_rate_limiter", txRateLimiter = "tx_rate_limiter"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        ifaceID = try object.required(.ifaceID)
        hostDevName = try object.required(.hostDevName)
        guestMac = try object.optional(.guestMac)
        rxRateLimiter = try object.optional(.rxRateLimiter)
        txRateLimiter = try object.optional(.txRateLimiter)
    }
}

/// `network-interfaces/{iface_id}` (PATCH): new rate limiters for a running guest's interface.
public struct PartialNetworkInterfaceModel: Codable, Equatable, Sendable {
    /// The interface.
    public var ifaceID: String
    /// New receive limits.
    public var rxRateLimiter: RateLimiterModel?
    /// New transmit limits.
    public var txRateLimiter: RateLimiterModel?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case ifaceID = "iface_id", rxRateLimiter = "rx_rate_limiter", txRateLimiter = "tx_rate_limiter"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        ifaceID = try object.required(.ifaceID)
        rxRateLimiter = try object.optional(.rxRateLimiter)
        txRateLimiter = try object.optional(.txRateLimiter)
    }
}

/// `vsock` (PUT): a virtio-vsock device bridged to a host Unix socket.
public struct VsockModel: Codable, Equatable, Sendable {
    /// The guest's context id (3 or more).
    public var guestCID: UInt32
    /// The host-side Unix socket.
    public var udsPath: String
    /// Deprecated in Firecracker; accepted and ignored there.
    public var vsockID: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case guestCID = "guest_cid", udsPath = "uds_path", vsockID = "vsock_id"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        guestCID = try object.required(.guestCID)
        udsPath = try object.required(.udsPath)
        vsockID = try object.optional(.vsockID)
    }
}

/// `entropy` (PUT): a virtio-rng device (Swiftlet's, fed by getrandom).
public struct EntropyModel: Codable, Equatable, Sendable {
    /// Limits on the guest's requests: not supported for the rng.
    public var rateLimiter: RateLimiterModel?

    /// An entropy device.
    public init(rateLimiter: RateLimiterModel? = nil) { self.rateLimiter = rateLimiter }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case rateLimiter = "rate_limiter"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        rateLimiter = try object.optional(.rateLimiter)
    }
}

// MARK: - Actions, state, snapshots

/// `actions` (PUT): `InstanceStart`, `SendCtrlAltDel` or `FlushMetrics`.
public struct InstanceActionModel: Codable, Equatable, Sendable {
    /// The action.
    public var actionType: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case actionType = "action_type"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        actionType = try object.required(.actionType)
    }
}

/// `vm` (PATCH): `Paused` or `Resumed`.
public struct VMStateModel: Codable, Equatable, Sendable {
    /// The state asked for.
    public var state: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case state
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        state = try object.required(.state)
    }
}

/// `snapshot/create` (PUT): where to write the state and the memory of a paused guest.
public struct SnapshotCreateModel: Codable, Equatable, Sendable {
    /// "Full" (the default); "Diff" is not supported.
    public var snapshotType: String?
    /// The state file.
    public var snapshotPath: String
    /// The memory file.
    public var memFilePath: String
    /// Deprecated (Firecracker 1.x's target snapshot version); refused when given.
    public var version: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case snapshotType = "snapshot_type", snapshotPath = "snapshot_path", memFilePath = "mem_file_path", version
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        snapshotType = try object.optional(.snapshotType)
        snapshotPath = try object.required(.snapshotPath)
        memFilePath = try object.required(.memFilePath)
        version = try object.optional(.version)
    }
}

/// The memory of a snapshot to load (`MemoryBackend`): a file ("File"); "Uffd" is not supported.
public struct MemoryBackendModel: Codable, Equatable, Sendable {
    /// "File" or "Uffd".
    public var backendType: String
    /// The memory file (or, for Uffd, the handler's socket).
    public var backendPath: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case backendType = "backend_type", backendPath = "backend_path"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        backendType = try object.required(.backendType)
        backendPath = try object.required(.backendPath)
    }
}

/// A tap replacing a saved interface's on load (`NetworkOverride`).
public struct NetworkOverrideModel: Codable, Equatable, Sendable {
    /// The interface, by its API name.
    public var ifaceID: String
    /// The new tap.
    public var hostDevName: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case ifaceID = "iface_id", hostDevName = "host_dev_name"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        ifaceID = try object.required(.ifaceID)
        hostDevName = try object.required(.hostDevName)
    }
}

/// `snapshot/load` (PUT): a snapshot to build the guest from, before anything else is configured.
public struct SnapshotLoadModel: Codable, Equatable, Sendable {
    /// The state file.
    public var snapshotPath: String
    /// The memory file (older form of `mem_backend`).
    public var memFilePath: String?
    /// The memory file.
    public var memBackend: MemoryBackendModel?
    /// Diff snapshots: not supported, so only false.
    public var enableDiffSnapshots: Bool?
    /// Dirty-page tracking: not supported, so only false.
    public var trackDirtyPages: Bool?
    /// Resume the guest at once (default: it stays paused).
    public var resumeVM: Bool?
    /// Taps replacing the saved interfaces': not supported.
    public var networkOverrides: [NetworkOverrideModel]?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case snapshotPath = "snapshot_path", memFilePath = "mem_file_path", memBackend = "mem_backend"
        case enableDiffSnapshots = "enable_diff_snapshots", trackDirtyPages = "track_dirty_pages", resumeVM = "resume_vm"
        case networkOverrides = "network_overrides"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        snapshotPath = try object.required(.snapshotPath)
        memFilePath = try object.optional(.memFilePath)
        memBackend = try object.optional(.memBackend)
        enableDiffSnapshots = try object.optional(.enableDiffSnapshots)
        trackDirtyPages = try object.optional(.trackDirtyPages)
        resumeVM = try object.optional(.resumeVM)
        networkOverrides = try object.optional(.networkOverrides)
    }
}

// MARK: - Logger and metrics

/// `logger` (PUT): where Swiftlet's API log goes and how much of it.
public struct LoggerModel: Codable, Equatable, Sendable {
    /// An existing file or FIFO, opened for appending.
    public var logPath: String?
    /// "Error", "Warning", "Info" (default), "Debug", "Trace" or "Off".
    public var level: String?
    /// Put the level in each line.
    public var showLevel: Bool?
    /// Put the origin in each line (Swiftlet: the component, `api` or `vmm`).
    public var showLogOrigin: Bool?
    /// A module filter: not supported.
    public var module: String?

    /// A logger configuration with these fields.
    public init(logPath: String?, level: String? = nil, showLevel: Bool? = nil, showLogOrigin: Bool? = nil, module: String? = nil)
    {
        self.logPath = logPath
        self.level = level
        self.showLevel = showLevel
        self.showLogOrigin = showLogOrigin
        self.module = module
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case logPath = "log_path", level, showLevel = "show_level", showLogOrigin = "show_log_origin", module
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        logPath = try object.optional(.logPath)
        level = try object.optional(.level)
        showLevel = try object.optional(.showLevel)
        showLogOrigin = try object.optional(.showLogOrigin)
        module = try object.optional(.module)
    }
}

/// `metrics` (PUT): where the metrics lines go.
public struct MetricsModel: Codable, Equatable, Sendable {
    /// An existing file or FIFO, opened for appending.
    public var metricsPath: String

    /// Metrics to `metricsPath`.
    public init(metricsPath: String) { self.metricsPath = metricsPath }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case metricsPath = "metrics_path"
    }

    /// Reads the object strictly (unknown fields refused).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        metricsPath = try object.required(.metricsPath)
    }
}

// MARK: - Responses

/// `GET /`: the instance's id, state and version.
public struct InstanceInfoModel: Codable, Equatable, Sendable {
    /// "Swiftlet".
    public var appName: String
    /// `--id`.
    public var id: String
    /// "Not started", "Running" or "Paused".
    public var state: String
    /// Swiftlet's version.
    public var vmmVersion: String

    enum CodingKeys: String, CodingKey {
        case appName = "app_name", id, state, vmmVersion = "vmm_version"
    }
}

/// `GET /version`.
public struct VersionModel: Codable, Equatable, Sendable {
    /// Swiftlet's version (the field keeps Firecracker's name).
    public var firecrackerVersion: String

    enum CodingKeys: String, CodingKey {
        case firecrackerVersion = "firecracker_version"
    }
}

/// A failed request's body: `{"fault_message": "..."}`.
public struct FaultModel: Codable, Equatable, Sendable {
    /// What was wrong, in one line.
    public var faultMessage: String

    enum CodingKeys: String, CodingKey {
        case faultMessage = "fault_message"
    }
}

/// The whole configuration: `GET /vm/config`'s answer and the `--config-file` document.
/// Decoding accepts Firecracker's keys; `balloon`, `mmds-config` and `cpu-config` are refused
/// by the loader when present (Swiftlet has none of them).
public struct FullConfigurationModel: Codable, Equatable, Sendable {
    /// `boot-source`.
    public var bootSource: BootSourceModel?
    /// `drives`.
    public var drives: [DriveModel]
    /// `machine-config`.
    public var machineConfig: MachineConfigModel?
    /// `network-interfaces`.
    public var networkInterfaces: [NetworkInterfaceModel]
    /// `vsock`.
    public var vsock: VsockModel?
    /// `logger`.
    public var logger: LoggerModel?
    /// `metrics`.
    public var metrics: MetricsModel?
    /// `entropy`.
    public var entropy: EntropyModel?
    /// Keys present in a config file that Swiftlet has no support for (`balloon`, ...), with a
    /// non-null value; never encoded.
    public var unsupportedKeys: [String] = []

    /// A configuration with these parts.
    public init(
        bootSource: BootSourceModel?, drives: [DriveModel], machineConfig: MachineConfigModel?,
        networkInterfaces: [NetworkInterfaceModel], vsock: VsockModel? = nil, logger: LoggerModel? = nil,
        metrics: MetricsModel? = nil, entropy: EntropyModel? = nil
    ) {
        self.bootSource = bootSource
        self.drives = drives
        self.machineConfig = machineConfig
        self.networkInterfaces = networkInterfaces
        self.vsock = vsock
        self.logger = logger
        self.metrics = metrics
        self.entropy = entropy
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case bootSource = "boot-source", drives, machineConfig = "machine-config", networkInterfaces = "network-interfaces"
        case vsock, logger, metrics, entropy, balloon, mmdsConfig = "mmds-config", cpuConfig = "cpu-config"
    }

    /// Reads the document strictly (unknown keys refused; unsupported ones recorded).
    public init(from decoder: any Decoder) throws {
        let object = try StrictObject<CodingKeys>(decoder)
        bootSource = try object.optional(.bootSource)
        drives = try object.optional(.drives) ?? []
        machineConfig = try object.optional(.machineConfig)
        networkInterfaces = try object.optional(.networkInterfaces) ?? []
        vsock = try object.optional(.vsock)
        logger = try object.optional(.logger)
        metrics = try object.optional(.metrics)
        entropy = try object.optional(.entropy)
        for key in [CodingKeys.balloon, .mmdsConfig, .cpuConfig] where object.container.contains(key) {
            if try !object.container.decodeNil(forKey: key) { unsupportedKeys.append(key.stringValue) }
        }
    }

    /// Encodes the parts (Firecracker's keys; absent parts as null, empty lists as []).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(bootSource, forKey: .bootSource)
        try container.encode(drives, forKey: .drives)
        try container.encode(machineConfig, forKey: .machineConfig)
        try container.encode(networkInterfaces, forKey: .networkInterfaces)
        try container.encode(vsock, forKey: .vsock)
        try container.encode(logger, forKey: .logger)
        try container.encode(metrics, forKey: .metrics)
        try container.encode(entropy, forKey: .entropy)
        try container.encodeNil(forKey: .balloon)
        try container.encodeNil(forKey: .mmdsConfig)
    }
}
