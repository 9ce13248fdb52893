import Glibc
import Swiftlet
import SwiftletBundle
import Testing

/// A bundle directory in /tmp: config.json with the given text and a `rootfs` directory with
/// `dirs` in it; removed when the value goes away.
final class TemporaryBundle {
    let path: String

    init(config: String?, dirs: [String] = ["proc", "dev", "tmp", "work"]) throws {
        var template = Array("/tmp/swiftlet-bundle-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TestFailure("mkdtemp failed: errno \(errno)")
        }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        mkdir(path + "/rootfs", 0o755)
        for dir in dirs { mkdir(path + "/rootfs/" + dir, 0o755) }
        if let config { try write(config, to: "config.json") }
    }

    func write(_ text: String, to name: String) throws {
        let fd = open(path + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw TestFailure("cannot create \(name)") }
        defer { close(fd) }
        let written = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        guard written == text.utf8.count else { throw TestFailure("cannot write \(name)") }
    }

    deinit { _ = try? Subprocess.run("/bin/rm", ["-rf", path]) }
}

/// A config.json: a valid one, with `process`, `root` or more replaced by `replacing`.
func bundleConfig(
    version: String = "\"1.0.2\"", process: String? = nil, root: String = #"{"path": "rootfs", "readonly": true}"#,
    mounts: String = #"[{"destination": "/proc", "type": "proc", "source": "proc"}]"#, extra: String = ""
) -> String {
    let process =
        process
        ?? #"{"terminal": false, "user": {"uid": 1000, "gid": 1001}, "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=b"], "cwd": "/work"}"#
    return
        #"{"ociVersion": \#(version), "process": \#(process), "root": \#(root), "hostname": "box", "mounts": \#(mounts)\#(extra)}"#
}

@Suite("OCI bundles: parsing and validation")
struct BundleParsingTests {
    func load(_ config: String?, arguments: [String]? = nil) throws -> ContainerBundle {
        let bundle = try TemporaryBundle(config: config)
        return try ContainerBundle(at: bundle.path, arguments: arguments)
    }

    func refusal(_ config: String?) throws -> BundleError? {
        do {
            _ = try load(config)
            return nil
        } catch let error as BundleError {
            #expect(!error.description.contains("\n"))
            return error
        }
    }

    @Test("a valid bundle is read into a value: args, env, cwd, ids, hostname, root, mounts")
    func valid() throws {
        let bundle = try TemporaryBundle(config: bundleConfig())
        let parsed = try ContainerBundle(at: bundle.path)
        #expect(parsed.process.arguments == ["sh", "-c", "echo hi"])
        #expect(parsed.process.environment == ["PATH=/bin", "A=b"])
        #expect(parsed.process.workingDirectory == "/work")
        #expect(parsed.process.uid == 1000 && parsed.process.gid == 1001)
        #expect(parsed.hostname == "box")
        #expect(parsed.rootReadOnly)
        #expect(parsed.rootPath.hasSuffix("/rootfs"))
        #expect(parsed.mounts.map { [$0.type, $0.source, $0.destination, $0.data] } == [["proc", "proc", "/proc", ""]])
        #expect(parsed.mounts.map(\.flags) == [0])
    }

    @Test("-- CMD replaces process.args; empty args without one is refused")
    func overrideAndEmpty() throws {
        let process = #"{"args": [], "cwd": "/"}"#
        #expect(try load(bundleConfig(process: process), arguments: ["echo", "x"]).process.arguments == ["echo", "x"])
        #expect(try refusal(bundleConfig(process: process)) == .emptyArgs)
        #expect(try refusal(bundleConfig(process: #"{"cwd": "/"}"#)) == .emptyArgs)
    }

