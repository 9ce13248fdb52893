import Glibc
import Swiftlet
import Synchronization

/// One answer of the API: an HTTP status and a JSON body (none for 204).
public struct APIResponse: Equatable, Sendable {
    /// 200, 204, 400, 404 or 405.
    public var status: Int
    /// The JSON body, if any.
    public var body: [UInt8]?
    /// For 405: the methods the path takes.
    public var allowedMethods: [String] = []

    /// 204 No Content.
    public static let noContent = APIResponse(status: 204, body: nil)

    /// 200 with `value` as JSON.
    static func ok<T: Encodable>(_ value: T) -> APIResponse { APIResponse(status: 200, body: APIJSON.encode(value)) }

    /// `status` with `{"fault_message": message}`.
    public static func fault(_ status: Int, _ message: String) -> APIResponse {
        APIResponse(status: status, body: APIJSON.encode(FaultModel(faultMessage: message)))
    }

    /// 400 with `{"fault_message": message}`.
    public static func badRequest(_ message: String) -> APIResponse { fault(400, message) }
}

/// Where the microVM is in its life, as `GET /` reports it.
public enum VMMState: String, Sendable {
    /// Configuring (pre-boot).
    case notStarted = "Not started"
    /// Booted (or loaded and resumed) and running.
    case running = "Running"
    /// Booted and paused.
    case paused = "Paused"
}

/// The running guest as the controller drives it. `LibraryMicroVM` is the library's `Machine`;
/// tests and the fuzzer use fakes.
public protocol MicroVM: AnyObject, Sendable {
    /// Parks every vCPU.
    func pause()
    /// Lets the vCPUs run again.
    func resume()
    /// Writes the snapshot directory (state and memory) of the paused guest.
    func snapshot(to directory: String) throws
}

/// Builds and starts guests for the controller.
public protocol MicroVMFactory: Sendable {
    /// Builds the machine `configuration` describes and starts it.
    func boot(_ configuration: MachineConfiguration) throws -> any MicroVM
    /// Builds the machine saved in `directory` and starts it, paused unless `resume`.
    func restore(directory: String, resume: Bool) throws -> any MicroVM
}

/// Firecracker's VMM as a state machine (Docs/API-SOCKET.md): the pre-boot configuration
/// (machine, boot source, drives, interfaces, entropy, logger, metrics), `InstanceStart` and
/// snapshot load that start the guest, and the post-boot requests (pause, resume, snapshot
/// create). Each request is a call of `handle`, which returns its answer; the server calls it
/// on its own thread, never a vCPU thread. Thread-safe: requests are serialised by a lock.
public final class VMMController: Sendable {
    private struct State {
        var vmState = VMMState.notStarted
        var machine = MachineConfigModel(vcpuCount: 1, memSizeMib: 128, smt: false, trackDirtyPages: false, hugePages: "None")
        var bootSource: BootSourceModel?
        var drives: [DriveModel] = []
        var networks: [NetworkInterfaceModel] = []
        var entropy: EntropyModel?
        var vsock: VsockModel?
        var logger: LoggerModel?
        var metrics: MetricsModel?
        var microVM: (any MicroVM)?
        /// Any pre-boot resource was configured (snapshot load is refused then).
        var configured = false
    }

    private let state = Mutex(State())
    /// `--id`.
    public let instanceID: String
    /// `--boot-timer`: attach the boot timer to the booted machine.
    public let bootTimer: Bool
    private let factory: any MicroVMFactory
    /// Where `logger` and `metrics` write.
    public let log: APILog

    /// Message Firecracker gives for a pre-boot request after boot.
    static let notAfterBoot = "The requested operation is not supported after starting the microVM."
    /// Message Firecracker gives for a post-boot request before boot.
    static let notBeforeBoot = "The requested operation is not supported before starting the microVM."

    /// A controller for the instance `instanceID`, booting through `factory`.
    public init(instanceID: String, bootTimer: Bool = false, factory: any MicroVMFactory, log: APILog = APILog()) {
        self.instanceID = instanceID
        self.bootTimer = bootTimer
        self.factory = factory
        self.log = log
    }

    /// The state `GET /` reports.
    public var vmState: VMMState { state.withLock { $0.vmState } }

