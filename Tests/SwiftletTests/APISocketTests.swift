import Glibc
import Swiftlet
import Synchronization
import Testing

/// A minimal HTTP/1.1 client over a Unix socket, written for the tests (no Foundation): one
/// request per connection unless told otherwise, raw bytes in and out.
enum UnixHTTP {
    struct Response {
        let status: Int
        let body: String
    }

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            throw TestFailure("connect \(path): errno \(errno)")
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else { throw TestFailure("send: errno \(errno)") }
            offset += written
        }
    }

    /// Reads one response (headers, then Content-Length bytes of body).
    static func readResponse(_ fd: Int32) throws -> Response {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var headerEnd: Int?
        var length = 0
        while true {
            if let end = headerEnd, data.count >= end + length { break }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { throw TestFailure("connection ended after \(data.count) bytes: errno \(errno)") }
            data += chunk[..<count]
            if headerEnd == nil, let end = find([13, 10, 13, 10], in: data) {
                headerEnd = end + 4
                let head = String(decoding: data[..<end], as: UTF8.self).lowercased()
                for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
                    length = Int(line.dropFirst("content-length:".count).trimmingSpaces) ?? 0
                }
            }
        }
        let head = String(decoding: data[..<headerEnd!], as: UTF8.self)
        let status = Int(head.split(separator: " ")[1]) ?? 0
        return Response(status: status, body: String(decoding: data[headerEnd!..<(headerEnd! + length)], as: UTF8.self))
    }

    static func request(_ socket: String, _ method: String, _ path: String, _ body: String? = nil) throws -> Response {
        let fd = try connect(socket)
        defer { close(fd) }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
        text += "\r\n" + (body ?? "")
        try send(fd, Array(text.utf8))
        return try readResponse(fd)
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for index in 0...(haystack.count - needle.count) where Array(haystack[index..<(index + needle.count)]) == needle {
            return index
        }
        return nil
    }
}

extension Substring {
    var trimmingSpaces: Substring { drop { $0 == " " } }
}

/// The real `swiftlet --api-sock` (which execs swiftlet-api) driven over its socket: a tiny guest
/// booted in firecracker-go-sdk's call order, paused, resumed, snapshotted and stopped; hostile
/// clients; `--config-file` with `--no-api`.
@Suite("API socket", .serialized, .timeLimit(.minutes(3)))
struct APISocketTests {
    static let binary = TestSupport.repositoryRoot + "/.build/debug/swiftlet"

    static func socketPath(_ name: String) -> String { "/tmp/swiftlet-api-test-\(getpid())-\(name).sock" }

    /// Waits until the socket accepts.
    static func waitForSocket(_ path: String) throws {
        try TestSupport.waitUntil("the API socket \(path) accepting", within: 20) {
            guard let fd = try? UnixHTTP.connect(path) else { return false }
            close(fd)
            return true
        }
    }

    static func ticks(in output: String) -> Int {
        output.split(separator: "\n").filter { $0.hasPrefix("tick ") }.count
    }

