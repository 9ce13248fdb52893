import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// `TapDevice` against real tap interfaces, each in a network namespace the test creates and
/// deletes. Frames go between the tap and a packet socket inside that namespace only.
@Suite("Tap: /dev/net/tun backend", .enabled(if: NetworkTestSupport.isRoot, NetworkTestSupport.notRootReason), .serialized)
struct TapDeviceTests {
    /// Reads one frame (header included) from `tap` into a 64 KiB buffer.
    static func receive(_ tap: TapDevice) throws -> [UInt8]? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let count = try withUnsafePointer(to: &vector) { try tap.receive(into: UnsafeBufferPointer(start: $0, count: 1)) }
        return count.map { Array(buffer[..<min($0, buffer.count)]) }
    }

    static func send(_ tap: TapDevice, _ bytes: [UInt8]) throws {
        let pointer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        defer { pointer.deallocate() }
        pointer.copyBytes(from: bytes)
        var vector = iovec(iov_base: pointer.baseAddress, iov_len: bytes.count)
        try withUnsafePointer(to: &vector) { try tap.send(UnsafeBufferPointer(start: $0, count: 1)) }
    }

    @Test("a tap opens non-blocking in the caller's namespace, with its offloads probed and then off")
    func open() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let tap = try namespace.run { try TapDevice(name: "swt0") }
        #expect(tap.name == "swt0")
        #expect(fcntl(tap.fileDescriptor, F_GETFL) & O_NONBLOCK != 0)
        #expect(tap.supportedOffloads.contains(.checksum), "Linux taps take partial checksums")
        try namespace.ip("link", "show", "dev", "swt0")
        try tap.setReceiveOffloads(.all)
        try tap.setReceiveOffloads([])
        #expect(try Self.receive(tap) == nil, "no frame waiting: nil, not a block or an error")
    }

    @Test("frames cross the tap in both directions behind a 12-byte virtio-net header")
    func frames() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let (tap, socket) = try namespace.run { () throws -> (TapDevice, PacketSocket) in
            let tap = try TapDevice(name: "swt1")
            return (tap, try PacketSocket(interface: "swt1"))
        }
        try namespace.ip("link", "set", "dev", "swt1", "up")
        // From the "guest" side (the tap descriptor) into the namespace.
        let outbound = testFrame(length: 200, seed: 1)
        try Self.send(tap, VirtioNetHeader().bytes + outbound)
        var seen: [UInt8]?
        for _ in 0..<20 where seen == nil {
            if let frame = socket.receive(timeout: 1), frame == outbound { seen = frame }
        }
        #expect(seen == outbound)
        // From the namespace to the tap descriptor.
        let inbound = testFrame(length: 300, seed: 2)
        try socket.send(inbound)
        var read: [UInt8]?
        for _ in 0..<200 where read == nil {
            if let frame = try Self.receive(tap), Array(frame.dropFirst(12)) == inbound { read = frame } else { usleep(5000) }
        }
        #expect(read.map { Array($0.prefix(12)) } == [UInt8](repeating: 0, count: 12), "no offloads: an all-zero header")
        #expect(read.map { Array($0.dropFirst(12)) } == inbound)
    }

    @Test("an existing tap is attached to; once its interface is deleted, reads fail and poll reports an error")
    func existingTap() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        try namespace.ip("tuntap", "add", "dev", "swt2", "mode", "tap")
        let tap = try namespace.run { try TapDevice(name: "swt2") }
        #expect(tap.name == "swt2")
        try namespace.ip("link", "del", "dev", "swt2")
        var poller = pollfd(fd: tap.fileDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&poller, 1, 0) == 1 && poller.revents & Int16(POLLERR) != 0)
        #expect(throws: SystemError.self) { try Self.receive(tap) }
    }

    @Test("an interface that is not a tap cannot be opened; the error names it")
    func notATap() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let error = try namespace.run { () -> TapError? in
            do throws(TapError) {
                _ = try TapDevice(name: "lo")
                return nil
            } catch {
                return error
            }
        }
        #expect(error == .open(name: "lo", SystemError("TUNSETIFF lo", errno: EINVAL)))
        #expect(error.map { "\($0)" } == "cannot open tap 'lo': TUNSETIFF lo failed: Invalid argument (errno 22)")
    }
}

/// Tap names checked before anything is opened (no root needed).
@Suite("Tap: interface names")
struct TapNameTests {
    @Test(
        "names Linux would refuse are refused before /dev/net/tun is opened",
        arguments: ["", ".", "..", "a/b", "a:b", "a b", "sixteen-bytes-xx"])
    func invalid(name: String) {
        #expect(throws: TapError.invalidName(name)) { try TapDevice(name: name) }
    }
}
