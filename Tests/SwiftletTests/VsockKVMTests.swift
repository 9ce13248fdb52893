import Glibc
import Swiftlet
import SwiftletDevices
import Testing

@testable import SwiftletHost

/// A blocking Unix stream socket for the tests' side of the hybrid vsock, with poll timeouts.
final class TestUnixSocket: @unchecked Sendable {
    let fd: Int32

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    private static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A connection to the socket at `path`.
    static func connecting(to path: String) throws -> TestUnixSocket {
        let socket = TestUnixSocket(fd: Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        guard withAddress(path, { connect(socket.fd, $0, $1) }) == 0 else {
            throw TestFailure("connect \(path): errno \(errno)")
        }
        return socket
    }

    /// A socket listening at `path`.
    static func listening(at path: String) throws -> TestUnixSocket {
        let socket = TestUnixSocket(fd: Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        guard withAddress(path, { bind(socket.fd, $0, $1) }) == 0, listen(socket.fd, 8) == 0 else {
            throw TestFailure("listen \(path): errno \(errno)")
        }
        return socket
    }

    private func ready(_ events: Int16, within seconds: Double) throws {
        var descriptor = pollfd(fd: fd, events: events, revents: 0)
        guard poll(&descriptor, 1, Int32(seconds * 1000)) == 1 else { throw TestFailure("socket not ready in \(seconds) s") }
    }

    /// The next accepted connection, within `seconds`.
    func accept(within seconds: Double) throws -> TestUnixSocket {
        try ready(Int16(POLLIN), within: seconds)
        let fd = Glibc.accept(fd, nil, nil)
        guard fd >= 0 else { throw TestFailure("accept: errno \(errno)") }
        return TestUnixSocket(fd: fd)
    }

    /// Up to `count` bytes (fewer at end of file), each read within `seconds`.
    func read(_ count: Int, within seconds: Double = 20) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            try ready(Int16(POLLIN), within: seconds)
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, count - got) }
            guard n >= 0 else { throw TestFailure("read: errno \(errno)") }
            if n == 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// One line (without its newline), read a byte at a time.
    func readLine(within seconds: Double = 20) throws -> String? {
        var line: [UInt8] = []
        while true {
            let byte = try read(1, within: seconds)
            guard let b = byte.first else { return nil }
            if b == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(b)
        }
    }

    /// Shuts down both directions: the peer reads end of file.
    func hangUp() { _ = shutdown(fd, Int32(SHUT_RDWR)) }

    /// Writes all of `bytes`.
    func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestFailure("write: errno \(errno)") }
            sent += n
        }
    }
}

/// A reproducible byte stream (xorshift64), chunk by chunk.
struct TestByteStream {
    var state: UInt64
    mutating func next(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        for i in stride(from: 0, to: count, by: 8) {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            for j in 0..<min(8, count - i) { out[i + j] = UInt8(truncatingIfNeeded: state >> (8 * UInt64(j))) }
        }
        return out
    }
}

