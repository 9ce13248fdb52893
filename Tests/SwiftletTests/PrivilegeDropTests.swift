import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletCommandLine
@testable import SwiftletHost

/// `swiftlet boot --uid --gid [--chroot]`: the VMM runs the guest as that user once everything is
/// open. The drop happens in a `swiftlet` subprocess (it is process-wide), observed through
/// /proc/PID while the guest runs: the rate-limited stream guest takes about 2 s and needs its
/// disk all along, so it also shows that the open resources keep working after the drop.
@Suite("Privilege drop: --uid, --gid, --chroot", .serialized, .timeLimit(.minutes(2)))
struct PrivilegeDropTests {
    static let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"
    static let isRoot = geteuid() == 0

    /// The lines of /proc/`pid`/status starting with `Uid:`, `Gid:` and `Groups:`, once the uid
    /// is no longer 0 (or the last seen when the process ended or 10 s passed).
    static func identity(of pid: pid_t, rootLink: inout String?) throws -> [String] {
        var last: [String] = []
        let deadline = Subprocess.monotonicNow() + 10
        while Subprocess.monotonicNow() < deadline {
            guard let status = try? Subprocess.contents(of: "/proc/\(pid)/status") else { break }
            last = status.split(separator: "\n").map(String.init).filter {
                $0.hasPrefix("Uid:") || $0.hasPrefix("Gid:") || $0.hasPrefix("Groups:")
            }
            if let uid = last.first(where: { $0.hasPrefix("Uid:") }), !uid.hasSuffix("\t0") {
                var buffer = [CChar](repeating: 0, count: 4096)
                let count = readlink("/proc/\(pid)/root", &buffer, buffer.count - 1)
                if count >= 0 {
                    rootLink = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }
                return last
            }
            usleep(2000)
        }
        return last
    }

    @Test("the options read as the configuration's PrivilegeDrop; names are looked up")
    func parsing() throws {
        let boot = try Boot.parse(["--kernel", "/k", "--uid", "1000", "--gid", "100", "--chroot", "/srv/vm"])
        #expect(boot.configuration.privilegeDrop == PrivilegeDrop(userID: 1000, groupID: 100, rootDirectory: "/srv/vm"))
        let named = try Boot.parse(["--kernel", "/k", "--uid", "root", "--gid", "root"])
        #expect(named.configuration.privilegeDrop == PrivilegeDrop(userID: 0, groupID: 0))
        #expect(try Boot.parse(["--kernel", "/k"]).configuration.privilegeDrop == nil)
    }

    @Test(
        "booted as root with --uid 65534 --gid 65534, the guest runs to its end as that user with no groups",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .enabled(if: isRoot, "needs root"),
        arguments: [false, true])
    func dropsToNobody(chroot: Bool) throws {
        let image = try TemporaryFile(contents: [UInt8](repeating: 0, count: 8 << 20))
        var directory = Array("/tmp/swiftlet-chroot-XXXXXX".utf8CString)
        let root = directory.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) }
        let chrootDirectory = try #require(root)
        defer { rmdir(chrootDirectory) }
        var rootLink: String?
        var identity: [String] = []
        let arguments =
            [
                "boot", "--kernel", try TestSupport.guest("virtio-blk-stream.elf"), "--disk", "\(image.path),bw=512K/125",
                "--uid", "65534", "--gid", "65534", "--timeout", "20",
            ] + (chroot ? ["--chroot", chrootDirectory] : [])
        let result = try Subprocess.run(Self.binary, arguments, timeout: 60) { pid in
            identity = try Self.identity(of: pid, rootLink: &rootLink)
        }
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.hasSuffix("stream: requests=128 bytes=8388608 failures=0\ndone\n"))
        // The kernel ends the Groups line with a space after the (empty) list.
        let fields = identity.map { $0.split(whereSeparator: { $0 == "\t" || $0 == " " }).joined(separator: " ") }
        #expect(fields == ["Uid: 65534 65534 65534 65534", "Gid: 65534 65534 65534 65534", "Groups:"])
        #expect(rootLink == (chroot ? chrootDirectory : "/"))
    }

    @Test(
        "swiftlet restore --uid 65534 --gid 65534 goes on from the snapshot as that user",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .enabled(if: isRoot, "needs root"))
    func restoreDrops() throws {
        let parsed = try Restore.parse(["/snap", "--uid", "7", "--gid", "8"])
        #expect(parsed.privilegeDrop == PrivilegeDrop(userID: 7, groupID: 8))
        #expect(throws: UsageError("--gid: needs --uid as well")) { try Restore.parse(["/snap", "--gid", "8"]) }
        let directory = try TemporaryDirectory()
        let snapshot = directory.path + "/snap"
        let boot = try Subprocess.run(
            Self.binary,
            [
                "boot", "--kernel", try TestSupport.guest("snapshot-counter.elf"), "--snapshot-when-ready", snapshot, "--timeout",
                "20",
            ])
        #expect(boot.status == 0, "\(boot.stderr)")
        var rootLink: String?
        var identity: [String] = []
        let restore = try Subprocess.run(
            Self.binary, ["restore", snapshot, "--uid", "65534", "--gid", "65534", "--timeout", "20"], timeout: 60
        ) { pid in identity = try Self.identity(of: pid, rootLink: &rootLink) }
        #expect(restore.status == 40, "\(restore.stderr)")
        #expect(restore.stdout.hasPrefix("ready\ncount 21\n"))
        #expect(restore.stdout.hasSuffix("snapshot-counter: done at 40\n"))
        #expect(identity.first.map { $0.split(separator: "\t").dropFirst().allSatisfy { $0 == "65534" } } == true, "\(identity)")
    }

    @Test(
        "not root: a clear one-line error before anything is built, exit status 1",
        .enabled(if: isRoot && access("/usr/bin/setpriv", X_OK) == 0, "needs root and setpriv to become another user"))
    func notRoot() throws {
        let result = try Subprocess.run(
            "/usr/bin/setpriv",
            [
                "--reuid=65534", "--regid=65534", "--clear-groups", Self.binary, "boot", "--kernel",
                try TestSupport.guest("longmode-hello.elf"), "--uid", "1", "--gid", "1",
            ])
        #expect(result.status == 1)
        #expect(result.stdout == "")
        #expect(
            result.stderr
                == "swiftlet: cannot drop privileges: changing to uid 1 and gid 1 needs root; swiftlet runs as uid 65534\n")
    }
}
