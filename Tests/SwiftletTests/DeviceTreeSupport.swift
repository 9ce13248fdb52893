import Glibc
import Swiftlet
import SwiftletBackends
import SwiftletDeviceTree
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import SwiftletTestSupport
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
    static func decompile(_ blob: DeviceTreeBlob, extraChecks: [String] = []) throws -> (
        status: Int32, dts: String, stderr: String
    ) {
        guard let path else { throw TestFailure("dtc is not installed") }
        let input = try TemporaryFile(contents: blob.bytes)
        let arguments = ["-I", "dtb", "-O", "dts"] + extraChecks.flatMap { ["-W", $0] } + [input.path]
        let result = try Subprocess.run(path, arguments)
        return (result.status, result.stdout, result.stderr)
    }
}