/// FNV-1a over `bytes`, continuing from `hash`.
func fnv1a(_ bytes: [UInt8], _ hash: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
    var h = hash
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

/// Boots Guests/build/virtio-vsock-test.elf with a vsock device and talks to it through the real
/// Unix sockets: the guest's connection to host port 1234, refused and malformed CONNECTs, and
/// a checksummed 16 MiB echo through guest port 5000.
@Suite("KVM: virtio-vsock over Unix sockets", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .timeLimit(.minutes(3)))
struct VsockKVMTests {
    static let echoBytes = 16 << 20

    @Test("guest to PATH_1234, CONNECT to a closed port and a bad line close, 16 MiB echo through CONNECT 5000")
    func hybrid() throws {
        var template = Array("/tmp/swiftlet-vsock-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestFailure("mkdtemp: errno \(errno)") }
        let directory = String(cString: made)
        let path = directory + "/v.sock"
        defer {
            unlink(path + "_1234")
            rmdir(directory)
        }
        let hostPort = try TestUnixSocket.listening(at: path + "_1234")
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-vsock-test.elf"), memorySize: 64 << 20, console: .output(console),
                vsock: VsockConfiguration(guestCID: 42, udsPath: path)))
        machine.setDeadline(after: 120)
        try machine.start()
        defer {
            machine.stop()
            _ = machine.wait()
        }
        var passed = false
        defer { if !passed { print("vsock test console:\n\(console.text)") } }

        // Guest-initiated: the guest's pattern arrives on PATH_1234, then end of file (it shut down sending).
        let fromGuest = try hostPort.accept(within: 30)
        let received = try fromGuest.read(16384)
        #expect(received == (0..<16384).map { UInt8(truncatingIfNeeded: $0 * 31 + 7) })
        #expect(try fromGuest.read(1) == [], "end of file after the guest shut down sending")
        fromGuest.hangUp()
        try TestSupport.waitUntil("the guest listens", within: 30) { console.text.contains("listening on 5000") }
        #expect(console.text.hasPrefix("vsock-test: slot=0 cid=42\nvsock-test: sent 16384 bytes to host port 1234\n"))

        // A port nobody listens on: the guest resets, the socket closes without an OK.
        let refused = try TestUnixSocket.connecting(to: path)
        try refused.write(Array("CONNECT 5001\n".utf8))
        #expect(try refused.read(64) == [])
        // A line that is not CONNECT: closed at once.
        let malformed = try TestUnixSocket.connecting(to: path)
        try malformed.write(Array("HELLO 5000\n".utf8))
        #expect(try malformed.read(64) == [])

        // Host-initiated echo, 16 MiB, checksummed both ways.
        let echo = try TestUnixSocket.connecting(to: path)
        try echo.write(Array("CONNECT 5000\n".utf8))
        let ok = try #require(try echo.readLine())
        #expect(ok.hasPrefix("OK "))
        #expect((UInt32(ok.dropFirst(3)) ?? 0) >= VsockConnections.firstEphemeralPort)
        let chunk = 64 << 10
        let started = Subprocess.monotonicNow()
        let writer = try NativeThread(name: "vsock test writer") {
            var stream = TestByteStream(state: 0x1234_5678_9abc_def1)
            for _ in 0..<(Self.echoBytes / chunk) { try? echo.write(stream.next(chunk)) }
        }
        var expected = TestByteStream(state: 0x1234_5678_9abc_def1)
        var sentHash = fnv1a([])
        var receivedHash = fnv1a([])
        var total = 0
        while total < Self.echoBytes {
            let part = try echo.read(chunk)
            if part.isEmpty { break }
            receivedHash = fnv1a(part, receivedHash)
            sentHash = fnv1a(expected.next(part.count), sentHash)
            total += part.count
        }
        let seconds = Subprocess.monotonicNow() - started
        writer.join()
        #expect(total == Self.echoBytes)
        #expect(receivedHash == sentHash)
        print("vsock: 16 MiB echo (host -> guest -> host) in \(seconds) s")
        echo.hangUp()
        try TestSupport.waitUntil("the guest reports the echo", within: 30) {
            console.text.contains("vsock-test: echoed 16777216 bytes")
        }
        let statistics = try #require(machine.vsock).withDevice { $0.connections.statistics }
        #expect(statistics.malformed == 0 && statistics.creditViolations == 0)
        #expect(access(path, F_OK) == 0)
        machine.stop()
        _ = machine.wait()
        #expect(access(path, F_OK) != 0, "the socket file is removed when the machine ends")
        passed = true
    }

    @Test("a restored machine listens again on its (new) socket, the guest gets a transport reset, and echo works")
    func restore() throws {
        var template = Array("/tmp/swiftlet-vsock-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestFailure("mkdtemp: errno \(errno)") }
        let directory = String(cString: made)
        let snapshot = directory + "/snapshot"
        defer {
            for name in ["state", "memory"] { unlink(snapshot + "/" + name) }
            rmdir(snapshot)
            rmdir(directory)
        }
        let first = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-vsock-test.elf"), memorySize: 64 << 20, console: .output(first),
                vsock: VsockConfiguration(guestCID: 7, udsPath: directory + "/a.sock")))
        machine.setDeadline(after: 60)
        try machine.start()
        try TestSupport.waitUntil("the guest listens", within: 30) { first.text.contains("listening on 5000") }
        // Nobody listened on PATH_1234: the guest's own connection was refused.
        #expect(first.text.contains("vsock-test: host port 1234 refused\n"))
        try machine.snapshot(to: snapshot)
        machine.stop()
        _ = machine.wait()
        #expect(access(directory + "/a.sock", F_OK) != 0)

        let second = BufferSerialOutput()
        let restored = try Machine(restoringFrom: snapshot, console: .output(second), vsockPath: directory + "/b.sock")
        restored.setDeadline(after: 60)
        try restored.start()
        defer {
            restored.stop()
            _ = restored.wait()
        }
        try TestSupport.waitUntil("the transport reset event", within: 30) {
            second.text.contains("vsock-test: event id=0\n")
        }
        let echo = try TestUnixSocket.connecting(to: directory + "/b.sock")
        try echo.write(Array("CONNECT 5000\n".utf8))
        #expect(try echo.readLine()?.hasPrefix("OK ") == true)
        var stream = TestByteStream(state: 99)
        let data = stream.next(4096)
        try echo.write(data)
        #expect(try echo.read(4096) == data)
        echo.hangUp()
        restored.stop()
        _ = restored.wait()
        #expect(access(directory + "/b.sock", F_OK) != 0)
    }
}
