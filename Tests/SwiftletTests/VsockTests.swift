import SwiftletDevices
import SwiftletMemory
import Testing

private typealias Op = VsockPacketHeader.Operation
private typealias Key = VsockConnections.Key
private let guestCID: UInt64 = 3

private func fromGuest(
    _ op: Op, guestPort: UInt32 = 5000, hostPort: UInt32 = 80, length: UInt32 = 0, flags: UInt32 = 0,
    bufferAllocation: UInt32 = 1 << 20, forwardCount: UInt32 = 0
) -> VsockPacketHeader {
    VsockPacketHeader(
        sourceCID: guestCID, destinationCID: VsockConnections.hostCID, sourcePort: guestPort, destinationPort: hostPort,
        operation: op, length: length, flags: flags, bufferAllocation: bufferAllocation, forwardCount: forwardCount)
}

/// Every packet the connections have for the guest, with payloads of at most `room` bytes.
private func drain(_ c: inout VsockConnections, room: Int = 64 << 10) -> [(VsockPacketHeader, [UInt8])] {
    var out: [(VsockPacketHeader, [UInt8])] = []
    while let p = c.nextPacketForGuest(maximumPayload: room) { out.append(p) }
    return out
}

@Suite("VsockPacket: virtio_vsock_hdr layout and validation")
struct VsockPacketTests {
    @Test("the 44-byte header round-trips little-endian, field by field")
    func layout() throws {
        let h = VsockPacketHeader(
            sourceCID: 0x0102_0304_0506_0708, destinationCID: 2, sourcePort: 0x1122_3344, destinationPort: 9,
            operation: .readWrite, length: 0x55, flags: 0, bufferAllocation: 0xAABB_CCDD, forwardCount: 7)
        let bytes = h.bytes
        #expect(bytes.count == 44)
        #expect(Array(bytes[0..<8]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(Array(bytes[16..<20]) == [0x44, 0x33, 0x22, 0x11])
        #expect(Array(bytes[28..<32]) == [1, 0, 5, 0])  // type stream, op RW
        #expect(Array(bytes[36..<40]) == [0xDD, 0xCC, 0xBB, 0xAA])
        #expect(try VsockPacketHeader(bytes: bytes) == h)
        #expect(throws: VsockPacketError.truncated(43)) { try VsockPacketHeader(bytes: bytes.prefix(43)) }
    }

    @Test("validation names the field: CID, type, op, lengths, shutdown flags")
    func validation() throws {
        let max = VsockConnections.maximumPayload
        #expect(try fromGuest(.readWrite, length: 10).validate(guestCID: 3, payloadBytes: 10, maximumPayload: max) == .readWrite)
        var h = fromGuest(.request)
        h.sourceCID = 2
        #expect(throws: VsockPacketError.sourceCID(2, expected: 3)) {
            try h.validate(guestCID: 3, payloadBytes: 0, maximumPayload: max)
        }
        h = fromGuest(.request)
        h.type = 2
        #expect(throws: VsockPacketError.type(2)) { try h.validate(guestCID: 3, payloadBytes: 0, maximumPayload: max) }
        h = fromGuest(.request)
        h.operation = 99
        #expect(throws: VsockPacketError.operation(99)) { try h.validate(guestCID: 3, payloadBytes: 0, maximumPayload: max) }
        #expect(throws: VsockPacketError.lengthBeyondLimit(max + 1, limit: max)) {
            try fromGuest(.readWrite, length: max + 1).validate(guestCID: 3, payloadBytes: UInt64(max) + 1, maximumPayload: max)
        }
        #expect(throws: VsockPacketError.lengthBeyondDescriptor(100, available: 99)) {
            try fromGuest(.readWrite, length: 100).validate(guestCID: 3, payloadBytes: 99, maximumPayload: max)
        }
        #expect(throws: VsockPacketError.lengthOnControlPacket(4, operation: .request)) {
            try fromGuest(.request, length: 4).validate(guestCID: 3, payloadBytes: 4, maximumPayload: max)
        }
        #expect(throws: VsockPacketError.flags(4)) {
            try fromGuest(.shutdown, flags: 4).validate(guestCID: 3, payloadBytes: 0, maximumPayload: max)
        }
        #expect("\(VsockPacketError.operation(99))".contains("op 99"))
    }
}

