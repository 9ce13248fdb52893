import CHost
import Glibc
import SwiftletHost

/// Who the VMM becomes once the machine is built (`MachineConfiguration.privilegeDrop`): every
/// host resource (`/dev/kvm` and the VM's descriptors, disk images, taps, the console) is open
/// by then, so the process runs the guest as `userID`:`groupID` with no supplementary groups,
/// optionally confined to `rootDirectory` (chroot). What the guest makes the VMM do afterwards
/// happens through descriptors already open; nothing is opened by path after the drop.
///
/// `Machine.start()` applies it before the vCPU threads run the guest, in the order that cannot
/// be undone halfway: chroot and chdir("/"), setgroups([]), setgid, setuid; then checks that
/// the real and effective ids are the new ones and, for a non-root user, that root cannot be
/// regained. Changing to another user needs root: `checkPermitted()` says so before anything
/// is built.
public struct PrivilegeDrop: Equatable, Sendable {
    /// The user id to run as (real, effective and saved).
    public var userID: UInt32
    /// The group id to run as (real, effective and saved); supplementary groups are dropped.
    public var groupID: UInt32
    /// A directory to chroot into first (nil: none). Must be absolute.
    public var rootDirectory: String?

    /// Run as `userID`:`groupID`, chrooted into `rootDirectory` if given.
    public init(userID: UInt32, groupID: UInt32, rootDirectory: String? = nil) {
        self.userID = userID
        self.groupID = groupID
        self.rootDirectory = rootDirectory
    }

    /// Checks the values: neither id is 4294967295 (-1, which the system calls read as "no
    /// change"), and a root directory is an absolute path.
    public func validate() throws(ConfigurationError) {
        guard userID != UInt32.max else { throw .badPrivilegeDrop("uid 4294967295 (-1) is not a user id") }
        guard groupID != UInt32.max else { throw .badPrivilegeDrop("gid 4294967295 (-1) is not a group id") }
        if let rootDirectory, !rootDirectory.hasPrefix("/") {
            throw .badPrivilegeDrop("the chroot directory '\(rootDirectory)' is not an absolute path")
        }
    }

    /// Throws unless this process can make the change: it runs as root (effective uid 0), or
    /// already as exactly this user and group with no chroot asked for.
    public func checkPermitted() throws(PrivilegeDropError) {
        let euid = geteuid()
        if euid == 0 { return }
        if rootDirectory == nil && getuid() == userID && euid == userID && getgid() == groupID && getegid() == groupID {
            return
        }
        throw .needsRoot(userID: userID, groupID: groupID, runningAs: euid)
    }

    /// Makes the change (see the type's description) and checks it took.
    public func apply() throws(PrivilegeDropError) {
        try checkPermitted()
        if let rootDirectory {
            guard chroot(rootDirectory) == 0 else { throw .system(.current("chroot \(rootDirectory)")) }
            guard chdir("/") == 0 else { throw .system(.current("chdir / in \(rootDirectory)")) }
        }
        if geteuid() == 0 {
            guard setgroups(0, nil) == 0 else { throw .system(.current("setgroups([])")) }
        }
        guard setgid(gid_t(groupID)) == 0 else { throw .system(.current("setgid(\(groupID))")) }
        guard setuid(uid_t(userID)) == 0 else { throw .system(.current("setuid(\(userID))")) }
        guard getuid() == userID, geteuid() == userID, getgid() == groupID, getegid() == groupID else {
            throw .notDropped(
                "running as uid \(getuid())/\(geteuid()) gid \(getgid())/\(getegid()) after asking for \(userID):\(groupID)")
        }
        if userID != 0 && (setuid(0) == 0 || seteuid(0) == 0) {
            throw .notDropped("uid 0 could be regained after setuid(\(userID))")
        }
    }
}

/// Dropping privileges failed (`PrivilegeDrop.apply()`); the machine does not start.
public enum PrivilegeDropError: Error, Sendable, CustomStringConvertible {
    /// Changing to `userID`:`groupID` (or a chroot) needs root; the process runs as `runningAs`.
    case needsRoot(userID: UInt32, groupID: UInt32, runningAs: UInt32)
    /// A system call of the change failed.
    case system(SystemError)
    /// The calls succeeded but the process's ids are not the ones asked for.
    case notDropped(String)

    /// One line saying what failed.
    public var description: String {
        switch self {
        case .needsRoot(let user, let group, let running):
            "changing to uid \(user) and gid \(group) needs root; swiftlet runs as uid \(running)"
        case .system(let error): "\(error)"
        case .notDropped(let what): what
        }
    }
}
