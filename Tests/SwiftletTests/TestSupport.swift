import CKVM
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

/// Shared helpers for the test suites.
enum TestSupport {
    /// Whether this host has KVM. KVM suites are skipped, with this reason, only when it has not.
    static let hasKVM = access("/dev/kvm", F_OK) == 0
    static let noKVMReason: Comment = "/dev/kvm is absent on this host: KVM suites need it"

    /// The repository root, from this file's path.
    static let repositoryRoot: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    /// A tiny guest built by `make guests` into Guests/build/.
    static func guest(_ name: String) throws -> String {
        let path = repositoryRoot + "/Guests/build/" + name
        guard access(path, R_OK) == 0 else {
            throw TestFailure("tiny guest \(path) is missing: run `make guests` (make test does)")
        }
        return path
    }

    /// Seconds every guest in the tests gets before it is stopped (and its test fails).
    static let guestDeadline: Double = 20

    /// Waits until `condition` holds, or throws after `seconds`. For conditions with no event to
    /// wait on (a word of guest memory a running guest writes), so it checks every millisecond.
    static func waitUntil(_ what: String, within seconds: Double = 10, _ condition: () throws -> Bool) throws {
        let deadline = Subprocess.monotonicNow() + seconds
        while try !condition() {
            guard Subprocess.monotonicNow() < deadline else { throw TestFailure("\(what): not within \(seconds) s") }
            usleep(1000)
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A file in /tmp with the given contents, removed when the value goes away.
final class TemporaryFile {
    let path: String

    init(contents: [UInt8]) throws {
        var template = Array("/tmp/swiftlet-test-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw TestFailure("mkstemp failed: errno \(errno)") }
        defer { close(fd) }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var written = 0
        while written < contents.count {
            let n = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            guard n > 0 else { throw TestFailure("writing \(path) failed: errno \(errno)") }
            written += n
        }
    }

    deinit { unlink(path) }
}

/// Runs a program with posix_spawn (stdin from /dev/null), with a deadline.
enum Subprocess {
    struct Result {
        /// The exit status, or -1 when the program died of a signal (or was killed at the deadline).
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs `path` with `arguments` (argv[0] is `path`); kills it after `timeout` seconds.
    /// `whileRunning` is called with the child's pid right after it was spawned.
    static func run(
        _ path: String, _ arguments: [String], timeout: Double = 60, whileRunning: ((pid_t) throws -> Void)? = nil
    ) throws -> Result {
        let output = try TemporaryFile(contents: [])
        let errors = try TemporaryFile(contents: [])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.path, O_WRONLY | O_TRUNC, 0)
        posix_spawn_file_actions_addopen(&actions, 2, errors.path, O_WRONLY | O_TRUNC, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard spawned == 0 else { throw TestFailure("posix_spawn \(path) failed: errno \(spawned)") }
        var status: Int32 = 0
        do { try whileRunning?(pid) } catch {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            throw error
        }
        guard try waitForExit(pid, status: &status, within: timeout) else {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            throw TestFailure("\(path) \(arguments.joined(separator: " ")) did not end within \(timeout) s")
        }
        // WIFEXITED / WEXITSTATUS are macros: a normal exit has the low 7 bits clear.
        let exitStatus = status & 0x7F == 0 ? (status >> 8) & 0xFF : -1
        return Result(status: exitStatus, stdout: try contents(of: output.path), stderr: try contents(of: errors.path))
    }

    /// Reaps the child `pid` into `status` once it exits, waiting at most `seconds` in poll(2)
    /// on its pidfd (readable when it has exited); false when it is still running then.
    static func waitForExit(_ pid: pid_t, status: inout Int32, within seconds: Double) throws -> Bool {
        let pidfd = swl_pidfd_open(pid)
        guard pidfd >= 0 else { throw TestFailure("pidfd_open \(pid) failed: errno \(errno)") }
        defer { close(pidfd) }
        let deadline = monotonicNow() + seconds
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { return true }
            if done < 0 && errno != EINTR { throw TestFailure("waitpid failed: errno \(errno)") }
            let left = deadline - monotonicNow()
            if left <= 0 { return false }
            var exited = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            _ = poll(&exited, 1, Int32(min(left, 3600) * 1000) + 1)
        }
    }

    static func contents(of path: String) throws -> String {
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

    static func monotonicNow() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