@Suite("VsockConnections: connection state machine and credit")
struct VsockConnectionsTests {
    @Test("guest-initiated: request, host accepts, data both ways, shutdown closes with a reset")
    func guestInitiated() throws {
        var c = VsockConnections(guestCID: guestCID)
        let key = Key(guestPort: 5000, hostPort: 80)
        c.receive(fromGuest(.request), payload: [])
        #expect(c.takeEvents() == [.guestConnects(key)])
        #expect(drain(&c).isEmpty, "no response before the host socket connects")
        c.hostAccepted(key)
        let response = drain(&c)
        #expect(response.count == 1)
        #expect(response[0].0.knownOperation == .response)
        #expect(response[0].0.sourceCID == 2 && response[0].0.destinationCID == guestCID)
        #expect(response[0].0.sourcePort == 80 && response[0].0.destinationPort == 5000)
        #expect(response[0].0.bufferAllocation == VsockConnections.bufferBytes)

        c.receive(fromGuest(.readWrite, length: 3), payload: [1, 2, 3])
        #expect(c.takeEvents() == [.dataForHost(key)])
        #expect(Array(c.pendingForHost(key, maximum: 10)) == [1, 2, 3])
        c.hostConsumed(key, count: 3)
        let update = drain(&c)
        #expect(update.map(\.0.knownOperation) == [.creditUpdate])
        #expect(update[0].0.forwardCount == 3)

        #expect(c.sendToGuest(key, [9, 8, 7]) == 3)
        let data = drain(&c)
        #expect(data.count == 1 && data[0].1 == [9, 8, 7] && data[0].0.length == 3)

        c.receive(fromGuest(.shutdown, flags: 3), payload: [])
        #expect(c.takeEvents() == [.closed(key)])
        #expect(drain(&c).map(\.0.knownOperation) == [.reset])
        #expect(c.count == 0)
    }

    @Test("a guest that closes (SHUTDOWN both) right after its data: the host still gets the data, then the reset")
    func closeAfterData() throws {
        var c = VsockConnections(guestCID: guestCID)
        let key = Key(guestPort: 5000, hostPort: 80)
        c.receive(fromGuest(.request), payload: [])
        c.hostAccepted(key)
        _ = c.takeEvents()
        _ = drain(&c)
        c.receive(fromGuest(.readWrite, length: 4), payload: [1, 2, 3, 4])
        c.receive(fromGuest(.shutdown, flags: 3), payload: [])
        #expect(c.takeEvents() == [.dataForHost(key), .guestShutdownSend(key)])
        #expect(c.contains(key))
        #expect(drain(&c).isEmpty)
        #expect(Array(c.pendingForHost(key, maximum: 10)) == [1, 2, 3, 4])
        c.hostConsumed(key, count: 2)
        #expect(c.contains(key) && c.takeEvents().isEmpty)
        c.hostConsumed(key, count: 2)
        #expect(c.takeEvents() == [.closed(key)])
        #expect(drain(&c).map(\.0.knownOperation) == [.reset])
        #expect(c.count == 0)
    }