    @Test(
        "go-sdk's call order boots the ticker guest; pause stops its output, resume restarts it, snapshot/create writes both files, SIGTERM stops it",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func bootPauseResumeSnapshotStop() throws {
        let guest = try TestSupport.guest("api-ticker.elf")
        let socket = Self.socketPath("boot")
        unlink(socket)
        defer { unlink(socket) }
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 20))
        let directory = try TemporaryDirectoryForAPI()
        let output = try TemporaryFile(contents: [])
        var outputText: String { (try? Subprocess.contents(of: output.path)) ?? "" }
        let result = try Subprocess.run(
            "/bin/sh", ["-c", "exec \(Self.binary) --api-sock \(socket) --id ticker-1 > \(output.path)"], timeout: 90
        ) { pid in
            try Self.waitForSocket(socket)
            let info = try UnixHTTP.request(socket, "GET", "/")
            #expect(
                info.status == 200 && info.body.contains(#""state":"Not started""#) && info.body.contains(#""id":"ticker-1""#))
            #expect(try UnixHTTP.request(socket, "GET", "/version").body.contains(SwiftletVersion.string))
            #expect(try UnixHTTP.request(socket, "PUT", "/machine-config", #"{"vcpu_count":1,"mem_size_mib":64}"#).status == 204)
            #expect(try UnixHTTP.request(socket, "PUT", "/boot-source", #"{"kernel_image_path":"\#(guest)"}"#).status == 204)
            let drive = #"{"drive_id":"rootfs","path_on_host":"\#(disk.path)","is_root_device":true,"is_read_only":false}"#
            #expect(try UnixHTTP.request(socket, "PUT", "/drives/rootfs", drive).status == 204)
            // network-interfaces needs a tap (root).
            if geteuid() == 0 {
                let tap = "swlapi\(getpid() % 100000)"
                let network = #"{"iface_id":"eth0","host_dev_name":"\#(tap)","guest_mac":"02:00:00:00:00:42"}"#
                #expect(try UnixHTTP.request(socket, "PUT", "/network-interfaces/eth0", network).status == 204)
            }
            let vsockPath = directory.path + "/v.sock"
            let vsock = try UnixHTTP.request(socket, "PUT", "/vsock", #"{"guest_cid":3,"uds_path":"\#(vsockPath)"}"#)
            #expect(vsock.status == 204, "\(vsock.body)")
            #expect(try UnixHTTP.request(socket, "GET", "/vm/config").body.contains(#""guest_cid":3"#))
            let start = try UnixHTTP.request(socket, "PUT", "/actions", #"{"action_type":"InstanceStart"}"#)
            #expect(start.status == 204, "\(start.body)")
            #expect(access(vsockPath, F_OK) == 0, "the vsock device's Unix socket is not listening")
            try TestSupport.waitUntil("the guest ticking", within: 30) { Self.ticks(in: outputText) >= 3 }
            #expect(try UnixHTTP.request(socket, "GET", "/").body.contains(#""state":"Running""#))
            #expect(try UnixHTTP.request(socket, "PUT", "/machine-config", #"{"vcpu_count":1,"mem_size_mib":64}"#).status == 400)

            #expect(try UnixHTTP.request(socket, "PATCH", "/vm", #"{"state":"Paused"}"#).status == 204)
            #expect(try UnixHTTP.request(socket, "GET", "/").body.contains(#""state":"Paused""#))
            usleep(100_000)
            let paused = Self.ticks(in: outputText)
            usleep(500_000)
            #expect(Self.ticks(in: outputText) == paused, "the paused guest went on ticking")

            let snapshot =
                #"{"snapshot_type":"Full","snapshot_path":"\#(directory.path)/vm.state","mem_file_path":"\#(directory.path)/vm.mem"}"#
            let created = try UnixHTTP.request(socket, "PUT", "/snapshot/create", snapshot)
            #expect(created.status == 204, "\(created.body)")
            let magic = try Subprocess.contents(of: directory.path + "/vm.state").prefix(8)
            #expect(magic == "SWLTSNAP")
            var status = stat()
            #expect(stat(directory.path + "/vm.mem", &status) == 0 && status.st_size == 64 << 20)

            #expect(try UnixHTTP.request(socket, "PATCH", "/vm", #"{"state":"Resumed"}"#).status == 204)
            try TestSupport.waitUntil("ticks after resuming", within: 30) { Self.ticks(in: outputText) > paused + 2 }
            kill(pid, SIGTERM)
        }
        #expect(result.status == 128 + SIGTERM)
        #expect(access(socket, F_OK) != 0, "the socket was left behind")
        #expect(access(directory.path + "/v.sock", F_OK) != 0, "the vsock socket was left behind")
    }

    @Test("malformed JSON, unknown fields, wrong methods and paths, oversized bodies, broken and concurrent clients")
    func hostileClients() throws {
        let socket = Self.socketPath("hostile")
        unlink(socket)
        defer { unlink(socket) }
        let result = try Subprocess.run(Self.binary, ["--api-sock", socket], timeout: 60) { pid in
            try Self.waitForSocket(socket)
            #expect(try UnixHTTP.request(socket, "PUT", "/machine-config", "{\"vcpu_count\": ").status == 400)
            let unknown = try UnixHTTP.request(socket, "PUT", "/machine-config", #"{"vcpu_count":1,"mem_size_mib":64,"x":1}"#)
            #expect(unknown.status == 400 && unknown.body.contains("unknown field `x`"))
            #expect(try UnixHTTP.request(socket, "GET", "/actions").status == 405)
            #expect(try UnixHTTP.request(socket, "POST", "/machine-config", "{}").status == 405)
            #expect(try UnixHTTP.request(socket, "GET", "/no/such/path").status == 404)
            let large = try UnixHTTP.request(socket, "PUT", "/boot-source", String(repeating: " ", count: 60000) + "{}")
            #expect(large.status == 400 && large.body.contains("larger than the limit of 51200"))
            // Not HTTP at all: NIO's decoder answers 400.
            let garbage = try UnixHTTP.connect(socket)
            try UnixHTTP.send(garbage, Array("\u{01}\u{02} nonsense\r\n\r\n".utf8))
            #expect(try UnixHTTP.readResponse(garbage).status == 400)
            close(garbage)
            // Clients that go away mid-request: in the headers, and in the body.
            for partial in [
                "PUT /machine-config HTTP/1.1\r\nContent-Le", "PUT /actions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"act",
            ] {
                let fd = try UnixHTTP.connect(socket)
                try UnixHTTP.send(fd, Array(partial.utf8))
                close(fd)
            }
            // Several clients at once, each with several requests.
            let failures = Atomic<Int>(0)
            var threads: [pthread_t] = []
            final class Work: @unchecked Sendable {
                let socket: String
                let failures: UnsafeMutablePointer<Int>
                init(_ socket: String) {
                    self.socket = socket
                    failures = .allocate(capacity: 1)
                    failures.initialize(to: 0)
                }
            }
            let works = (0..<6).map { _ in Work(socket) }
            for work in works {
                var thread = pthread_t()
                let context = Unmanaged.passRetained(work).toOpaque()
                pthread_create(
                    &thread, nil,
                    { raw in
                        let work = Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue()
                        for _ in 0..<10 {
                            let ok = (try? UnixHTTP.request(work.socket, "GET", "/machine-config"))?.status == 200
                            if !ok { work.failures.pointee += 1 }
                        }
                        return nil
                    }, context)
                threads.append(thread)
            }
            for thread in threads { pthread_join(thread, nil) }
            for work in works { failures.add(work.failures.pointee, ordering: .relaxed) }
            #expect(failures.load(ordering: .relaxed) == 0)
            // Keep-alive: two requests on one connection.
            let fd = try UnixHTTP.connect(socket)
            try UnixHTTP.send(fd, Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(try UnixHTTP.readResponse(fd).status == 200)
            #expect(try UnixHTTP.readResponse(fd).body.contains("firecracker_version"))
            close(fd)
            let info = try UnixHTTP.request(socket, "GET", "/")
            #expect(info.status == 200 && info.body.contains("Not started"))
            kill(pid, SIGTERM)
        }
        #expect(result.status == 128 + SIGTERM)
    }

    @Test(
        "--config-file with --no-api boots without a socket; bad command lines and files are one-line errors",
        .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason))
    func configFileNoAPI() throws {
        let guest = try TestSupport.guest("longmode-hello.elf")
        let config = try TemporaryFile(
            contents: Array(
                #"{"boot-source":{"kernel_image_path":"\#(guest)"},"machine-config":{"vcpu_count":1,"mem_size_mib":32},"drives":[],"network-interfaces":[]}"#
                    .utf8))
        let result = try Subprocess.run(Self.binary, ["--no-api", "--config-file", config.path], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("Hello from 64-bit long mode"))

        let usage = try Subprocess.run(Self.binary, ["--no-api"], timeout: 20)
        #expect(usage.status == 64 && usage.stderr.hasPrefix("swiftlet: --no-api needs --config-file"))
        let bad = try TemporaryFile(contents: Array(#"{"boot-source":{"kernel_image_path":"\#(guest)","x":1}}"#.utf8))
        let refused = try Subprocess.run(Self.binary, ["--no-api", "--config-file", bad.path], timeout: 20)
        #expect(refused.status == 1 && refused.stderr.contains("unknown field `x`"))
        #expect(refused.stderr.filter { $0 == "\n" }.count == 1)
        // A socket path that exists is refused, as Firecracker does.
        let taken = try TemporaryFile(contents: [])
        let exists = try Subprocess.run(Self.binary, ["--api-sock", taken.path], timeout: 20)
        #expect(exists.status == 1 && exists.stderr.hasPrefix("swiftlet: cannot serve the API on \(taken.path)"))
    }
}
