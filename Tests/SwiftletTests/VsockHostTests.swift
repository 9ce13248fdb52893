import Glibc
import SwiftletDevices
import Testing

@testable import Swiftlet
@testable import SwiftletCommandLine

@Suite("Vsock host side: --vsock, its configuration, the CONNECT line")
struct VsockHostTests {
    @Test("--vsock cid=N,uds=PATH reads as the device; aliases and errors name the key")
    func option() throws {
        #expect(
            try DeviceOptions.vsockConfiguration("cid=3,uds=/run/v.sock")
                == VsockConfiguration(guestCID: 3, udsPath: "/run/v.sock"))
        #expect(
            try DeviceOptions.vsockConfiguration("uds-path=/a,guest-cid=4294967294")
                == VsockConfiguration(guestCID: 4_294_967_294, udsPath: "/a"))
        let cases: [(String, String)] = [
            ("cid=3", "--vsock 'cid=3': missing key 'uds' (uds=PATH)"),
            ("cid=x,uds=/a", "--vsock 'cid=x,uds=/a': key 'cid' is 'x'; use a decimal number from 3"),
            ("cid=3,uds=/a,port=4", "--vsock 'cid=3,uds=/a,port=4': unknown key 'port'; use cid or uds"),
            ("/a", "--vsock '/a': '/a' is not key=value"),
        ]
        for (text, message) in cases {
            #expect(throws: KeyValueError.self) { try DeviceOptions.vsockConfiguration(text) }
            do { _ = try DeviceOptions.vsockConfiguration(text) } catch { #expect(error.description == message) }
        }
        #expect(try DeviceOptions.restoredVsock.parse("/b.sock").text("uds") == "/b.sock")
    }

    @Test("the configuration refuses reserved CIDs, long paths, and counts vsock among the virtio slots")
    func configuration() throws {
        for cid: UInt64 in [0, 1, 2, 0xFFFF_FFFF, 1 << 40] {
            #expect(throws: ConfigurationError.self) { try VsockConfiguration(guestCID: cid, udsPath: "/a").validate() }
        }
        try VsockConfiguration(guestCID: 3, udsPath: String(repeating: "a", count: VsockConfiguration.maximumPathBytes))
            .validate()
        #expect(throws: ConfigurationError.self) {
            try VsockConfiguration(guestCID: 3, udsPath: String(repeating: "a", count: VsockConfiguration.maximumPathBytes + 1))
                .validate()
        }
        #expect(throws: ConfigurationError.badVsock("the socket path is empty")) {
            try VsockConfiguration(guestCID: 3, udsPath: "").validate()
        }
        var configuration = MachineConfiguration(kernelPath: "k", rng: true)
        configuration.networks = (0..<18).map { NetworkConfiguration(tap: "t\($0)") }
        try configuration.validate()
        configuration.vsock = VsockConfiguration(guestCID: 3, udsPath: "/a")
        #expect(throws: ConfigurationError.tooManyVirtioDevices(20)) { try configuration.validate() }
    }

    @Test("CONNECT lines: decimal port up to 2^32-1, optional CR, nothing else")
    func connectLine() {
        func port(_ text: String) -> UInt32? { VsockUnixHost.parseConnect(Array(text.utf8)) }
        #expect(port("CONNECT 52") == 52)
        #expect(port("CONNECT 4294967295\r") == 4_294_967_295)
        #expect(port("CONNECT 4294967296") == nil)
        #expect(port("CONNECT ") == nil)
        #expect(port("CONNECT -1") == nil)
        #expect(port("connect 52") == nil)
        #expect(port("CONNECT 5 2") == nil)
    }
}