    @Test("no config.json, invalid JSON, a wrong type")
    func badFiles() throws {
        #expect(try refusal(nil).map { if case .noConfig = $0 { true } else { false } } == true)
        #expect(try refusal("{ not json").map { if case .invalidJSON = $0 { true } else { false } } == true)
        let wrongType = try refusal(bundleConfig(process: #"{"args": "sh"}"#))
        #expect(wrongType == .invalidJSON("process.args has the wrong type"))
    }

    @Test("ociVersion must be 1.x", arguments: ["\"2.0.0\"", "\"0.9\"", "\"10.0\""])
    func version(version: String) throws {
        let error = try refusal(bundleConfig(version: version))
        #expect(error == .unsupportedVersion(String(version.dropFirst().dropLast())))
    }

    @Test("a missing ociVersion is refused; 1.2.0 is accepted")
    func versionPresence() throws {
        #expect(try refusal(#"{"process": {"args": ["sh"]}, "root": {"path": "rootfs"}}"#) == .unsupportedVersion(nil))
        #expect(try load(bundleConfig(version: "\"1.2.0\"")).process.arguments.count == 3)
    }

    @Test("a missing root, and a root outside the bundle")
    func roots() throws {
        let missing = try refusal(bundleConfig(root: #"{"path": "nothere"}"#))
        #expect(missing.map { if case .missingRoot = $0 { true } else { false } } == true)
        #expect(try refusal(bundleConfig(root: #"{"path": "/tmp"}"#)) == .rootOutsideBundle("/tmp"))
        #expect(try refusal(bundleConfig(root: #"{"path": "rootfs/../.."}"#)) == .rootOutsideBundle("/tmp"))
        #expect(try refusal(bundleConfig(extra: "").replacingRoot()) == .missingField("root"))
    }

    @Test(
        "a uid or gid that is not a number",
        arguments: [
            #"{"uid": "root", "gid": 0}"#, #"{"uid": 0, "gid": "wheel"}"#, #"{"uid": 0, "gid": 1.5}"#, #"{"uid": 0, "gid": -1}"#,
        ])
    func nonNumericUser(user: String) throws {
        let error = try refusal(bundleConfig(process: #"{"args": ["sh"], "user": \#(user)}"#))
        #expect(error == .notANumber(user.contains("root") ? "process.user.uid" : "process.user.gid"))
    }

    @Test(
        "mounts of other types are refused, naming the mount",
        arguments: [
            (#"{"destination": "/dev/pts", "type": "devpts", "source": "devpts"}"#, "devpts"),
            (#"{"destination": "/data", "source": "/srv", "options": ["bind"]}"#, "bind"),
            (#"{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}"#, "cgroup"),
        ])
    func mountTypes(mount: String, type: String) throws {
        let error = try refusal(bundleConfig(mounts: #"[{"destination": "/proc", "type": "proc"}, \#(mount)]"#))
        #expect(error == .unsupportedMountType("mounts[1]", type))
    }

    @Test("mount options become flags and data; propagation options are refused")
    func mountOptions() throws {
        let mounts = #"[{"destination": "/tmp", "type": "tmpfs", "options": ["nosuid", "nodev", "ro", "mode=1777", "size=64k"]}]"#
        let mount = try load(bundleConfig(mounts: mounts)).mounts[0]
        #expect(mount.flags == 1 | 2 | 4)
        #expect(mount.data == "mode=1777,size=64k")
        #expect(mount.source == "tmpfs")
        let refused = try refusal(bundleConfig(mounts: #"[{"destination": "/tmp", "type": "tmpfs", "options": ["rprivate"]}]"#))
        #expect(refused == .unsupportedMountOption("mounts[0]", "rprivate"))
    }

    @Test("a read-only root must already hold each mount point")
    func mountPointInReadOnlyRoot() throws {
        let error = try refusal(bundleConfig(mounts: #"[{"destination": "/sys", "type": "sysfs"}]"#))
        #expect(error.map { if case .badValue("mounts[0].destination", _) = $0 { true } else { false } } == true)
    }

    @Test(
        "fields Swiftlet cannot honour are refused, naming the field",
        arguments: [
            (#", "hooks": {"prestart": []}"#, "hooks"),
            (#", "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}"#, "linux.seccomp"),
            (#", "linux": {"namespaces": [{"type": "user"}]}"#, "linux.namespaces[0].type"),
            (#", "linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}]}"#, "linux.namespaces[0].path"),
            (#", "linux": {"resources": {"memory": {"limit": 1000}}}"#, "linux.resources.memory"),
            (#", "linux": {"sysctl": {"a": "b"}}"#, "linux.sysctl"),
            (#", "someExtension": 1"#, "someExtension"),
        ])
    func refusedFields(extra: String, field: String) throws {
        let error = try refusal(bundleConfig(extra: extra))
        #expect(
            error.map { if case .unsupportedField(field, _) = $0 { true } else { false } } == true, "\(String(describing: error))"
        )
    }

    @Test("process fields that cannot be honoured are refused")
    func refusedProcessFields() throws {
        let apparmor = try refusal(bundleConfig(process: #"{"args": ["sh"], "apparmorProfile": "x"}"#))
        #expect(apparmor.map { if case .unsupportedField("process.apparmorProfile", _) = $0 { true } else { false } } == true)
        let groups = try refusal(bundleConfig(process: #"{"args": ["sh"], "user": {"uid": 0, "gid": 0, "additionalGids": [5]}}"#))
        #expect(groups.map { if case .unsupportedField("process.user.additionalGids", _) = $0 { true } else { false } } == true)
        let rlimit = try refusal(
            bundleConfig(process: #"{"args": ["sh"], "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}"#))
        #expect(rlimit.map { if case .badValue("process.rlimits[0].type", _) = $0 { true } else { false } } == true)
        let env = try refusal(bundleConfig(process: #"{"args": ["sh"], "env": ["NOEQUALS"]}"#))
        #expect(env.map { if case .badValue("process.env[0]", _) = $0 { true } else { false } } == true)
        let cwd = try refusal(bundleConfig(process: #"{"args": ["sh"], "cwd": "relative"}"#))
        #expect(cwd.map { if case .badValue("process.cwd", _) = $0 { true } else { false } } == true)
    }

    @Test("capabilities: runc's default set is honoured as the bounding set; sets the guest cannot give are refused")
    func capabilities() throws {
        let runcDefault = #"["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]"#
        let caps =
            #"{"bounding": \#(runcDefault), "effective": \#(runcDefault), "permitted": \#(runcDefault), "ambient": \#(runcDefault)}"#
        let parsed = try load(bundleConfig(process: #"{"args": ["sh"], "capabilities": \#(caps), "noNewPrivileges": true}"#))
        #expect(parsed.process.capabilityBoundingSet == [5, 10, 29])
        #expect(parsed.process.noNewPrivileges)
        let narrower = #"{"bounding": \#(runcDefault), "effective": ["CAP_KILL"], "permitted": \#(runcDefault)}"#
        let error = try refusal(bundleConfig(process: #"{"args": ["sh"], "capabilities": \#(narrower)}"#))
        #expect(error.map { if case .unsupportedField("process.capabilities.effective", _) = $0 { true } else { false } } == true)
        let unknown = try refusal(bundleConfig(process: #"{"args": ["sh"], "capabilities": {"bounding": ["CAP_FLY"]}}"#))
        #expect(unknown.map { if case .badValue("process.capabilities.bounding", _) = $0 { true } else { false } } == true)
    }

    @Test("runc spec's default config is refused at its first mount Swiftlet cannot give (devpts)")
    func runcSpecDefault() throws {
        let mounts = #"""
            [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
             {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance"]}]
            """#
        let extra =
            #", "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}, "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}], "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}"#
        #expect(try refusal(bundleConfig(mounts: mounts, extra: extra)) == .unsupportedMountType("mounts[2]", "devpts"))
    }
}

extension String {
    /// The config without its root: for the missing-root check.
    fileprivate func replacingRoot() -> String {
        guard let range = range(of: #""root": {"path": "rootfs", "readonly": true}, "#) else { return self }
        return replacingCharacters(in: range, with: "")
    }
}

@Suite("OCI bundles: machine configuration, spec disk, kernel discovery, image key")
struct BundleConversionTests {
    @Test("a bundle becomes a machine: root disk first (read-only), spec disk second, bundle mode on the command line")
    func machineConfiguration() throws {
        let bundle = try TemporaryBundle(config: bundleConfig())
        let parsed = try ContainerBundle(at: bundle.path)
        let kernel = GuestKernel(kernelPath: "/k/vmlinux", initrdPath: "/k/initramfs.cpio", extraCommandLine: "noxsave")
        var base = MachineConfiguration(kernelPath: "", memorySize: 256 << 20, vcpuCount: 2)
        base.disks = [DiskConfiguration(path: "/extra.img")]
        let configuration = parsed.machineConfiguration(kernel: kernel, rootImage: "/r.ext4", specImage: "/s.img", base: base)
        #expect(configuration.kernelPath == "/k/vmlinux")
        #expect(configuration.initrdPath == "/k/initramfs.cpio")
        #expect(configuration.memorySize == 256 << 20 && configuration.vcpuCount == 2)
        #expect(configuration.disks.map(\.path) == ["/r.ext4", "/s.img", "/extra.img"])
        #expect(configuration.disks[0].readOnly && configuration.disks[1].readOnly && !configuration.disks[2].readOnly)
        #expect(configuration.commandLine == LinuxBoot.defaultCommandLine + " noxsave quiet swiftlet.bundle=1")
        try configuration.validate()
    }

    @Test("the spec disk holds the header, the body length and every record")
    func specDisk() throws {
        let bundle = try TemporaryBundle(config: bundleConfig())
        let disk = ProcessSpec.encode(try ContainerBundle(at: bundle.path, arguments: ["echo", "a b"]))
        #expect(disk.count % 4096 == 0)
        let text = String(decoding: disk, as: UTF8.self)
        let lines = text.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
        #expect(lines[0] == "swiftlet-spec 1")
        let length = try #require(Int(lines[1]))
        let body = Array(lines[2].utf8.prefix(length))
        #expect(body.count == length && body.last == 0)
        let fields = body.split(separator: 0, omittingEmptySubsequences: false).dropLast().map {
            String(decoding: $0, as: UTF8.self)
        }
        #expect(Array(fields.prefix(4)) == ["arg", "echo", "arg", "a b"])
        #expect(fields.contains("hostname") && fields.contains("box"))
        #expect(fields.contains("proc\nproc\n/proc\n0\n"))
        let uid = try #require(fields.firstIndex(of: "uid"))
        #expect(fields[uid + 1] == "1000")
    }

    @Test("kernel discovery: a missing cache names the command that builds it; boot.conf adds its words and mask")
    func kernelDiscovery() throws {
        let cache = try TemporaryBundle(config: nil, dirs: [])
        do {
            _ = try GuestKernel.find(cacheDirectory: cache.path)
            Issue.record("found a kernel in an empty cache")
        } catch {
            #expect(error.description.contains("make guest-kernel guest-initramfs"))
        }
        mkdir(cache.path + "/kernel-current", 0o755)
        try cache.write("x", to: "kernel-current/vmlinux")
        try cache.write("x", to: "initramfs.cpio")
        #expect(try GuestKernel.find(cacheDirectory: cache.path).extraCommandLine == "")
        try cache.write("# comment\ncmdline: noxsave tsc=reliable\ncpuid-mask: cx16,popcnt\n", to: "kernel-current/boot.conf")
        let found = try GuestKernel.find(cacheDirectory: cache.path)
        #expect(found.kernelPath == cache.path + "/kernel-current/vmlinux")
        #expect(found.extraCommandLine == "noxsave tsc=reliable")
        #expect(found.cpuidMask.map(\.name) == ["cx16", "popcnt"])
        try cache.write("bogus line\n", to: "kernel-current/boot.conf")
        #expect(throws: GuestKernelError.self) { try GuestKernel.find(cacheDirectory: cache.path) }
    }

    @Test("SHA-256 matches the FIPS 180-4 examples")
    func sha256() {
        var empty = SHA256()
        #expect(empty.finish() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        var abc = SHA256()
        abc.update("abc")
        #expect(abc.finish() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var long = SHA256()
        for _ in 0..<1000 { long.update(String(repeating: "a", count: 1000)) }
        #expect(long.finish() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test("the root image's key follows contents, modes and links, and nothing else")
    func imageKey() throws {
        let bundle = try TemporaryBundle(config: nil)
        let root = bundle.path + "/rootfs"
        try bundle.write("one", to: "rootfs/file")
        let first = try RootFilesystemImage.summarize(root).key
        #expect(try RootFilesystemImage.summarize(root).key == first)
        try bundle.write("two", to: "rootfs/file")
        let second = try RootFilesystemImage.summarize(root).key
        #expect(second != first)
        chmod(root + "/file", 0o600)
        let third = try RootFilesystemImage.summarize(root).key
        #expect(third != second)
        symlink("file", root + "/link")
        #expect(try RootFilesystemImage.summarize(root).key != third)
    }
}

@Suite("swiftlet run: bad command lines and bad bundles through the real binaries")
struct RunCLITests {
    static let binary = CLITests.binary

    func run(_ arguments: String...) throws -> Subprocess.Result {
        guard access(Self.binary + "-run", X_OK) == 0 else {
            throw TestFailure("swiftlet-run is missing: run `swift build` first")
        }
        return try Subprocess.run(Self.binary, ["run"] + arguments, timeout: 60)
    }

    func expectOneLine(_ result: Subprocess.Result, status: Int32, prefix: String) {
        #expect(result.status == status, "\(result.stderr)")
        #expect(result.stderr.hasPrefix(prefix), "\(result.stderr)")
        if status == 1 { #expect(result.stderr.filter { $0 == "\n" }.count == 1) }
    }

    @Test("usage errors exit 64; --help works from swiftlet itself")
    func usage() throws {
        expectOneLine(try run("--bogus"), status: 64, prefix: "swiftlet: unknown option '--bogus'")
        expectOneLine(try run("--memory", "lots"), status: 64, prefix: "swiftlet: --memory 'lots'")
        expectOneLine(try run("--"), status: 64, prefix: "swiftlet: no command after '--'")
        expectOneLine(try run("a", "b"), status: 64, prefix: "swiftlet: unexpected argument 'b'")
        expectOneLine(try run("../x"), status: 64, prefix: "swiftlet: <ID> '../x'")
        let help = try run("--help")
        #expect(help.status == 0)
        #expect(help.stdout.contains("USAGE: swiftlet run [--bundle <dir>]"))
        #expect(help.stdout.contains("--timeout <seconds>") && help.stdout.contains("--cpus <n>"))
    }

    @Test("bad bundles exit 1 with one line")
    func badBundles() throws {
        let empty = try TemporaryBundle(config: nil)
        expectOneLine(try run("--bundle", empty.path), status: 1, prefix: "swiftlet: no config.json in the bundle")
        let invalid = try TemporaryBundle(config: "{ nope")
        expectOneLine(try run("--bundle", invalid.path), status: 1, prefix: "swiftlet: config.json is not valid")
        let uid = try TemporaryBundle(config: bundleConfig(process: #"{"args": ["sh"], "user": {"uid": "root", "gid": 0}}"#))
        expectOneLine(try run("--bundle", uid.path), status: 1, prefix: "swiftlet: config.json: process.user.uid is not a number")
        let version = try TemporaryBundle(config: bundleConfig(version: "\"2.0\""))
        expectOneLine(try run("--bundle", version.path), status: 1, prefix: "swiftlet: ociVersion '2.0' is not supported")
        let mount = try TemporaryBundle(config: bundleConfig(mounts: #"[{"destination": "/dev/mqueue", "type": "mqueue"}]"#))
        expectOneLine(try run("--bundle", mount.path), status: 1, prefix: "swiftlet: config.json: mounts[0].type 'mqueue'")
        let outside = try TemporaryBundle(config: bundleConfig(root: #"{"path": "/usr"}"#))
        expectOneLine(try run("--bundle", outside.path), status: 1, prefix: "swiftlet: config.json: root.path /usr is outside")
        let args = try TemporaryBundle(config: bundleConfig(process: #"{"args": []}"#))
        expectOneLine(try run("--bundle", args.path), status: 1, prefix: "swiftlet: config.json: process.args is empty")
        let good = try TemporaryBundle(config: bundleConfig())
        expectOneLine(
            try run("--bundle", good.path, "--kernel", "/nonexistent"), status: 1,
            prefix: "swiftlet: --kernel /nonexistent: no such")
    }

    @Test("without swiftlet-run beside it, swiftlet run says where it looked")
    func missingRunner() throws {
        let directory = try TemporaryBundle(config: nil, dirs: [])
        let copy = directory.path + "/swiftlet"
        _ = try Subprocess.run("/bin/cp", [Self.binary, copy])
        let result = try Subprocess.run(copy, ["run", "--bundle", directory.path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("needs swiftlet-run beside swiftlet: \(directory.path)/swiftlet-run"), "\(result.stderr)")
    }
}