    /// Answers one request: `method` (GET, PUT, PATCH, ...), `path` (`/drives/rootfs`) and its
    /// body. Unknown paths are 404, known paths with another method 405, everything else as
    /// Firecracker answers it (Docs/API-SOCKET.md).
    public func handle(method: String, path: String, body: [UInt8]) -> APIResponse {
        let response = route(method: method, path: path, body: body)
        log.request(method: method, path: path, status: response.status)
        return response
    }

    private func route(method: String, path rawPath: String, body: [UInt8]) -> APIResponse {
        var path = Substring(rawPath)
        if let query = path.firstIndex(of: "?") { path = path[..<query] }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        func allow(_ methods: String...) -> APIResponse? {
            methods.contains(method)
                ? nil
                : APIResponse(
                    status: 405, body: APIJSON.encode(FaultModel(faultMessage: "Invalid request method \(method) for \(path)")),
                    allowedMethods: methods)
        }
        switch parts.first {
        case nil:
            return allow("GET") ?? instanceInfo()
        case "version" where parts.count == 1:
            return allow("GET") ?? .ok(VersionModel(firecrackerVersion: SwiftletVersion.string))
        case "machine-config" where parts.count == 1:
            if let refused = allow("GET", "PUT", "PATCH") { return refused }
            if method == "GET" { return .ok(state.withLock { $0.machine }) }
            return decoded(MachineConfigModel.self, body) { putMachineConfig($0, patch: method == "PATCH") }
        case "boot-source" where parts.count == 1:
            return allow("PUT") ?? decoded(BootSourceModel.self, body, putBootSource)
        case "drives" where parts.count == 2:
            if let refused = allow("PUT", "PATCH") { return refused }
            if method == "PATCH" { return decoded(PartialDriveModel.self, body) { patchDrive($0, id: parts[1]) } }
            return decoded(DriveModel.self, body) { putDrive($0, id: parts[1]) }
        case "network-interfaces" where parts.count == 2:
            if let refused = allow("PUT", "PATCH") { return refused }
            if method == "PATCH" {
                return decoded(PartialNetworkInterfaceModel.self, body) { patchNetwork($0, id: parts[1]) }
            }
            return decoded(NetworkInterfaceModel.self, body) { putNetwork($0, id: parts[1]) }
        case "vsock" where parts.count == 1:
            return allow("PUT") ?? decoded(VsockModel.self, body, putVsock)
        case "entropy" where parts.count == 1:
            return allow("PUT") ?? decoded(EntropyModel.self, body, putEntropy)
        case "actions" where parts.count == 1:
            return allow("PUT") ?? decoded(InstanceActionModel.self, body, action)
        case "vm" where parts.count == 1:
            return allow("PATCH") ?? decoded(VMStateModel.self, body, patchVM)
        case "vm" where parts.count == 2 && parts[1] == "config":
            return allow("GET") ?? .ok(fullConfiguration)
        case "snapshot" where parts.count == 2 && parts[1] == "create":
            return allow("PUT") ?? decoded(SnapshotCreateModel.self, body, createSnapshot)
        case "snapshot" where parts.count == 2 && parts[1] == "load":
            return allow("PUT") ?? decoded(SnapshotLoadModel.self, body, loadSnapshot)
        case "logger" where parts.count == 1:
            return allow("PUT") ?? decoded(LoggerModel.self, body, putLogger)
        case "metrics" where parts.count == 1:
            return allow("PUT") ?? decoded(MetricsModel.self, body, putMetrics)
        case "balloon", "mmds", "cpu-config", "serial", "pmem", "hotplug", "memory":
            // Firecracker resources Swiftlet does not have: said so, never accepted silently.
            return .badRequest("\(path) is not supported by Swiftlet (Docs/API-SOCKET.md)")
        default:
            return .fault(404, "Invalid request path: \(path)")
        }
    }

    private func decoded<T: Decodable>(_ type: T.Type, _ body: [UInt8], _ handler: (T) -> APIResponse) -> APIResponse {
        guard !body.isEmpty else { return .badRequest("The request body is empty; a JSON object is expected.") }
        do {
            return handler(try APIJSON.decode(type, from: body))
        } catch {
            return .badRequest("An error occurred when deserializing the json body of a request: \(error.message)")
        }
    }

    private func instanceInfo() -> APIResponse {
        .ok(
            InstanceInfoModel(
                appName: "Swiftlet", id: instanceID, state: vmState.rawValue, vmmVersion: SwiftletVersion.string))
    }