    @Test("host-initiated: request, guest responds, accepted; a reset closes; no answer times out")
    func hostInitiated() throws {
        var c = VsockConnections(guestCID: guestCID)
        let keyo = c.hostConnect(guestPort: 1024, now: 0)
        let key = try #require(keyo)
        #expect(key.hostPort >= VsockConnections.firstEphemeralPort)
        let request = drain(&c)
        #expect(request.map(\.0.knownOperation) == [.request])
        #expect(request[0].0.destinationPort == 1024 && request[0].0.sourcePort == key.hostPort)
        c.receive(fromGuest(.response, guestPort: 1024, hostPort: key.hostPort), payload: [])
        #expect(c.takeEvents() == [.accepted(key)])
        #expect(c.isEstablished(key))

        let refusedo = c.hostConnect(guestPort: 1025, now: 0)
        let refused = try #require(refusedo)
        #expect(refused != key)
        _ = drain(&c)
        c.receive(fromGuest(.reset, guestPort: 1025, hostPort: refused.hostPort), payload: [])
        #expect(c.takeEvents() == [.closed(refused)])
        #expect(drain(&c).isEmpty, "no reset answers a reset")

        let silento = c.hostConnect(guestPort: 1026, now: 100)
        let silent = try #require(silento)
        _ = drain(&c)
        #expect(c.nextDeadline == 100 + VsockConnections.connectTimeoutNanoseconds)
        #expect(c.expire(now: 100 + VsockConnections.connectTimeoutNanoseconds - 1).isEmpty)
        #expect(c.expire(now: 100 + VsockConnections.connectTimeoutNanoseconds) == [silent])
        #expect(c.takeEvents() == [.closed(silent)])
        #expect(drain(&c).map(\.0.knownOperation) == [.reset])
        #expect(c.statistics.timeouts == 1)
    }

    @Test("the host never sends beyond the guest's credit; a credit update releases more")
    func creditToGuest() throws {
        var c = VsockConnections(guestCID: guestCID)
        let key = Key(guestPort: 5000, hostPort: 80)
        c.receive(fromGuest(.request, bufferAllocation: 1000), payload: [])
        c.hostAccepted(key)
        _ = drain(&c)
        #expect(c.credit(for: key) == 1000)
        #expect(c.sendToGuest(key, [UInt8](repeating: 1, count: 1500)) == 1000)
        #expect(c.credit(for: key) == 0)
        let sent = drain(&c, room: 600)
        #expect(sent.map(\.1.count) == [600, 400])
        #expect(c.sendToGuest(key, [1]) == 0)
        c.receive(fromGuest(.creditUpdate, bufferAllocation: 1000, forwardCount: 700), payload: [])
        #expect(c.credit(for: key) == 700)
        c.receive(fromGuest(.creditRequest, bufferAllocation: 1000, forwardCount: 700), payload: [])
        #expect(drain(&c).map(\.0.knownOperation) == [.creditUpdate])
    }

    @Test("a guest that sends beyond its credit is reset; unknown connections get resets")
    func hostileGuest() throws {
        var c = VsockConnections(guestCID: guestCID)
        let key = Key(guestPort: 5000, hostPort: 80)
        c.receive(fromGuest(.request), payload: [])
        c.hostAccepted(key)
        _ = c.takeEvents()
        _ = drain(&c)
        let chunk = [UInt8](repeating: 0, count: Int(VsockConnections.maximumPayload))
        for _ in 0..<4 { c.receive(fromGuest(.readWrite, length: UInt32(chunk.count)), payload: chunk) }
        #expect(c.isEstablished(key), "exactly the 256 KiB buffer is within credit")
        c.receive(fromGuest(.readWrite, length: 1), payload: [0])
        #expect(!c.contains(key))
        #expect(c.statistics.creditViolations == 1)
        #expect(c.takeEvents() == [.dataForHost(key), .closed(key)])
        #expect(drain(&c).map(\.0.knownOperation) == [.reset])

        c.receive(fromGuest(.readWrite, guestPort: 7, length: 1), payload: [0])
        c.receive(fromGuest(.response, guestPort: 8), payload: [])
        #expect(drain(&c).map(\.0.knownOperation) == [.reset, .reset])
        #expect(c.statistics.unknownConnection == 2)
    }

