import Glibc
import Swiftlet
import Testing

/// Runs `dtc` (Debian's device-tree-compiler) on blobs, with posix_spawn.
enum DTC {
    /// dtc's path from $PATH, or nil if it is not installed.
    static let path: String? = {
        let directories = (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin").split(separator: ":")
        return directories.map { "\($0)/dtc" }.first { access($0, X_OK) == 0 }
    }()
    static let absentReason: Comment = "dtc is not installed (Debian package device-tree-compiler; `make deps` installs it)"

    /// The checks dtc leaves off by default that Linux's `make dtbs W=1 W=2` turns on.
    static let strictChecks = [
        "node_name_chars_strict", "property_name_chars_strict", "avoid_unnecessary_addr_size", "alias_paths",
        "unique_unit_address", "graph_child_address", "simple_bus_reg",
    ]

    /// `dtc -I dtb -O dts` of `blob`, plus `-W check` for each of `extraChecks`: its exit
    /// status, the source it printed and its warnings (everything on stderr).
    static func decompile(_ blob: DeviceTreeBlob, extraChecks: [String] = []) throws -> (status: Int32, dts: String, stderr: String) {
        guard let path else { throw TestFailure("dtc is not installed") }
        let input = try TemporaryFile(contents: blob.bytes)
        let output = try TemporaryFile(contents: [])
        let errors = try TemporaryFile(contents: [])
        let arguments = ["dtc", "-I", "dtb", "-O", "dts"] + extraChecks.flatMap { ["-W", $0] } + [input.path]
        let status = try spawn(path, arguments, stdout: output.path, stderr: errors.path)
        return (status, try readFile(output.path), try readFile(errors.path))
    }

    private static func spawn(_ path: String, _ arguments: [String], stdout: String, stderr: String) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_TRUNC, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_TRUNC, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard result == 0 else { throw TestFailure("posix_spawn \(path) failed: errno \(result)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw TestFailure("waitpid failed: errno \(errno)") }
        }
        // WIFEXITED / WEXITSTATUS are macros: a normal exit has the low 7 bits clear.
        return status & 0x7F == 0 ? (status >> 8) & 0xFF : -1
    }

    private static func readFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open \(path) failed: errno \(errno)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw TestFailure("read \(path) failed: errno \(errno)") }
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
