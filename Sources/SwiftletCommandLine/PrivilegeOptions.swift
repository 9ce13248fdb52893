import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// A command that can run its guest unprivileged (`boot`): `--uid`, `--gid` and `--chroot`
/// collect here, and `parsedPrivilegeDrop()` turns them into the configuration's `PrivilegeDrop`.
protocol PrivilegeDroppingCommand: Sendable {
    var userID: UInt32? { get set }
    var groupID: UInt32? { get set }
    var rootDirectory: String? { get set }
}

extension PrivilegeDroppingCommand {
    /// The drop the options ask for: nil when none was given; `--uid` and `--gid` go together
    /// (`--chroot` needs them too: a chroot alone would leave the VMM root).
    func parsedPrivilegeDrop() throws(UsageError) -> PrivilegeDrop? {
        switch (userID, groupID) {
        case (nil, nil):
            guard rootDirectory == nil else { throw UsageError("--chroot: needs --uid and --gid (the user to run as)") }
            return nil
        case (let user?, let group?):
            return PrivilegeDrop(userID: user, groupID: group, rootDirectory: rootDirectory)
        case (nil, _?): throw UsageError("--gid: needs --uid as well")
        case (_?, nil): throw UsageError("--uid: needs --gid as well")
        }
    }
}

extension CommandOption where Settings: PrivilegeDroppingCommand {
    static var uid: Self {
        CommandOption(
            "--uid", value: "user",
            help: "Run as this user (a name or number) once every host resource is open; needs root and --gid."
        ) { settings, text throws(UsageError) in settings.userID = try PrivilegeSyntax.userID(text) }
    }

    static var gid: Self {
        CommandOption("--gid", value: "group", help: "Run as this group (a name or number), with no supplementary groups.") {
            settings, text throws(UsageError) in settings.groupID = try PrivilegeSyntax.groupID(text)
        }
    }

    static var chroot: Self {
        CommandOption("--chroot", value: "dir", help: "Chroot into this directory when dropping privileges (with --uid).") {
            settings, text throws(UsageError) in
            guard text.hasPrefix("/") else { throw UsageError("not an absolute path") }
            settings.rootDirectory = text
        }
    }
}

/// How `--uid` and `--gid` values are read.
enum PrivilegeSyntax {
    /// A decimal id below 4294967295 (which means -1, "no change", to the system calls).
    static func number(_ text: String) -> UInt32? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = UInt32(text),
            value != UInt32.max
        else { return nil }
        return value
    }

    /// A numeric uid, or a user name looked up in the user database.
    static func userID(_ text: String) throws(UsageError) -> UInt32 {
        if let id = number(text) { return id }
        guard !text.isEmpty, text.utf8.first.map({ $0 < 0x30 || $0 > 0x39 }) == true else {
            throw UsageError("not a user id (0-4294967294) or name")
        }
        guard let entry = getpwnam(text) else { throw UsageError("no such user") }
        return entry.pointee.pw_uid
    }

    /// A numeric gid, or a group name looked up in the group database.
    static func groupID(_ text: String) throws(UsageError) -> UInt32 {
        if let id = number(text) { return id }
        guard !text.isEmpty, text.utf8.first.map({ $0 < 0x30 || $0 > 0x39 }) == true else {
            throw UsageError("not a group id (0-4294967294) or name")
        }
        guard let entry = getgrnam(text) else { throw UsageError("no such group") }
        return entry.pointee.gr_gid
    }
}
