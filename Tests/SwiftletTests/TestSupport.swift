import Glibc
import Swiftlet
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