    @Test("at most 1024 connections; a flood of requests is reset, never unbounded")
    func connectionLimit() throws {
        var c = VsockConnections(guestCID: guestCID)
        for port in 0..<UInt32(VsockConnections.maximumConnections + 10) {
            c.receive(fromGuest(.request, guestPort: port), payload: [])
        }
        #expect(c.count == VsockConnections.maximumConnections)
        #expect(c.statistics.refusedForLimit == 10)
        #expect(c.hostConnect(guestPort: 1, now: 0) == nil)
        #expect(drain(&c).filter { $0.0.knownOperation == .reset }.count == 10)
        for _ in 0..<(3 * VsockConnections.maximumControlPackets) {
            c.refuse(fromGuest(.readWrite, guestPort: 1 << 20))
        }
        #expect(!c.acceptsGuestPackets)
        #expect(drain(&c).count == VsockConnections.maximumControlPackets)
        #expect(c.acceptsGuestPackets)
    }

    @Test("host end of file: shutdown after the waiting data, the guest's reset closes")
    func hostShutdown() throws {
        var c = VsockConnections(guestCID: guestCID)
        let key = Key(guestPort: 5000, hostPort: 80)
        c.receive(fromGuest(.request), payload: [])
        c.hostAccepted(key)
        _ = drain(&c)
        _ = c.takeEvents()
        c.sendToGuest(key, [1, 2])
        c.hostShutdown(key)
        let packets = drain(&c)
        #expect(packets.map(\.0.knownOperation) == [.readWrite, .shutdown])
        #expect(packets[1].0.flags == 3)
        c.receive(fromGuest(.reset), payload: [])
        #expect(c.takeEvents() == [.closed(key)])
        #expect(c.count == 0)
    }
}

@Suite("VirtioVsock: device over a virtio-mmio transport")
struct VirtioVsockTests {
    private typealias Flag = Virtqueue.DescriptorFlag

    @Test("CID in config space; tx request, rx response; a malformed header gets a reset; restore sends a transport reset")
    func device() throws {
        let memory = try virtioTestMemory(size: 4 << 20)
        let transport = VirtioMMIOTransport(
            device: VirtioVsock(guestCID: guestCID), memory: memory,
            notifiers: [CountingSignal(), CountingSignal(), CountingSignal()], interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        #expect(driver.read(VirtioMMIORegisters.Offset.deviceID) == 19)
        #expect(transport.registerState.configuration == [3, 0, 0, 0, 0, 0, 0, 0])
        #expect(driver.negotiate(VirtioFeature.version1) & VirtioDeviceStatus.featuresOK != 0)
        var rx = RingDriver(
            memory: memory, size: 8, descriptorTable: 0x1_0000, availableRing: 0x1_0000 + 0x400, usedRing: 0x1_0000 + 0x800)
        var tx = RingDriver(
            memory: memory, size: 8, descriptorTable: 0x2_0000, availableRing: 0x2_0000 + 0x400, usedRing: 0x2_0000 + 0x800)
        driver.setUpQueue(0, rx)
        driver.setUpQueue(1, tx)
        driver.driverOK()

        try memory.write(fromGuest(.request).bytes, at: GuestAddress(0x10_0000))
        try tx.setDescriptor(0, address: 0x10_0000, length: 44)
        try tx.publish(0)
        var bad = fromGuest(.request, guestPort: 6000)
        bad.operation = 42
        try memory.write(bad.bytes, at: GuestAddress(0x10_1000))
        try tx.setDescriptor(1, address: 0x10_1000, length: 44)
        try tx.publish(1)
        _ = transport.processQueue(1)
        #expect(try tx.usedIndex() == 2)
        let events = transport.updateDevice { $0.connections.takeEvents() }
        #expect(events == [.guestConnects(Key(guestPort: 5000, hostPort: 80))])
        transport.updateDevice { $0.connections.hostAccepted(Key(guestPort: 5000, hostPort: 80)) }

        for i in 0..<2 {
            try rx.setDescriptor(i, address: 0x20_0000 + UInt64(i) * 0x1000, length: 0x1000, flags: Flag.write)
            try rx.publish(UInt16(i))
        }
        _ = transport.processQueue(0)
        #expect(try rx.usedIndex() == 2)
        let first = try VsockPacketHeader(bytes: memory.readBytes(at: GuestAddress(0x20_0000), count: 44))
        let second = try VsockPacketHeader(bytes: memory.readBytes(at: GuestAddress(0x20_1000), count: 44))
        #expect(first.knownOperation == .reset && first.destinationPort == 6000)
        #expect(second.knownOperation == .response && second.destinationPort == 5000)
        #expect(transport.withDevice { $0.connections.statistics.malformed } == 1)

        let saved = transport.withDevice { $0.saveState() }
        #expect(saved == VirtioVsock.State(guestCID: 3, queueSizeMaximum: 256))
        var restored = try VirtioVsock.restore(from: saved, with: ())
        #expect(restored.transportResetPending && restored.connections.count == 0)
        #expect(throws: DeviceRestoreError.self) {
            try VirtioVsock.restore(from: VirtioVsock.State(guestCID: 2, queueSizeMaximum: 256), with: ())
        }
        var ev = RingDriver(
            memory: memory, size: 8, descriptorTable: 0x3_0000, availableRing: 0x3_0000 + 0x400, usedRing: 0x3_0000 + 0x800)
        try memory.write([UInt8](repeating: 0xFF, count: 4), at: GuestAddress(0x30_0000))
        try ev.setDescriptor(0, address: 0x30_0000, length: 8, flags: Flag.write)
        try ev.publish(0)
        var chain = DescriptorChain()
        var queue = try ev.queue()
        #expect(try queue.popAvailable(from: memory, into: &chain))
        #expect(restored.handle(chain, queue: VirtioVsock.Queue.event, memory: memory) == .used(4))
        #expect(try memory.readBytes(at: GuestAddress(0x30_0000), count: 4) == [0, 0, 0, 0])
        #expect(!restored.transportResetPending)
        #expect(restored.handle(chain, queue: VirtioVsock.Queue.event, memory: memory) == .deferred)
    }
}

