import CHost
import CKVM
import Glibc
import Synchronization
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// Helpers for tests that need network namespaces, taps and packet sockets (root only).
enum NetworkTestSupport {
    static let isRoot = getuid() == 0
    static let notRootReason: Comment = "network-namespace and tap tests need root (they create a namespace with `ip netns add`)"
    static let ip = "/usr/sbin/ip"
    /// `CLONE_NEWNET` (not exported by Swift's Glibc module).
    static let cloneNewNet: Int32 = 0x4000_0000
    /// `ETH_P_ALL`: every protocol.
    static let ethernetProtocolAll: UInt16 = 0x0003
}

/// A network namespace of the test's own, `swiftlet-test-<pid>-<n>`, created with `ip netns add`
/// and deleted with `ip netns del` when `delete()` is called or the value goes away (so also
/// when the test fails). Nothing a test does in it reaches another namespace.
final class TestNetworkNamespace: @unchecked Sendable {
    let name: String
    private let descriptor: Int32
    private var deleted = false
    private static let counter = Atomic<Int>(0)

    init() throws {
        name = "swiftlet-test-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
        try Self.ip(["netns", "add", name])
        descriptor = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let error = errno
            _ = try? Self.ip(["netns", "del", name])
            throw TestFailure("open /run/netns/\(name) failed: errno \(error)")
        }
        // No IPv6 on the interfaces created from now on: no neighbour discovery or router
        // solicitations among the test's frames. Best effort (IPv6 may be absent).
        _ = try? Subprocess.run(
            NetworkTestSupport.ip, ["netns", "exec", name, "/usr/sbin/sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
    }

    /// Runs `ip -n NAME arguments...`.
    func ip(_ arguments: String...) throws {
        try Self.ip(["-n", name] + arguments)
    }

    private static func ip(_ arguments: [String]) throws {
        let result = try Subprocess.run(NetworkTestSupport.ip, arguments, timeout: 20)
        guard result.status == 0 else {
            throw TestFailure("ip \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
        }
    }

    /// Runs `body` on a new thread that has joined the namespace (setns), and returns its result.
    /// Taps and sockets opened there belong to the namespace for as long as they live.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let result = Mutex<Result<T, TestFailure>?>(nil)
        let descriptor = self.descriptor
        let thread = try NativeThread(name: "netns \(name)") {
            guard swl_setns(descriptor, NetworkTestSupport.cloneNewNet) == 0 else {
                let error = errno
                result.withLock { $0 = .failure(TestFailure("setns failed: errno \(error)")) }
                return
            }
            do {
                let value = try body()
                result.withLock { $0 = .success(value) }
            } catch {
                result.withLock { $0 = .failure(TestFailure("\(error)")) }
            }
        }
        thread.join()
        guard let outcome = result.withLock({ $0 }) else { throw TestFailure("the namespace thread returned nothing") }
        return try outcome.get()
    }

    func delete() {
        guard !deleted else { return }
        deleted = true
        close(descriptor)
        do { try Self.ip(["netns", "del", name]) } catch { Issue.record("could not delete namespace \(name): \(error)") }
    }

    deinit { delete() }
}

/// A raw AF_PACKET socket bound to one interface: sees every frame on it, both directions.
/// Open it on a thread inside the interface's namespace (`TestNetworkNamespace.run`).
final class PacketSocket: Sendable {
    let descriptor: Int32

    init(interface: String) throws {
        let fd = socket(
            AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            Int32(NetworkTestSupport.ethernetProtocolAll.bigEndian))
        guard fd >= 0 else { throw TestFailure("socket(AF_PACKET) failed: errno \(errno)") }
        let index = if_nametoindex(interface)
        guard index != 0 else {
            close(fd)
            throw TestFailure("no interface \(interface): errno \(errno)")
        }
        // struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8].
        var address = [UInt8](repeating: 0, count: 20)
        withUnsafeBytes(of: UInt16(AF_PACKET)) { address.replaceSubrange(0..<2, with: $0) }
        withUnsafeBytes(of: NetworkTestSupport.ethernetProtocolAll.bigEndian) { address.replaceSubrange(2..<4, with: $0) }
        withUnsafeBytes(of: Int32(index)) { address.replaceSubrange(4..<8, with: $0) }
        let bound = address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw TestFailure("bind to \(interface) failed: errno \(error)")
        }
        descriptor = fd
    }

    func send(_ frame: [UInt8]) throws {
        let sent = frame.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, 0) }
        guard sent == frame.count else { throw TestFailure("send of \(frame.count) bytes returned \(sent): errno \(errno)") }
    }

    /// The next frame, or nil after `timeout` seconds.
    func receive(timeout: Double) -> [UInt8]? {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return count > 0 ? Array(buffer[..<count]) : nil
    }

    deinit { close(descriptor) }
}