    /// The configuration so far, as `GET /vm/config` gives it.
    public var fullConfiguration: FullConfigurationModel {
        state.withLock {
            FullConfigurationModel(
                bootSource: $0.bootSource, drives: $0.drives, machineConfig: $0.machine, networkInterfaces: $0.networks,
                vsock: $0.vsock, logger: $0.logger, metrics: $0.metrics, entropy: $0.entropy)
        }
    }

    // MARK: Pre-boot

    /// Runs `body` on the state if the guest has not started; otherwise Firecracker's 400.
    private func preBoot(_ body: (inout State) -> APIResponse) -> APIResponse {
        state.withLock { state in
            guard state.vmState == .notStarted else { return .badRequest(Self.notAfterBoot) }
            let response = body(&state)
            if response.status == 204 { state.configured = true }
            return response
        }
    }

    private func putMachineConfig(_ model: MachineConfigModel, patch: Bool) -> APIResponse {
        if !patch {
            guard model.vcpuCount != nil else { return .badRequest("missing field `vcpu_count`") }
            guard model.memSizeMib != nil else { return .badRequest("missing field `mem_size_mib`") }
        }
        if model.smt == true { return .badRequest("smt is not supported by Swiftlet: its vCPUs are single-thread cores") }
        if model.trackDirtyPages == true {
            return .badRequest("track_dirty_pages is not supported by Swiftlet (no diff snapshots)")
        }
        if let template = model.cpuTemplate, template != "None" {
            return .badRequest("cpu_template \(template) is not supported by Swiftlet (only None)")
        }
        if let pages = model.hugePages, pages != "None" {
            return .badRequest("huge_pages \(pages) is not supported by Swiftlet (only None)")
        }
        if let count = model.vcpuCount, !(1...MachineConfiguration.maximumVCPUs).contains(count) {
            return .badRequest("The vCPU number is invalid: it must be between 1 and \(MachineConfiguration.maximumVCPUs).")
        }
        if let mib = model.memSizeMib {
            let bytes = mib.multipliedReportingOverflow(by: 1 << 20)
            if bytes.overflow || bytes.partialValue < MachineConfiguration.minimumMemorySize
                || bytes.partialValue > MachineConfiguration.maximumMemorySize
            {
                return .badRequest(
                    "The memory size (MiB) is invalid: it must be between \(MachineConfiguration.minimumMemorySize >> 20) and \(MachineConfiguration.maximumMemorySize >> 20)."
                )
            }
        }
        return preBoot { state in
            if let count = model.vcpuCount { state.machine.vcpuCount = count }
            if let mib = model.memSizeMib { state.machine.memSizeMib = mib }
            return .noContent
        }
    }

    private func putBootSource(_ model: BootSourceModel) -> APIResponse {
        if let problem = Self.unreadable(model.kernelImagePath) {
            return .badRequest("The kernel file cannot be opened: \(model.kernelImagePath): \(problem)")
        }
        if let initrd = model.initrdPath, let problem = Self.unreadable(initrd) {
            return .badRequest("The initrd file cannot be opened: \(initrd): \(problem)")
        }
        return preBoot { state in
            state.bootSource = model
            return .noContent
        }
    }

    private func putDrive(_ model: DriveModel, id: String) -> APIResponse {
        guard model.driveID == id else { return .badRequest("The id from the path does not match the id from the body!") }
        if model.socket != nil { return .badRequest("vhost-user drives (socket) are not supported by Swiftlet") }
        if let engine = model.ioEngine, engine != "Sync" {
            return .badRequest("io_engine \(engine) is not supported by Swiftlet (only Sync)")
        }
        if let cache = model.cacheType, cache != "Unsafe" && cache != "Writeback" {
            return .badRequest("cache_type \(cache) is not one of Unsafe, Writeback")
        }
        guard let path = model.pathOnHost else { return .badRequest("missing field `path_on_host`") }
        if let problem = Self.unreadable(path) { return .badRequest("Unable to open the drive file \(path): \(problem)") }
        let disk = DiskConfiguration(
            path: path, readOnly: model.isReadOnly ?? false, id: String(id.utf8.prefix(20)),
            rateLimit: model.rateLimiter?.rateLimit)
        do { try disk.validate() } catch { return .badRequest("drive \(id): \(error)") }
        return preBoot { state in
            if model.isRootDevice, state.drives.contains(where: { $0.isRootDevice && $0.driveID != id }) {
                return .badRequest("A root block device already exists!")
            }
            if let index = state.drives.firstIndex(where: { $0.driveID == id }) {
                state.drives[index] = model
            } else {
                state.drives.append(model)
            }
            return .noContent
        }
    }

