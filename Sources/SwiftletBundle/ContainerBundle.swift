import FoundationEssentials
import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// An OCI runtime bundle (a directory with `config.json` and a root filesystem), read and
/// checked: everything a microVM needs to run its process, as a plain value. Built by
/// `init(at:arguments:)`; `machineConfiguration(...)` and `prepare(...)` turn it into a machine.
public struct ContainerBundle: Equatable, Sendable {
    /// The bundle directory, absolute, symbolic links resolved.
    public var directory: String
    /// The root filesystem directory (`root.path`), absolute, inside `directory`.
    public var rootPath: String
    /// `root.readonly`: the root disk is attached and mounted read-only.
    public var rootReadOnly: Bool
    /// `hostname`, if set.
    public var hostname: String?
    /// The process to run.
    public var process: ContainerProcess
    /// The filesystems mounted in the guest before the process starts, in order.
    public var mounts: [ContainerMount]

    /// Reads `directory/config.json` and checks it and the root filesystem. `arguments`, when
    /// not nil, replace `process.args` (`swiftlet run -- CMD ARGS...`). Throws a `BundleError`
    /// naming the field at fault for anything Swiftlet cannot honour.
    public init(at directory: String, arguments: [String]? = nil) throws(BundleError) {
        let bundle = Self.resolve(directory) ?? directory
        let configPath = bundle + "/config.json"
        let bytes = try Self.readFile(configPath)
        let config: OCIConfig
        do {
            config = try JSONDecoder().decode(OCIConfig.self, from: Data(bytes))
        } catch let error as BundleError {
            throw error
        } catch let error as DecodingError {
            throw .invalidJSON(Self.describe(error))
        } catch {
            throw .invalidJSON("\(error)")
        }
        try self.init(config: config, directory: bundle, arguments: arguments)
    }

    init(config: OCIConfig, directory: String, arguments: [String]?) throws(BundleError) {
        guard let version = config.ociVersion else { throw .unsupportedVersion(nil) }
        guard version == "1" || version.hasPrefix("1.") else { throw .unsupportedVersion(version) }
        guard let processConfig = config.process else { throw .missingField("process") }
        guard let root = config.root else { throw .missingField("root") }
        self.directory = directory

        let rootCandidate = root.path.hasPrefix("/") ? root.path : directory + "/" + root.path
        guard let rootPath = Self.resolve(rootCandidate), Self.isDirectory(rootPath) else { throw .missingRoot(rootCandidate) }
        guard rootPath.hasPrefix(directory + "/") else { throw .rootOutsideBundle(rootPath) }
        self.rootPath = rootPath
        rootReadOnly = root.readonly

        if let hostname = config.hostname {
            guard hostname.utf8.count <= 64, !hostname.utf8.contains(0) else {
                throw .badValue("hostname", "at most 64 bytes, no NUL")
            }
        }
        hostname = config.hostname
        process = try ContainerProcess(processConfig, arguments: arguments)
        mounts = []
        for mount in config.mounts {
            let converted = try ContainerMount(mount)
            if rootReadOnly, !Self.isDirectory(rootPath + converted.destination) {
                throw .badValue(
                    "\(mount.field).destination",
                    "\(converted.destination) is not a directory of the read-only root (create it in \(root.path))")
            }
            mounts.append(converted)
        }
        if process.cwd != "/", rootReadOnly, !Self.isDirectory(rootPath + process.cwd) {
            throw .badValue("process.cwd", "\(process.cwd) is not a directory of the root filesystem")
        }
    }

    private static func readFile(_ path: String) throws(BundleError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw .noConfig(path) }
            throw .unreadableConfig(path, String(cString: strerror(code)))
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw .unreadableConfig(path, String(cString: strerror(errno))) }
            if count == 0 { return bytes }
            guard bytes.count + count <= 16 << 20 else { throw .unreadableConfig(path, "larger than 16 MiB") }
            bytes += chunk[..<count]
        }
    }

    /// `path` with symbolic links resolved (realpath), or nil if it does not exist.
    static func resolve(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The parser's complaint in one line, with the field's path where it has one.
    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context):
            context.codingPath.isEmpty
                ? "not JSON (\(context.debugDescription))"
                : "\(codingPathDescription(context.codingPath)): \(context.debugDescription)"
        case .typeMismatch(_, let context): "\(codingPathDescription(context.codingPath)) has the wrong type"
        case .valueNotFound(_, let context): "\(codingPathDescription(context.codingPath)) is null"
        case .keyNotFound(let key, let context): "\(codingPathDescription(context.codingPath + [key])) is missing"
        @unknown default: "\(error)"
        }
    }
}

/// The bundle's `process`, checked.
public struct ContainerProcess: Equatable, Sendable {
    /// `args` (or the command given instead), never empty; `args[0]` is looked up in `env`'s PATH.
    public var arguments: [String]
    /// `env`: `NAME=VALUE` each; the process gets exactly these.
    public var environment: [String]
    /// `cwd`, absolute (default `/`).
    public var workingDirectory: String
    /// `user.uid` and `user.gid` (default 0).
    public var uid: UInt32
    /// `user.gid`.
    public var gid: UInt32
    /// `terminal`: the console is the process's controlling terminal.
    public var terminal: Bool
    /// `noNewPrivileges`.
    public var noNewPrivileges: Bool
    /// The capability numbers of the bounding set, when `capabilities` is given.
    public var capabilityBoundingSet: [Int]?
    /// `rlimits` as (Linux resource number, soft, hard).
    public var resourceLimits: [ResourceLimitValue]

