import FoundationEssentials
import Swiftlet

// The part of the OCI runtime spec (config.json, 1.x) that Swiftlet reads. Every object is
// decoded through `FieldSet`, which refuses a field Swiftlet does not know or cannot honour with
// its path (`process.rlimits`), instead of skipping it as a plain Decodable would. Fields that a
// microVM honours by being one (namespaces, masked paths) are accepted and documented where
// they are read (Docs/RUN.md, "What config.json may hold").

/// A JSON object key of any name: lets `FieldSet` see every key an object has.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// The keys of one JSON object, checked against those Swiftlet reads: `init` throws
/// `BundleError.unsupportedField` for any other key, naming its path and why it is refused.
struct FieldSet {
    let container: KeyedDecodingContainer<AnyKey>
    let path: String

    /// `known` are the keys read; `refused` maps keys of the spec Swiftlet cannot honour to why.
    init(_ decoder: any Decoder, known: Set<String>, refused: [String: String] = [:]) throws {
        container = try decoder.container(keyedBy: AnyKey.self)
        path = codingPathDescription(decoder.codingPath)
        for key in container.allKeys where !known.contains(key.stringValue) {
            let field = path.isEmpty ? key.stringValue : "\(path).\(key.stringValue)"
            throw BundleError.unsupportedField(field, refused[key.stringValue] ?? "not a field Swiftlet knows")
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ key: String) throws -> T? {
        try container.decodeIfPresent(type, forKey: AnyKey(stringValue: key))
    }

    /// The path of `key` in the document, as errors name it: `process.user.uid`.
    func field(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
}

/// config.json as Swiftlet reads it.
struct OCIConfig: Decodable {
    var ociVersion: String?
    var process: OCIProcess?
    var root: OCIRoot?
    var hostname: String?
    var mounts: [OCIMount]
    var linux: OCILinux?

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(
            decoder, known: ["ociVersion", "process", "root", "hostname", "mounts", "linux", "annotations"],
            refused: [
                "hooks": "hooks run host programs around the container; a microVM has no place for them",
                "domainname": "the NIS domain name is not set", "windows": "Windows containers",
                "vm": "VM-based runtimes' own fields",
                "solaris": "Solaris zones", "zos": "z/OS", "freebsd": "FreeBSD jails",
            ])
        ociVersion = try fields.decode(String.self, "ociVersion")
        process = try fields.decode(OCIProcess.self, "process")
        root = try fields.decode(OCIRoot.self, "root")
        hostname = try fields.decode(String.self, "hostname")
        mounts = try fields.decode([OCIMount].self, "mounts") ?? []
        linux = try fields.decode(OCILinux.self, "linux")
        // annotations: arbitrary metadata for tools; the spec says they never change behaviour.
        _ = try fields.decode([String: String].self, "annotations")
    }
}

/// `process`.
struct OCIProcess: Decodable {
    var terminal: Bool
    var user: OCIUser?
    var args: [String]?
    var env: [String]
    var cwd: String?
    var capabilities: OCICapabilities?
    var rlimits: [OCIRlimit]
    var noNewPrivileges: Bool

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(
            decoder,
            known: ["terminal", "user", "args", "env", "cwd", "capabilities", "rlimits", "noNewPrivileges"],
            refused: [
                "consoleSize": "the console's size is the host terminal's",
                "apparmorProfile": "AppArmor is not in the guest kernel", "selinuxLabel": "SELinux is not in the guest kernel",
                "oomScoreAdj": "not applied in the guest", "commandLine": "Windows only",
                "ioPriority": "not applied in the guest",
                "scheduler": "not applied in the guest", "execCPUAffinity": "not applied in the guest",
            ])
        terminal = try fields.decode(Bool.self, "terminal") ?? false
        user = try fields.decode(OCIUser.self, "user")
        args = try fields.decode([String].self, "args")
        env = try fields.decode([String].self, "env") ?? []
        cwd = try fields.decode(String.self, "cwd")
        capabilities = try fields.decode(OCICapabilities.self, "capabilities")
        rlimits = try fields.decode([OCIRlimit].self, "rlimits") ?? []
        noNewPrivileges = try fields.decode(Bool.self, "noNewPrivileges") ?? false
    }
}

/// `process.user`: numeric ids only (a uid that is not a number is an error naming the field).
struct OCIUser: Decodable {
    var uid: UInt32
    var gid: UInt32

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(
            decoder, known: ["uid", "gid", "additionalGids"],
            refused: ["umask": "the umask is not set", "username": "Windows only"])
        uid = try Self.id(fields, "uid")
        gid = try Self.id(fields, "gid")
        if let extra = try fields.decode([UInt32].self, "additionalGids"), !extra.isEmpty {
            throw BundleError.unsupportedField(fields.field("additionalGids"), "supplementary groups are not set")
        }
    }

    private static func id(_ fields: FieldSet, _ key: String) throws -> UInt32 {
        // Read as any JSON number first: a fraction or a negative number is "not a number" too.
        let value: Double?
        do { value = try fields.decode(Double.self, key) } catch is DecodingError {
            throw BundleError.notANumber(fields.field(key))
        }
        guard let value else { throw BundleError.missingField(fields.field(key)) }
        guard let id = UInt32(exactly: value) else { throw BundleError.notANumber(fields.field(key)) }
        return id
    }
}

