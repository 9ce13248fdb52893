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

/// Boots Guests/build/virtio-net-test.elf, a polling virtio-net driver, with its tap inside a
/// network namespace the test creates (`ip netns add swiftlet-test-<pid>-<n>`) and deletes. The
/// machine is built on a thread that joined the namespace, so the tap is created there; a packet
/// socket bound to the tap in the same namespace sees the guest's frames and sends it frames.
/// No frame leaves that namespace.
@Suite(
    "KVM: virtio-net over a tap in a network namespace", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason),
    .enabled(if: NetworkTestSupport.isRoot, NetworkTestSupport.notRootReason), .serialized, .timeLimit(.minutes(3)))
struct VirtioNetKVMTests {
    static let etherType: [UInt8] = [0x88, 0xB5]
    static let hostMAC: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01]
    /// Seconds the whole exchange may take (the guest's kernel-mode code is emulated here).
    static let deadline: Double = 60

    /// A frame from the namespace to the guest: `length` bytes, payload `label` then a pattern.
    static func frame(to guest: [UInt8], length: Int, label: String, seed: Int) -> [UInt8] {
        var frame = guest + hostMAC + etherType + Array(label.utf8)
        while frame.count < length { frame.append(UInt8(truncatingIfNeeded: frame.count &* 13 &+ seed)) }
        return frame
    }

    @Test("the guest's frame reaches the namespace; frames sent to it come back intact; an oversized one is dropped")
    func echo() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let tapName = "swt\(getpid() % 100_000)"
        let guestMAC = MACAddress.generated(from: tapName).octets
        let console = BufferSerialOutput()
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 20))
        let configuration = MachineConfiguration(
            kernelPath: try TestSupport.guest("virtio-net-test.elf"), memorySize: 64 << 20, console: .output(console),
            disks: [DiskConfiguration(path: disk.path)], networks: [NetworkConfiguration(tap: tapName)], rng: true)
        let (machine, socket) = try namespace.run { () throws -> (Machine, PacketSocket) in
            let machine = try Machine(configuration)
            return (machine, try PacketSocket(interface: tapName))
        }
        // A larger MTU lets the namespace send a frame larger than the guest's buffers.
        try namespace.ip("link", "set", "dev", tapName, "mtu", "4000", "up")
        let started = monotonicNanoseconds()
        machine.setDeadline(after: Self.deadline)
        try machine.start()
        defer {
            machine.stop()
            _ = machine.wait()
        }
        func fromGuest(_ frame: [UInt8]) -> Bool {
            frame.count >= 14 && Array(frame[6..<12]) == guestMAC && Array(frame[12..<14]) == Self.etherType
        }
        func secondsLeft() -> Double { Self.deadline - Double(monotonicNanoseconds() - started) / 1e9 }

        // 1. The guest's broadcast hello.
        var hello: [UInt8]?
        while hello == nil, secondsLeft() > 0 {
            if let frame = socket.receive(timeout: 0.5), fromGuest(frame) { hello = frame }
        }
        let helloPayload = Array("swiftlet-net-test hello".utf8)
        #expect(hello.map { Array($0[0..<6]) } == [UInt8](repeating: 0xFF, count: 6))
        #expect(hello.map { Array($0[14..<(14 + helloPayload.count)]) } == helloPayload)
        #expect(hello?.count == 78)
        guard hello != nil else {
            Issue.record("no hello from the guest; console: \(console.text)")
            return
        }

        // 2. A burst: 9 frames the guest echoes (it has only 4 receive buffers, so most wait in
        // the tap), one too large for its 1536-byte buffers, then BYE.
        let lengths = [60, 100, 200, 400, 700, 1000, 1300, 1460]
        var echoed = lengths.enumerated().map {
            Self.frame(to: guestMAC, length: $0.element, label: "frame \($0.offset) ", seed: $0.offset)
        }
        let oversized = Self.frame(to: guestMAC, length: 2000, label: "oversized ", seed: 99)
        echoed.append(Self.frame(to: guestMAC, length: 1514, label: "frame 8 ", seed: 8))
        let bye = Self.frame(to: guestMAC, length: 60, label: "BYE", seed: 0)
        for frame in echoed.prefix(8) { try socket.send(frame) }
        try socket.send(oversized)
        try socket.send(echoed[8])
        try socket.send(bye)

        // 3. The echoes: addresses swapped, everything else as sent, in order.
        var echoes: [[UInt8]] = []
        while echoes.count < echoed.count, secondsLeft() > 0 {
            if let frame = socket.receive(timeout: 0.5), fromGuest(frame), Array(frame[0..<6]) == Self.hostMAC {
                echoes.append(frame)
            }
        }
        let expected = echoed.map { Self.hostMAC + guestMAC + $0[12...] }
        #expect(echoes.count == expected.count)
        for (index, (echo, wanted)) in zip(echoes, expected).enumerated() {
            #expect(echo == wanted, "echo \(index) (\(wanted.count) bytes) came back changed")
        }

        let exit = machine.wait()
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        #expect(exit == .reset)
        let lines = console.text.split(separator: "\n").map(String.init)
        let header = [
            "virtio-net-test: slot=1 device=1",
            "features: mac=1 status=1",
            "config: mac=\(MACAddress(guestMAC)) link=1",
            "hello: len=78 used=0",
        ]
        let echoLines = echoed.enumerated().map { "echo \($0.offset + 1): len=\($0.element.count) header=1 used=0" }
        #expect(Array(lines.prefix(header.count + echoLines.count + 1)) == header + echoLines + ["bye: len=60 header=1"])
        let ignored = lines.last.flatMap { $0.hasPrefix("done: echoed=9 ignored=") ? Int($0.dropFirst(23)) : nil }
        #expect(ignored != nil, "last line: \(lines.last ?? "")")

        let statistics = machine.networkInterfaces[0].networkStatistics
        #expect(statistics.transmittedFrames == 1 + echoed.count)
        #expect(statistics.receivedFrames == echoed.count + 1 + (ignored ?? 0))
        #expect(statistics.receiveTooLarge == 1, "the oversized frame was dropped and counted")
        #expect(statistics.droppedFrames == 1)
        #expect(statistics.receiveStalls >= 1, "frames waited in the tap while the guest had no buffers")
        #expect(machine.networkInterfaces[0].statistics.failedChains == 0)
        let bytes = echoed.reduce(0) { $0 + $1.count } * 2 + oversized.count + bye.count + 78
        print(
            "virtio-net KVM test: \(2 * echoed.count + 3) frames (\(bytes) bytes) through the tap in \(Int(seconds * 1000)) ms, \(statistics.receiveStalls) receive stalls"
        )
    }

    @Test("a tap that cannot be opened fails the build in the devices step, naming the interface")
    func unopenableTap() throws {
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let message = try namespace.run { () -> String in
            do {
                _ = try Machine(
                    MachineConfiguration(
                        kernelPath: try TestSupport.guest("virtio-net-test.elf"), console: .none,
                        networks: [NetworkConfiguration(tap: "lo")]))
                return "built"
            } catch let error as MachineError {
                return "\(error.step): \(error)"
            }
        }
        #expect(
            message
                == "createDevices: cannot create the devices: network interface 0: cannot open tap 'lo': TUNSETIFF lo failed: Invalid argument (errno 22)"
        )
    }
}

/// Boots Guests/build/virtio-rng-test.elf with a disk in slot 0 and the rng in slot 1.
@Suite("KVM: virtio-rng", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .timeLimit(.minutes(2)))
struct VirtioRNGKVMTests {
    @Test("the guest reads random bytes from the rng in the slot after the disk")
    func read() throws {
        let console = BufferSerialOutput()
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 20))
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-rng-test.elf"), memorySize: 64 << 20, console: .output(console),
                disks: [DiskConfiguration(path: disk.path)], rng: true))
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        #expect(machine.wait() == .reset)
        #expect(
            console.text.split(separator: "\n").map(String.init) == [
                "virtio-rng-test: slot=1 device=4",
                "rng: first=64 second=64 differ=1 zero=0",
                "big: len=65536 untouched_after=1",
                "done",
            ])
        let statistics = try #require(machine.rng).withDevice { $0.statistics }
        #expect(statistics == VirtioRNG.Statistics(requests: 3, bytes: 64 + 64 + 65536, failures: 0))
    }
}