    private func patchDrive(_ model: PartialDriveModel, id: String) -> APIResponse {
        guard model.driveID == id else { return .badRequest("The id from the path does not match the id from the body!") }
        return state.withLock { state in
            guard state.vmState != .notStarted else { return .badRequest(Self.notBeforeBoot) }
            guard state.drives.contains(where: { $0.driveID == id }) else { return .badRequest("drive \(id) does not exist") }
            return .badRequest("updating a running guest's drive (path_on_host, rate_limiter) is not supported by Swiftlet")
        }
    }

    private func putNetwork(_ model: NetworkInterfaceModel, id: String) -> APIResponse {
        guard model.ifaceID == id else { return .badRequest("The id from the path does not match the id from the body!") }
        var mac: MACAddress?
        if let text = model.guestMac {
            guard let parsed = MACAddress(parsing: text) else { return .badRequest("guest_mac \(text) is not a MAC address") }
            mac = parsed
        }
        let network = NetworkConfiguration(
            tap: model.hostDevName, mac: mac, receiveRateLimit: model.rxRateLimiter?.rateLimit,
            transmitRateLimit: model.txRateLimiter?.rateLimit)
        do { try network.validate() } catch { return .badRequest("network interface \(id): \(error)") }
        return preBoot { state in
            for other in state.networks where other.ifaceID != id {
                if other.hostDevName == model.hostDevName {
                    return .badRequest("The host device name \(model.hostDevName) is already in use.")
                }
                if let mac, other.guestMac.flatMap { MACAddress(parsing: $0) } == mac {
                    return .badRequest("The MAC address \(mac) is already in use.")
                }
            }
            if let index = state.networks.firstIndex(where: { $0.ifaceID == id }) {
                state.networks[index] = model
            } else {
                state.networks.append(model)
            }
            return .noContent
        }
    }

    private func patchNetwork(_ model: PartialNetworkInterfaceModel, id: String) -> APIResponse {
        guard model.ifaceID == id else { return .badRequest("The id from the path does not match the id from the body!") }
        return state.withLock { state in
            guard state.vmState != .notStarted else { return .badRequest(Self.notBeforeBoot) }
            guard state.networks.contains(where: { $0.ifaceID == id }) else {
                return .badRequest("network interface \(id) does not exist")
            }
            return .badRequest("updating a running guest's rate limiters is not supported by Swiftlet")
        }
    }

    private func putEntropy(_ model: EntropyModel) -> APIResponse {
        if model.rateLimiter?.rateLimit != nil {
            return .badRequest("a rate limiter on the entropy device is not supported by Swiftlet")
        }
        return preBoot { state in
            state.entropy = model
            return .noContent
        }
    }

    private func putVsock(_ model: VsockModel) -> APIResponse {
        do { try model.configuration.validate() } catch { return .badRequest("\(error)") }
        return preBoot { state in
            state.vsock = model
            return .noContent
        }
    }

    private func putLogger(_ model: LoggerModel) -> APIResponse {
        if model.module != nil { return .badRequest("the logger's module filter is not supported by Swiftlet") }
        return state.withLock { state in
            guard state.vmState == .notStarted else { return .badRequest(Self.notAfterBoot) }
            do { try log.configureLogger(model, instanceID: instanceID) } catch { return .badRequest("\(error)") }
            state.logger = model
            return .noContent
        }
    }

    private func putMetrics(_ model: MetricsModel) -> APIResponse {
        state.withLock { state in
            guard state.vmState == .notStarted else { return .badRequest(Self.notAfterBoot) }
            do { try log.configureMetrics(model) } catch { return .badRequest("\(error)") }
            state.metrics = model
            return .noContent
        }
    }

    // MARK: Start, pause, snapshots