/// `root`.
struct OCIRoot: Decodable {
    var path: String
    var readonly: Bool

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(decoder, known: ["path", "readonly"])
        guard let path = try fields.decode(String.self, "path") else { throw BundleError.missingField(fields.field("path")) }
        self.path = path
        readonly = try fields.decode(Bool.self, "readonly") ?? false
    }
}

/// One of `mounts`.
struct OCIMount: Decodable {
    var destination: String
    var type: String?
    var source: String?
    var options: [String]
    /// Its path in the document, for errors found after decoding: `mounts[2]`.
    var field: String

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(
            decoder, known: ["destination", "type", "source", "options"],
            refused: ["uidMappings": "id-mapped mounts are not supported", "gidMappings": "id-mapped mounts are not supported"])
        field = fields.path
        guard let destination = try fields.decode(String.self, "destination") else {
            throw BundleError.missingField(fields.field("destination"))
        }
        self.destination = destination
        type = try fields.decode(String.self, "type")
        source = try fields.decode(String.self, "source")
        options = try fields.decode([String].self, "options") ?? []
    }
}

/// `process.capabilities`: sets of `CAP_*` names.
struct OCICapabilities: Decodable {
    var bounding: [String]
    var effective: [String]
    var permitted: [String]
    var inheritable: [String]
    var ambient: [String]
    var field: String

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(decoder, known: ["bounding", "effective", "permitted", "inheritable", "ambient"])
        field = fields.path
        bounding = try fields.decode([String].self, "bounding") ?? []
        effective = try fields.decode([String].self, "effective") ?? []
        permitted = try fields.decode([String].self, "permitted") ?? []
        inheritable = try fields.decode([String].self, "inheritable") ?? []
        ambient = try fields.decode([String].self, "ambient") ?? []
    }
}

/// One of `process.rlimits`.
struct OCIRlimit: Decodable {
    var type: String
    var soft: UInt64
    var hard: UInt64
    var field: String

    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(decoder, known: ["type", "soft", "hard"])
        field = fields.path
        guard let type = try fields.decode(String.self, "type") else { throw BundleError.missingField(fields.field("type")) }
        self.type = type
        soft = try fields.decode(UInt64.self, "soft") ?? 0
        hard = try fields.decode(UInt64.self, "hard") ?? 0
    }
}

/// `linux`: namespaces are accepted (a microVM has its own kernel, so it has every namespace a
/// container asks for); the masked and read-only paths hide the host kernel's files from a
/// container, and the guest's /proc and /sys show only the guest kernel; a device cgroup that
/// denies everything is what the VM's device list already is. Everything else is refused.
struct OCILinux: Decodable {
    init(from decoder: any Decoder) throws {
        let fields = try FieldSet(
            decoder, known: ["namespaces", "maskedPaths", "readonlyPaths", "resources"],
            refused: [
                "uidMappings": "user namespaces are not given", "gidMappings": "user namespaces are not given",
                "devices": "extra device nodes are not created", "sysctl": "sysctls are not set",
                "seccomp": "seccomp filters are not installed", "cgroupsPath": "the process runs in no host cgroup",
                "rootfsPropagation": "mount propagation is not set", "mountLabel": "SELinux is not in the guest kernel",
                "intelRdt": "not applied", "personality": "not applied", "timeOffsets": "not applied",
                "memoryPolicy": "not applied", "netDevices": "use --net",
            ])
        for (index, namespace) in (try fields.decode([OCINamespace].self, "namespaces") ?? []).enumerated() {
            let field = fields.field("namespaces") + "[\(index)]"
            guard namespace.path == nil else { throw BundleError.unsupportedField(field + ".path", "joining a namespace") }
            switch namespace.type {
            case "pid", "network", "ipc", "uts", "mount", "cgroup", "time": break  // the VM has its own
            default: throw BundleError.unsupportedField(field + ".type", "the '\(namespace.type)' namespace is not given")
            }
        }
        _ = try fields.decode([String].self, "maskedPaths")
        _ = try fields.decode([String].self, "readonlyPaths")
        if let resources = try fields.decode(OCIResources.self, "resources") { _ = resources }
    }
}

/// `linux.namespaces[i]`.
struct OCINamespace: Decodable {
    var type: String
    var path: String?
}

/// `linux.resources`: only a device rule list that denies every device (runc's default) is
/// accepted: the VM has no device it was not given. Limits are refused (use --memory, --cpus).
struct OCIResources: Decodable {
    init(from decoder: any Decoder) throws {
        let limit = "resource limits are not applied (the VM's are --memory and --cpus)"
        let fields = try FieldSet(
            decoder, known: ["devices"],
            refused: Dictionary(
                uniqueKeysWithValues: ["memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma", "unified"].map {
                    ($0, limit)
                }))
        for (index, rule) in (try fields.decode([OCIDeviceRule].self, "devices") ?? []).enumerated() where rule.allow {
            throw BundleError.unsupportedField(
                fields.field("devices") + "[\(index)]", "device cgroup rules that allow a device are not applied")
        }
    }
}

/// `linux.resources.devices[i]`.
struct OCIDeviceRule: Decodable {
    var allow: Bool
    var type: String?
    var access: String?
    var major: Int64?
    var minor: Int64?
}
