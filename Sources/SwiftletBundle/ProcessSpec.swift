/// The process spec disk: what the guest's init needs to start the bundle's process, written per
/// run as a small raw disk (`/dev/vdb` in the guest). The format (also documented in
/// Guests/initramfs/init.c, which reads it): the header `swiftlet-spec 1\n`, the body's length
/// as a decimal line, then the body: records `KEY NUL VALUE NUL` (arg, env, cwd, uid, gid,
/// hostname, terminal, rootro, nonewprivs, capbound, rlimit, mount), padded to 4 KiB.
public enum ProcessSpec {
    /// The spec of `bundle` as the disk's bytes (a multiple of 4096).
    public static func encode(_ bundle: ContainerBundle) -> [UInt8] {
        var body: [UInt8] = []
        func record(_ key: String, _ value: String) {
            body += key.utf8
            body.append(0)
            body += value.utf8
            body.append(0)
        }
        let process = bundle.process
        for argument in process.arguments { record("arg", argument) }
        for variable in process.environment { record("env", variable) }
        record("cwd", process.workingDirectory)
        record("uid", String(process.uid))
        record("gid", String(process.gid))
        if let hostname = bundle.hostname { record("hostname", hostname) }
        record("terminal", process.terminal ? "1" : "0")
        record("rootro", bundle.rootReadOnly ? "1" : "0")
        record("nonewprivs", process.noNewPrivileges ? "1" : "0")
        if let bounding = process.capabilityBoundingSet { record("capbound", bounding.map(String.init).joined(separator: ",")) }
        for limit in process.resourceLimits { record("rlimit", "\(limit.resource)\n\(limit.soft)\n\(limit.hard)") }
        for mount in bundle.mounts {
            record("mount", "\(mount.type)\n\(mount.source)\n\(mount.destination)\n\(mount.flags)\n\(mount.data)")
        }
        var disk = Array("swiftlet-spec 1\n\(body.count)\n".utf8) + body
        disk += [UInt8](repeating: 0, count: (4096 - disk.count % 4096) % 4096)
        return disk
    }
}