    /// The library configuration the pre-boot state describes; throws the 400 answer's message.
    private static func machineConfiguration(_ state: State, bootTimer: Bool) throws(APIDecodingError) -> MachineConfiguration {
        guard let boot = state.bootSource else { throw APIDecodingError("Cannot start microvm without kernel configuration.") }
        // The root device is the first disk (/dev/vda), as in Firecracker.
        let drives = state.drives.filter(\.isRootDevice) + state.drives.filter { !$0.isRootDevice }
        var commandLine = boot.bootArgs ?? LinuxBoot.defaultCommandLine
        if let root = drives.first, root.isRootDevice {
            let device = root.partuuid.map { "PARTUUID=\($0)" } ?? "/dev/vda"
            commandLine += " root=\(device) \(root.isReadOnly == true ? "ro" : "rw")"
        }
        var configuration = MachineConfiguration(
            kernelPath: boot.kernelImagePath, memorySize: (state.machine.memSizeMib ?? 128) << 20,
            vcpuCount: state.machine.vcpuCount ?? 1, commandLine: commandLine, initrdPath: boot.initrdPath,
            disks: drives.map {
                DiskConfiguration(
                    path: $0.pathOnHost ?? "", readOnly: $0.isReadOnly ?? false, id: String($0.driveID.utf8.prefix(20)),
                    rateLimit: $0.rateLimiter?.rateLimit)
            },
            networks: state.networks.map {
                NetworkConfiguration(
                    tap: $0.hostDevName, mac: $0.guestMac.flatMap { MACAddress(parsing: $0) },
                    receiveRateLimit: $0.rxRateLimiter?.rateLimit, transmitRateLimit: $0.txRateLimiter?.rateLimit)
            },
            rng: state.entropy != nil, bootTimer: bootTimer,
            vsock: state.vsock?.configuration)
        configuration.console = .terminal
        do { try configuration.validate() } catch { throw APIDecodingError("Start microvm error: \(error)") }
        return configuration
    }

    private func action(_ model: InstanceActionModel) -> APIResponse {
        switch model.actionType {
        case "InstanceStart":
            return state.withLock { state in
                guard state.vmState == .notStarted else { return .badRequest(Self.notAfterBoot) }
                let configuration: MachineConfiguration
                do { configuration = try Self.machineConfiguration(state, bootTimer: bootTimer) } catch {
                    return .badRequest("\(error)")
                }
                do {
                    state.microVM = try factory.boot(configuration)
                } catch {
                    return .badRequest("Start microvm error: \(error)")
                }
                state.vmState = .running
                log.info("the microVM started (InstanceStart)")
                return .noContent
            }
        case "SendCtrlAltDel":
            return .badRequest("SendCtrlAltDel is not supported by Swiftlet: its i8042 has no keyboard to send the keys")
        case "FlushMetrics":
            guard log.hasMetrics else { return .badRequest("The metrics system is not initialized: PUT /metrics first.") }
            log.writeMetrics(state: vmState)
            return .noContent
        default:
            return .badRequest(
                "An error occurred when deserializing the json body of a request: unknown variant `\(model.actionType)`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"
            )
        }
    }

    private func patchVM(_ model: VMStateModel) -> APIResponse {
        guard model.state == "Paused" || model.state == "Resumed" else {
            return .badRequest(
                "An error occurred when deserializing the json body of a request: unknown variant `\(model.state)`, expected `Paused` or `Resumed`"
            )
        }
        return state.withLock { state in
            guard state.vmState != .notStarted, let microVM = state.microVM else { return .badRequest(Self.notBeforeBoot) }
            if model.state == "Paused" {
                microVM.pause()
                state.vmState = .paused
            } else {
                microVM.resume()
                state.vmState = .running
            }
            log.info("the microVM is \(state.vmState.rawValue.lowercased())")
            return .noContent
        }
    }

    private func createSnapshot(_ model: SnapshotCreateModel) -> APIResponse {
        if let type = model.snapshotType, type != "Full" {
            return .badRequest("snapshot_type \(type) is not supported by Swiftlet (only Full)")
        }
        if model.version != nil { return .badRequest("the snapshot version field is not supported by Swiftlet") }
        return state.withLock { state in
            guard state.vmState != .notStarted, let microVM = state.microVM else { return .badRequest(Self.notBeforeBoot) }
            guard state.vmState == .paused else {
                return .badRequest("Create snapshot is allowed only when the microVM is paused.")
            }
            do {
                try SnapshotPaths.create(state: model.snapshotPath, memory: model.memFilePath) { directory in
                    try microVM.snapshot(to: directory)
                }
            } catch {
                return .badRequest("Cannot create the snapshot: \(error)")
            }
            log.info("snapshot written to \(model.snapshotPath) and \(model.memFilePath)")
            return .noContent
        }
    }