@Suite("VsockConnections: random hostile packets")
struct VsockHostileTests {
    @Test("20000 random headers (valid ops mixed with garbage) never trap and keep every bound")
    func random() throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        var c = VsockConnections(guestCID: guestCID)
        for _ in 0..<20000 {
            var raw = (0..<44).map { _ in UInt8(truncatingIfNeeded: next()) }
            if next() % 2 == 0 {  // mostly plausible: right CIDs, type, small op, few ports
                var h = try VsockPacketHeader(bytes: raw)
                h.sourceCID = guestCID
                h.destinationCID = next() % 8 == 0 ? 7 : 2
                h.type = 1
                h.operation = UInt16(next() % 9)
                h.sourcePort = UInt32(next() % 16)
                h.destinationPort = UInt32(next() % 4)
                h.length = UInt32(next() % 70_000)
                raw = h.bytes
            }
            let header = try VsockPacketHeader(bytes: raw)
            let available = next() % 80_000
            do {
                _ = try header.validate(
                    guestCID: guestCID, payloadBytes: available, maximumPayload: VsockConnections.maximumPayload)
                c.receive(header, payload: [UInt8](repeating: 0, count: Int(header.length)))
            } catch {
                c.refuse(header)
            }
            for event in c.takeEvents() {
                if case .guestConnects(let key) = event, next() % 2 == 0 { c.hostAccepted(key) }
                if case .dataForHost(let key) = event { c.hostConsumed(key, count: Int(next() % 100_000)) }
            }
            if next() % 4 == 0 { _ = c.nextPacketForGuest(maximumPayload: Int(next() % 70_000)) }
            #expect(c.count <= VsockConnections.maximumConnections)
        }
        _ = drain(&c)
        #expect(c.acceptsGuestPackets)
        #expect(c.statistics.malformed > 0)
    }
}
