/// Linux capability names and numbers (linux/capability.h), for `process.capabilities`.
enum Capability {
    /// `CAP_CHOWN` is 0, in the kernel's order.
    static let names = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    /// The bounding set as capability numbers. The guest kernel gives a uid-0 process exactly its
    /// bounding set at exec (effective = permitted = bounding), and a process of another uid none,
    /// so the other sets are honoured only when they say the same: for uid 0 effective and
    /// permitted equal to bounding, inheritable and ambient within it; for another uid all four
    /// others empty. Anything else is refused, naming the set.
    static func boundingSet(_ caps: OCICapabilities, uid: UInt32) throws(BundleError) -> [Int] {
        func numbers(_ list: [String], _ set: String) throws(BundleError) -> Set<Int> {
            var result = Set<Int>()
            for name in list {
                guard let number = names.firstIndex(of: name) else {
                    throw .badValue("\(caps.field).\(set)", "unknown capability '\(name)'")
                }
                result.insert(number)
            }
            return result
        }
        let bounding = try numbers(caps.bounding, "bounding")
        let sets = [
            ("effective", try numbers(caps.effective, "effective")), ("permitted", try numbers(caps.permitted, "permitted")),
            ("inheritable", try numbers(caps.inheritable, "inheritable")), ("ambient", try numbers(caps.ambient, "ambient")),
        ]
        for (name, set) in sets {
            let honoured =
                uid == 0
                ? (name == "effective" || name == "permitted" ? set == bounding : set.isSubset(of: bounding)) : set.isEmpty
            if !honoured {
                throw .unsupportedField(
                    "\(caps.field).\(name)",
                    uid == 0
                        ? "a uid-0 process gets its bounding set as effective and permitted; make them equal"
                        : "a process of a non-zero uid holds no capabilities in the guest")
            }
        }
        return bounding.sorted()
    }
}

/// `process.rlimits[].type` names and their Linux resource numbers.
enum ResourceLimit {
    static let numbers: [String: Int] = [
        "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
        "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
        "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
    ]
}