    private func loadSnapshot(_ model: SnapshotLoadModel) -> APIResponse {
        if model.enableDiffSnapshots == true || model.trackDirtyPages == true {
            return .badRequest("diff snapshots (dirty-page tracking) are not supported by Swiftlet")
        }
        if let overrides = model.networkOverrides, !overrides.isEmpty {
            return .badRequest("network_overrides are not supported by Swiftlet")
        }
        if let backend = model.memBackend, backend.backendType != "File" {
            return .badRequest("mem_backend type \(backend.backendType) is not supported by Swiftlet (only File)")
        }
        guard let memory = model.memBackend?.backendPath ?? model.memFilePath else {
            return .badRequest("missing field `mem_backend` (or `mem_file_path`)")
        }
        if model.memBackend != nil && model.memFilePath != nil {
            return .badRequest("give either mem_backend or mem_file_path, not both")
        }
        return state.withLock { state in
            guard state.vmState == .notStarted else { return .badRequest(Self.notAfterBoot) }
            guard !state.configured else {
                return .badRequest("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
            }
            let resume = model.resumeVM ?? false
            do {
                state.microVM = try SnapshotPaths.load(state: model.snapshotPath, memory: memory) { directory in
                    try factory.restore(directory: directory, resume: resume)
                }
            } catch {
                return .badRequest("Cannot load the snapshot: \(error)")
            }
            state.vmState = resume ? .running : .paused
            log.info("snapshot loaded from \(model.snapshotPath)")
            return .noContent
        }
    }

    /// Why `path` cannot be read, or nil when it can.
    static func unreadable(_ path: String) -> String? {
        access(path, R_OK) == 0 ? nil : String(cString: strerror(errno))
    }
}

/// Firecracker names the state and memory files of a snapshot; Swiftlet's `Machine.snapshot(to:)`
/// writes a directory holding `state` and `memory`. These map one onto the other.
enum SnapshotPaths {
    /// Writes a snapshot through `write` into a scratch directory beside `state`, then moves its
    /// two files to `state` and `memory` (rename: the same file system).
    static func create(state: String, memory: String, _ write: (String) throws -> Void) throws {
        let directory = try scratchDirectory(beside: state)
        defer { rmdir(directory) }
        do {
            try write(directory)
            try move(directory + "/state", to: state)
            try move(directory + "/memory", to: memory)
        } catch {
            unlink(directory + "/state")
            unlink(directory + "/memory")
            throw error
        }
    }

    /// Restores through `restore` from a scratch directory whose `state` and `memory` link to
    /// the given files.
    static func load<T>(state: String, memory: String, _ restore: (String) throws -> T) throws -> T {
        for path in [state, memory] {
            if let problem = VMMController.unreadable(path) { throw APIDecodingError("\(path): \(problem)") }
        }
        let directory = try scratchDirectory(beside: state)
        defer {
            unlink(directory + "/state")
            unlink(directory + "/memory")
            rmdir(directory)
        }
        for (target, name) in [(state, "state"), (memory, "memory")] {
            guard symlink(absolutePath(target), directory + "/" + name) == 0 else {
                throw APIDecodingError("cannot link \(target): \(String(cString: strerror(errno)))")
            }
        }
        return try restore(directory)
    }

    private static func scratchDirectory(beside path: String) throws -> String {
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        var template = Array(((parent.isEmpty ? "" : parent) + "/.swiftlet-snapshot-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw APIDecodingError("cannot make a directory in \(parent): \(String(cString: strerror(errno)))")
        }
        return String(cString: made)
    }

    private static func move(_ from: String, to: String) throws {
        guard rename(from, to) == 0 else {
            let why = errno == EXDEV ? "it must be on the same file system as snapshot_path" : String(cString: strerror(errno))
            throw APIDecodingError("cannot move the snapshot to \(to): \(why)")
        }
    }
}

/// `path` made absolute against the working directory (the VMM may change it later).
func absolutePath(_ path: String) -> String {
    if path.isEmpty || path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: 4097)
    guard getcwd(&buffer, 4096) != nil else { return path }
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self) + "/" + path
}

extension VsockModel {
    /// The library's vsock configuration for this body (the socket path made absolute).
    var configuration: VsockConfiguration {
        VsockConfiguration(guestCID: UInt64(guestCID), udsPath: absolutePath(udsPath))
    }
}