    /// The working directory, for error messages and the spec.
    var cwd: String { workingDirectory }

    init(_ config: OCIProcess, arguments override: [String]?) throws(BundleError) {
        let arguments = override ?? config.args ?? []
        guard !arguments.isEmpty else { throw .emptyArgs }
        for (index, argument) in arguments.enumerated() where argument.utf8.contains(0) {
            throw .badValue(override == nil ? "process.args[\(index)]" : "the command", "contains a NUL byte")
        }
        self.arguments = arguments
        for (index, variable) in config.env.enumerated() {
            guard let equals = variable.firstIndex(of: "="), equals != variable.startIndex, !variable.utf8.contains(0) else {
                throw .badValue("process.env[\(index)]", "'\(variable)' is not NAME=VALUE")
            }
        }
        environment = config.env
        workingDirectory = config.cwd ?? "/"
        guard workingDirectory.hasPrefix("/"), !workingDirectory.utf8.contains(0) else {
            throw .badValue("process.cwd", "'\(workingDirectory)' is not an absolute path")
        }
        let uid = config.user?.uid ?? 0
        self.uid = uid
        gid = config.user?.gid ?? 0
        terminal = config.terminal
        noNewPrivileges = config.noNewPrivileges
        if let caps = config.capabilities {
            capabilityBoundingSet = try Capability.boundingSet(caps, uid: uid)
        } else {
            capabilityBoundingSet = nil
        }
        var limits: [ResourceLimitValue] = []
        for limit in config.rlimits {
            guard let resource = ResourceLimit.numbers[limit.type] else {
                throw .badValue("\(limit.field).type", "unknown resource limit '\(limit.type)'")
            }
            guard limit.soft <= limit.hard else { throw .badValue("\(limit.field).soft", "above the hard limit") }
            limits.append(ResourceLimitValue(resource: resource, soft: limit.soft, hard: limit.hard))
        }
        resourceLimits = limits
    }
}

/// One resource limit: Linux's resource number (RLIMIT_NOFILE is 7), soft and hard values.
public struct ResourceLimitValue: Equatable, Sendable {
    /// The `RLIMIT_*` number.
    public var resource: Int
    /// The soft limit.
    public var soft: UInt64
    /// The hard limit.
    public var hard: UInt64
}

/// One of the bundle's mounts, in the form mount(2) takes.
public struct ContainerMount: Equatable, Sendable {
    /// proc, sysfs, tmpfs or devtmpfs.
    public var type: String
    /// `source` (default: the type).
    public var source: String
    /// Absolute path in the guest's root.
    public var destination: String
    /// The `MS_*` bits of the options (ro, nosuid, nodev, noexec, ...).
    public var flags: UInt64
    /// The filesystem's own options (`mode=755,size=65536k`), comma-separated.
    public var data: String

    /// The mount types a guest is given.
    public static let supportedTypes: Set<String> = ["proc", "sysfs", "tmpfs", "devtmpfs"]

    static let flagOptions: [String: (set: UInt64, clear: UInt64)] = [
        "ro": (1, 0), "rw": (0, 1), "nosuid": (2, 0), "suid": (0, 2), "nodev": (4, 0), "dev": (0, 4),
        "noexec": (8, 0), "exec": (0, 8), "sync": (16, 0), "async": (0, 16), "noatime": (1024, 0), "atime": (0, 1024),
        "nodiratime": (2048, 0), "diratime": (0, 2048), "relatime": (1 << 21, 0), "norelatime": (0, 1 << 21),
        "strictatime": (1 << 24, 0), "nostrictatime": (0, 1 << 24),
    ]

    init(_ mount: OCIMount) throws(BundleError) {
        guard let type = mount.type, Self.supportedTypes.contains(type) else {
            throw .unsupportedMountType(mount.field, mount.type ?? (mount.options.contains("bind") ? "bind" : "(none)"))
        }
        self.type = type
        source = mount.source ?? type
        destination = mount.destination
        let strings = [source, destination] + mount.options
        guard destination.hasPrefix("/"), !strings.contains(where: { $0.utf8.contains(0) || $0.utf8.contains(10) }) else {
            throw .badValue("\(mount.field).destination", "'\(destination)' is not an absolute path without newlines")
        }
        var flags: UInt64 = 0
        var data: [String] = []
        for option in mount.options {
            if let bits = Self.flagOptions[option] {
                flags = (flags | bits.set) & ~bits.clear
            } else if option.contains("="), !option.contains(",") {
                data.append(option)
            } else {
                throw .unsupportedMountOption(mount.field, option)
            }
        }
        self.flags = flags
        self.data = data.joined(separator: ",")
    }
}
