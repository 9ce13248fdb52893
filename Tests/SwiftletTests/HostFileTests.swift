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

/// A directory in /tmp holding a FIFO nobody writes, a bound Unix socket and a subdirectory:
/// paths that must be refused as kernels, initrds and disks. Removed when the value goes away.
final class SpecialFiles {
    let directory: String
    var fifo: String { directory + "/fifo" }
    var socket: String { directory + "/socket" }
    var subdirectory: String { directory + "/dir" }
    private let socketDescriptor: Int32

    init() throws {
        var template = Array("/tmp/swiftlet-special-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TestFailure("mkdtemp failed: errno \(errno)")
        }
        directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard mkfifo(directory + "/fifo", 0o600) == 0 else { throw TestFailure("mkfifo failed: errno \(errno)") }
        guard mkdir(directory + "/dir", 0o700) == 0 else { throw TestFailure("mkdir failed: errno \(errno)") }
        socketDescriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard socketDescriptor >= 0 else { throw TestFailure("socket failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((directory + "/socket").utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { throw TestFailure("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socketDescriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw TestFailure("bind failed: errno \(errno)") }
    }

    deinit {
        close(socketDescriptor)
        unlink(socket)
        unlink(fifo)
        rmdir(subdirectory)
        rmdir(directory)
    }

    /// A host block device that exists (a loop device by preference), or nil.
    static let blockDevice: String? = (0..<8).map { "/dev/loop\($0)" }.first { path in
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFBLK
    }
}

/// Opening user-given files: only the accepted kinds are opened, nothing blocks.
@Suite("HostFile")
struct HostFileTests {
    @Test("a FIFO, a socket, a directory and character devices are refused by kind, without blocking")
    func refusedKinds() throws {
        let files = try SpecialFiles()
        let cases: [(String, HostFileKind)] = [
            (files.fifo, .fifo), (files.socket, .socket), (files.subdirectory, .directory),
            ("/dev/null", .characterDevice), ("/dev/zero", .characterDevice),
        ]
        for (path, kind) in cases {
            for flags in [O_RDONLY, O_RDWR] {
                #expect(throws: HostFileError.unsupportedKind(path: path, kind: kind, accepted: [.regularFile, .blockDevice])) {
                    try OwnedFileDescriptor(openingHostFile: path, flags: flags, accepting: [.regularFile, .blockDevice])
                }
            }
        }
    }

    @Test("a regular file opens, blocking again (O_NONBLOCK cleared), close-on-exec")
    func regularFile() throws {
        let file = try TemporaryFile(contents: [1, 2, 3])
        let fd = try OwnedFileDescriptor(openingHostFile: file.path, flags: O_RDONLY, accepting: [.regularFile])
        #expect(fcntl(fd.rawValue, F_GETFL) & O_NONBLOCK == 0)
        #expect(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test("a symbolic link to a regular file is followed")
    func symbolicLink() throws {
        let file = try TemporaryFile(contents: [1])
        let link = file.path + ".link"
        try #require(symlink(file.path, link) == 0)
        defer { unlink(link) }
        _ = try OwnedFileDescriptor(openingHostFile: link, flags: O_RDONLY, accepting: [.regularFile])
    }

    @Test("a missing path keeps open(2)'s error")
    func missing() {
        #expect(throws: HostFileError.system(SystemError("open /nonexistent/image", errno: ENOENT))) {
            try OwnedFileDescriptor(openingHostFile: "/nonexistent/image", flags: O_RDONLY, accepting: [.regularFile])
        }
    }

    @Test(
        "a block device is refused where only regular files are accepted, before it is opened",
        .enabled(if: SpecialFiles.blockDevice != nil, "no /dev/loopN block device on this host"))
    func blockDeviceAsRegularFile() throws {
        let device = try #require(SpecialFiles.blockDevice)
        #expect(throws: HostFileError.unsupportedKind(path: device, kind: .blockDevice, accepted: [.regularFile])) {
            try ImageFile(path: device)
        }
    }

    @Test("the refusal says what the path is and what was wanted")
    func descriptions() {
        #expect(
            HostFileError.unsupportedKind(path: "/x", kind: .fifo, accepted: [.regularFile]).description
                == "/x is a FIFO, not a regular file")
        #expect(
            HostFileError.unsupportedKind(path: "/x", kind: .socket, accepted: [.regularFile, .blockDevice]).description
                == "/x is a socket, not a regular file or a block device")
        #expect(HostFileKind(mode: S_IFCHR | 0o666) == .characterDevice)
        #expect(HostFileKind(mode: S_IFBLK) == .blockDevice)
    }
}
