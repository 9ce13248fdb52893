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

private typealias Flag = Virtqueue.DescriptorFlag
private typealias Feature = VirtioNet.Feature
private typealias HeaderFlag = VirtioNetHeader.Flag
private typealias GSO = VirtioNetHeader.SegmentationType

/// A `NetworkBackend` in memory: frames (each with its 12-byte header) queued for the device to
/// read, frames the device sent, and the offload settings it asked for.
final class MemoryNetworkBackend: NetworkBackend {
    struct State {
        var incoming: [[UInt8]] = []
        var outgoing: [[UInt8]] = []
        var offloadChanges: [NetworkOffloads] = []
        var receiveError: SystemError?
        var sendError: SystemError?
    }

    let name = "memory0"
    let supportedOffloads: NetworkOffloads
    let state = Mutex(State())

    func setReceiveOffloads(_ offloads: NetworkOffloads) throws(SystemError) {
        state.withLock { $0.offloadChanges.append(offloads) }
    }

    /// As a tap does: the frame is truncated to the vectors; the length returned is the whole
    /// frame's (as older kernels do) or, with `returnsCopiedLength`, what was copied (as 6.x).
    let returnsCopiedLength: Bool

    init(supportedOffloads: NetworkOffloads = .all, returnsCopiedLength: Bool = true) {
        self.supportedOffloads = supportedOffloads
        self.returnsCopiedLength = returnsCopiedLength
    }

    func receive(into vectors: UnsafeBufferPointer<iovec>) throws(SystemError) -> Int? {
        let next = try state.withLock { (state) throws(SystemError) -> [UInt8]? in
            if let error = state.receiveError { throw error }
            return state.incoming.isEmpty ? nil : state.incoming.removeFirst()
        }
        guard let frame = next else { return nil }
        var offset = 0
        for vector in vectors where offset < frame.count {
            let count = min(vector.iov_len, frame.count - offset)
            frame.withUnsafeBytes { vector.iov_base.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
            offset += count
        }
        return returnsCopiedLength ? offset : frame.count
    }

    func send(_ vectors: UnsafeBufferPointer<iovec>) throws(SystemError) {
        var frame: [UInt8] = []
        for vector in vectors { frame += UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len) }
        try state.withLock { (state) throws(SystemError) in
            if let error = state.sendError { throw error }
            state.outgoing.append(frame)
        }
    }

    func push(_ frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) {
        state.withLock { $0.incoming.append(header.bytes + frame) }
    }

    var incomingCount: Int { state.withLock { $0.incoming.count } }
    var outgoing: [[UInt8]] { state.withLock { $0.outgoing } }
    var offloadChanges: [NetworkOffloads] { state.withLock { $0.offloadChanges } }
}

/// An Ethernet frame of `length` bytes: destination, source, type 0x88b5, then a pattern.
func testFrame(length: Int, seed: UInt8 = 0) -> [UInt8] {
    var frame: [UInt8] = [0x02, 0, 0, 0, 0, 0x0A, 0x02, 0, 0, 0, 0, 0x0B, 0x88, 0xB5]
    frame += (0..<max(0, length - 14)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
    return frame
}

/// virtio-net over an in-memory backend, driven through the transport as a guest driver would:
/// the header, feature and offload rules, and the receive and transmit queues' accounting.
@Suite("VirtioNet: device over plain guest memory")
struct VirtioNetTests {
    struct Fixture {
        let memory: GuestMemory
        let backend: MemoryNetworkBackend
        let interrupt = CountingSignal()
        let transport: VirtioMMIOTransport<VirtioNet>
        var rx: RingDriver
        var tx: RingDriver
        var driver: MMIODriver<VirtioNet> { MMIODriver(transport: transport) }
        static let mac = MACAddress([0x02, 0x53, 0x57, 0x4C, 0x54, 0x01])
        /// Receive buffers from 0x10_0000, transmit data from 0x20_0000.
        static let receiveBuffers: UInt64 = 0x10_0000
        static let transmitData: UInt64 = 0x20_0000

        init(
            features: UInt64 = Feature.mac | Feature.status, supported: NetworkOffloads = .all, offloads: Bool = true,
            backendReturnsCopiedLength: Bool = true
        ) throws {
            memory = try virtioTestMemory(size: 4 << 20)
            backend = MemoryNetworkBackend(supportedOffloads: supported, returnsCopiedLength: backendReturnsCopiedLength)
            transport = VirtioMMIOTransport(
                device: VirtioNet(backend: backend, mac: Self.mac, offloads: offloads), memory: memory,
                notifiers: [CountingSignal(), CountingSignal()], interrupt: interrupt)
            rx = RingDriver(memory: memory, size: 16)
            tx = RingDriver(memory: memory, size: 16, descriptorTable: 0x8000, availableRing: 0x9000, usedRing: 0xA000)
            #expect(driver.negotiate(VirtioFeature.version1 | features) & VirtioDeviceStatus.featuresOK != 0)
            driver.setUpQueue(0, rx)
            driver.setUpQueue(1, tx)
            driver.driverOK()
        }

        /// Offers receive buffer `index` (descriptor `index`) of `length` bytes.
        mutating func offerReceiveBuffer(_ index: UInt16, length: UInt32 = 1536) throws {
            try rx.setDescriptor(
                Int(index), address: Self.receiveBuffers + UInt64(index) * 0x1000, length: length, flags: Flag.write)
            try rx.publish(index)
        }

        func receiveBuffer(_ index: UInt16, count: Int) throws -> [UInt8] {
            try memory.readBytes(at: GuestAddress(Self.receiveBuffers + UInt64(index) * 0x1000), count: count)
        }

        /// Publishes `bytes` (header and frame) as one transmit chain split into `pieces` buffers.
        mutating func send(_ bytes: [UInt8], pieces: Int = 1, head: UInt16 = 0) throws {
            try memory.write(bytes, at: GuestAddress(Self.transmitData))
            let size = (bytes.count + pieces - 1) / pieces
            var offset = 0
            for piece in 0..<pieces {
                let length = min(size, bytes.count - offset)
                let last = piece == pieces - 1
                try tx.setDescriptor(
                    Int(head) + piece, address: Self.transmitData + UInt64(offset), length: UInt32(length),
                    flags: last ? 0 : Flag.next, next: head + UInt16(piece) + 1)
                offset += length
            }
            try tx.publish(head)
        }

        var statistics: VirtioNet.Statistics { transport.networkStatistics }
    }

    // MARK: The header

    @Test("the header is 12 little-endian bytes in virtio_net_hdr_v1 order")
    func headerLayout() {
        let header = VirtioNetHeader(
            flags: 1, segmentationType: GSO.tcp4 | GSO.ecn, headerLength: 0x0102, segmentSize: 0x0304, checksumStart: 0x0506,
            checksumOffset: 0x0708, bufferCount: 0x090A)
        #expect(header.bytes == [1, 0x81, 2, 1, 4, 3, 6, 5, 8, 7, 0x0A, 9])
        #expect(header.bytes.withUnsafeBytes { VirtioNetHeader($0) } == header)
        #expect(VirtioNetHeader().bytes == [UInt8](repeating: 0, count: 12))
    }

    @Test("transmit headers: offloads need their feature, receive-only fields are cleared")
    func transmitRules() {
        let csum = VirtioNetHeader(flags: HeaderFlag.needsChecksum, checksumStart: 34, checksumOffset: 16)
        #expect(csum.forTransmit(features: 0) == .failure(.checksumNotNegotiated))
        #expect(csum.forTransmit(features: Feature.checksum) == .success(csum))
        let dirty = VirtioNetHeader(flags: HeaderFlag.dataValid | HeaderFlag.rscInfo, bufferCount: 7)
        #expect(dirty.forTransmit(features: 0) == .success(VirtioNetHeader()))
        let tso4 = VirtioNetHeader(flags: HeaderFlag.needsChecksum, segmentationType: GSO.tcp4, segmentSize: 1448)
        #expect(tso4.forTransmit(features: Feature.checksum) == .failure(.segmentationNotNegotiated(GSO.tcp4)))
        #expect(tso4.forTransmit(features: Feature.checksum | Feature.hostTSO4) == .success(tso4))
        let tso6ECN = VirtioNetHeader(segmentationType: GSO.tcp6 | GSO.ecn)
        #expect(tso6ECN.forTransmit(features: Feature.hostTSO6) == .failure(.segmentationNotNegotiated(GSO.tcp6 | GSO.ecn)))
        #expect(tso6ECN.forTransmit(features: Feature.hostTSO6 | Feature.hostECN) == .success(tso6ECN))
        for type in [GSO.udp, GSO.udpL4, 2, 0x7F, GSO.ecn] {
            #expect(
                VirtioNetHeader(segmentationType: type).forTransmit(features: ~0) == .failure(.segmentationNotNegotiated(type)))
        }
    }

    @Test("receive headers: offloads the driver refused drop the frame; without GUEST_CSUM flags are 0; num_buffers is 1")
    func receiveRules() {
        let valid = VirtioNetHeader(flags: HeaderFlag.dataValid)
        #expect(valid.forReceive(features: 0) == .success(VirtioNetHeader(bufferCount: 1)))
        #expect(
            valid.forReceive(features: Feature.guestChecksum)
                == .success(VirtioNetHeader(flags: HeaderFlag.dataValid, bufferCount: 1)))
        let partial = VirtioNetHeader(flags: HeaderFlag.needsChecksum, checksumStart: 34, checksumOffset: 6)
        #expect(partial.forReceive(features: 0) == .failure(.checksumNotNegotiated))
        #expect(
            partial.forReceive(features: Feature.guestChecksum)
                == .success(
                    VirtioNetHeader(
                        flags: HeaderFlag.needsChecksum, checksumStart: 34, checksumOffset: 6, bufferCount: 1)))
        let tso6 = VirtioNetHeader(flags: HeaderFlag.needsChecksum, segmentationType: GSO.tcp6, segmentSize: 1440)
        #expect(
            tso6.forReceive(features: Feature.guestChecksum | Feature.guestTSO4) == .failure(.segmentationNotNegotiated(GSO.tcp6))
        )
        #expect(
            tso6.forReceive(features: Feature.guestChecksum | Feature.guestTSO6) != .failure(.segmentationNotNegotiated(GSO.tcp6))
        )
        #expect(VirtioNetHeader(flags: HeaderFlag.rscInfo).forReceive(features: ~0) == .success(VirtioNetHeader(bufferCount: 1)))
    }

    // MARK: Identity, configuration, features

    @Test("configuration space: MAC, link status, one queue pair; link changes raise a configuration interrupt")
    func configuration() throws {
        let f = try Fixture()
        let config = f.transport.registerState.configuration
        #expect(config == [0x02, 0x53, 0x57, 0x4C, 0x54, 0x01, 1, 0, 1, 0])
        #expect(f.driver.read(VirtioMMIORegisters.Offset.deviceID) == 1)
        let generation = f.transport.registerState.configGeneration
        f.transport.setLinkUp(false)
        #expect(f.transport.registerState.configuration[6] == 0)
        #expect(f.transport.registerState.configGeneration == generation &+ 1)
        #expect(f.driver.interruptStatus & VirtioInterruptBit.configurationChange != 0)
        #expect(f.interrupt.count == 1)
    }

    @Test("offloads are offered only where the backend supports them, and not at all when turned off")
    func offeredFeatures() {
        let base =
            VirtioFeature.version1 | VirtioFeature.ringEventIndex | VirtioFeature.ringIndirectDescriptors | Feature.mac
            | Feature.status
        let backend = MemoryNetworkBackend(supportedOffloads: .all)
        let all =
            Feature.checksum | Feature.guestChecksum | Feature.hostTSO4 | Feature.guestTSO4 | Feature.hostTSO6
            | Feature.guestTSO6 | Feature.hostECN | Feature.guestECN
        #expect(VirtioNet(backend: backend, mac: Fixture.mac).offeredFeatures == base | all)
        #expect(VirtioNet(backend: backend, mac: Fixture.mac, offloads: false).offeredFeatures == base)
        let checksumOnly = MemoryNetworkBackend(supportedOffloads: .checksum)
        #expect(
            VirtioNet(backend: checksumOnly, mac: Fixture.mac).offeredFeatures == base | Feature.checksum | Feature.guestChecksum)
        // Segmentation without checksums is not a consistent set: nothing is offered.
        let broken = MemoryNetworkBackend(supportedOffloads: [.tcp4])
        #expect(VirtioNet(backend: broken, mac: Fixture.mac).offeredFeatures == base)
    }

    @Test("receive offloads follow the driver's GUEST_ features and their dependencies")
    func receiveOffloadMapping() {
        #expect(VirtioNet.receiveOffloads(for: 0) == [])
        #expect(VirtioNet.receiveOffloads(for: Feature.guestTSO4) == [], "segmentation needs GUEST_CSUM")
        #expect(VirtioNet.receiveOffloads(for: Feature.guestChecksum | Feature.guestECN) == [.checksum], "ECN needs TSO")
        #expect(
            VirtioNet.receiveOffloads(for: Feature.guestChecksum | Feature.guestTSO6 | Feature.guestECN) == [
                .checksum, .tcp6, .tcpECN,
            ])
        #expect(VirtioNet.receiveOffloads(for: ~0) == .all)
    }

    @Test("negotiated receive offloads reach the backend on the event loop's first receive, not at activation")
    func offloadsApplied() throws {
        var f = try Fixture(features: Feature.mac | Feature.guestChecksum | Feature.guestTSO4)
        #expect(f.backend.offloadChanges.isEmpty, "activation (a vCPU thread) does not touch the backend")
        try f.offerReceiveBuffer(0)
        f.transport.processQueue(VirtioNet.receiveQueue)
        #expect(f.backend.offloadChanges == [[.checksum, .tcp4]])
        f.transport.processQueue(VirtioNet.receiveQueue)
        #expect(f.backend.offloadChanges.count == 1, "applied once")

        f.driver.write(VirtioMMIORegisters.Offset.status, 0)
        #expect(f.driver.negotiate(VirtioFeature.version1) & VirtioDeviceStatus.featuresOK != 0)
        f.rx = RingDriver(memory: f.memory, size: 16)
        f.driver.setUpQueue(0, f.rx)
        f.driver.driverOK()
        try f.offerReceiveBuffer(0)
        f.transport.processQueue(VirtioNet.receiveQueue)
        #expect(f.backend.offloadChanges == [[.checksum, .tcp4], []])
    }

    // MARK: Receive queue

    @Test("frames fill the driver's buffers in order: header fixed up, used length = header + frame")
    func receive() throws {
        var f = try Fixture()
        let frames = [testFrame(length: 60, seed: 1), testFrame(length: 1514, seed: 2)]
        f.backend.push(frames[0], header: VirtioNetHeader(flags: HeaderFlag.dataValid))
        f.backend.push(frames[1])
        try f.offerReceiveBuffer(0)
        try f.offerReceiveBuffer(1)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(try f.rx.usedIndex() == 2)
        #expect(try f.rx.usedElement(0) == (0, 72))
        #expect(try f.rx.usedElement(1) == (1, 1526))
        #expect(
            try f.receiveBuffer(0, count: 72) == VirtioNetHeader(bufferCount: 1).bytes + frames[0],
            "DATA_VALID cleared without GUEST_CSUM")
        #expect(try f.receiveBuffer(1, count: 1526) == VirtioNetHeader(bufferCount: 1).bytes + frames[1])
        #expect(f.driver.interruptStatus == VirtioInterruptBit.usedBuffer)
        let statistics = f.statistics
        #expect(statistics.receivedFrames == 2 && statistics.receivedBytes == 1574 && statistics.droppedFrames == 0)
        #expect(f.transport.statistics.requests == 2)
    }

    @Test("with no receive buffers frames wait in the backend; with buffers and no frames the chains wait")
    func flowControl() throws {
        var f = try Fixture()
        for seed in 0..<3 { f.backend.push(testFrame(length: 100, seed: UInt8(seed))) }
        // No buffers: nothing is read.
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(f.backend.incomingCount == 3)
        // Two buffers: two frames move, the third waits.
        try f.offerReceiveBuffer(0)
        try f.offerReceiveBuffer(1)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(f.backend.incomingCount == 1)
        #expect(try f.rx.usedIndex() == 2)
        // The driver returns one buffer: the third frame goes into it.
        try f.offerReceiveBuffer(0)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(f.backend.incomingCount == 0)
        #expect(try f.receiveBuffer(0, count: 112) == VirtioNetHeader(bufferCount: 1).bytes + testFrame(length: 100, seed: 2))
        // A buffer and no frame: the chain stays available (deferred), not used.
        try f.offerReceiveBuffer(1)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .deferred)
        #expect(try f.rx.usedIndex() == 3)
        #expect(f.transport.queueState[0]?.nextAvailable == 3)
        #expect(f.transport.statistics.requests == 3, "a deferred chain is not a request")
        // A frame arrives: it goes into the same chain.
        f.backend.push(testFrame(length: 64, seed: 9))
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(try f.rx.usedIndex() == 4)
        #expect(try f.rx.usedElement(3) == (1, 76))
        #expect(f.statistics.receivedFrames == 4 && f.statistics.droppedFrames == 0)
    }

    @Test(
        "a frame larger than the driver's chain is dropped and counted; the chain takes the next frame",
        arguments: [true, false])
    func tooLarge(backendReturnsCopiedLength: Bool) throws {
        var f = try Fixture(backendReturnsCopiedLength: backendReturnsCopiedLength)
        f.backend.push(testFrame(length: 1000))
        f.backend.push(testFrame(length: 80, seed: 5))
        try f.offerReceiveBuffer(0, length: 512)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(try f.rx.usedElement(0) == (0, 92))
        #expect(try f.receiveBuffer(0, count: 92) == VirtioNetHeader(bufferCount: 1).bytes + testFrame(length: 80, seed: 5))
        #expect(f.statistics.receiveTooLarge == 1 && f.statistics.receivedFrames == 1)
        // Only oversized frames: they are all dropped and the chain waits.
        f.backend.push(testFrame(length: 600))
        try f.offerReceiveBuffer(1, length: 512)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .deferred)
        #expect(f.statistics.receiveTooLarge == 2)
        #expect(try f.rx.usedIndex() == 1)
        // A frame of exactly the chain's size fits; one byte more does not.
        f.backend.push(testFrame(length: 501))
        f.backend.push(testFrame(length: 500, seed: 6))
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(try f.rx.usedElement(1) == (1, 512))
        #expect(f.statistics.receiveTooLarge == 3)
        // Even a frame larger than the overflow buffer is recognised.
        f.backend.push(testFrame(length: 70_000))
        try f.offerReceiveBuffer(2, length: 512)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .deferred)
        #expect(f.statistics.receiveTooLarge == 4)
    }

    @Test("a receive chain shorter than the header is returned empty and costs no frame")
    func chainTooSmall() throws {
        var f = try Fixture()
        f.backend.push(testFrame(length: 60))
        try f.offerReceiveBuffer(0, length: 8)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .drained)
        #expect(try f.rx.usedElement(0) == (0, 0))
        #expect(f.backend.incomingCount == 1)
        #expect(f.statistics.receiveChainTooSmall == 1)
    }

    @Test("frames with offloads the driver did not accept are dropped and counted")
    func receiveOffloadRefused() throws {
        var f = try Fixture()
        f.backend.push(testFrame(length: 60), header: VirtioNetHeader(flags: HeaderFlag.needsChecksum, checksumStart: 34))
        f.backend.push(testFrame(length: 60), header: VirtioNetHeader(segmentationType: GSO.tcp4, segmentSize: 1448))
        f.backend.push(testFrame(length: 60, seed: 3))
        try f.offerReceiveBuffer(0)
        f.transport.processQueue(VirtioNet.receiveQueue)
        #expect(f.statistics.receiveOffloadRefused == 2 && f.statistics.receivedFrames == 1)
        #expect(try f.receiveBuffer(0, count: 72) == VirtioNetHeader(bufferCount: 1).bytes + testFrame(length: 60, seed: 3))
    }

    @Test("a failing backend read stops receiving and is remembered")
    func receiveFailure() throws {
        var f = try Fixture()
        f.backend.state.withLock { $0.receiveError = SystemError("read from tap memory0", errno: EBADFD) }
        try f.offerReceiveBuffer(0)
        #expect(f.transport.processQueue(VirtioNet.receiveQueue) == .deferred)
        #expect(f.transport.withDevice { $0.backendFailure } == SystemError("read from tap memory0", errno: EBADFD))
        #expect(f.statistics.receiveErrors == 1 && f.statistics.lastBackendErrno == EBADFD)
        #expect(try f.rx.usedIndex() == 0)
    }

    // MARK: Transmit queue

    @Test("a transmit chain goes to the backend as header + frame and returns with length 0")
    func transmit() throws {
        var f = try Fixture()
        let frame = testFrame(length: 98, seed: 4)
        try f.send(VirtioNetHeader(bufferCount: 3).bytes + frame, pieces: 3)
        #expect(f.transport.processQueue(VirtioNet.transmitQueue) == .drained)
        #expect(f.backend.outgoing == [VirtioNetHeader().bytes + frame], "num_buffers cleared")
        #expect(try f.tx.usedElement(0) == (0, 0))
        #expect(f.statistics.transmittedFrames == 1 && f.statistics.transmittedBytes == 98)
        #expect(f.driver.interruptStatus == VirtioInterruptBit.usedBuffer)
    }

    @Test("the device sends the header it checked, even if the guest changes it afterwards")
    func transmitHeaderCopied() throws {
        var f = try Fixture()
        // One buffer: the header copy is what goes out.
        try f.send(VirtioNetHeader(flags: HeaderFlag.dataValid).bytes + testFrame(length: 60))
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(f.backend.outgoing.first?.prefix(12).allSatisfy { $0 == 0 } == true)
    }

    @Test(
        "malformed transmit chains and unnegotiated offloads are dropped, counted and returned",
        arguments: [
            (VirtioNetHeader().bytes + testFrame(length: 14).prefix(13), "frame shorter than an Ethernet header"),
            ([UInt8](repeating: 0, count: 11), "no complete header"),
            (VirtioNetHeader(flags: HeaderFlag.needsChecksum).bytes + testFrame(length: 60), "checksum offload not negotiated"),
            (VirtioNetHeader(segmentationType: GSO.udp).bytes + testFrame(length: 60), "UDP segmentation"),
        ])
    func transmitRefused(bytes: [UInt8], reason: String) throws {
        var f = try Fixture()
        try f.send(bytes)
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(f.backend.outgoing.isEmpty, "\(reason)")
        #expect(try f.tx.usedElement(0) == (0, 0))
        #expect(f.statistics.transmitMalformed + f.statistics.transmitOffloadRefused == 1)
        #expect(f.statistics.transmittedFrames == 0)
    }

    @Test("a frame longer than 64 KiB plus headers is malformed")
    func transmitTooLong() throws {
        var f = try Fixture()
        try f.send(VirtioNetHeader().bytes + testFrame(length: VirtioNet.maximumFrameLength + 1), pieces: 2)
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(f.statistics.transmitMalformed == 1 && f.backend.outgoing.isEmpty)
        try f.send(VirtioNetHeader().bytes + testFrame(length: VirtioNet.maximumFrameLength), pieces: 2)
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(f.statistics.transmittedFrames == 1)
    }

    @Test("offloaded frames go through when negotiated")
    func transmitOffloaded() throws {
        var f = try Fixture(features: Feature.checksum | Feature.hostTSO4)
        let header = VirtioNetHeader(
            flags: HeaderFlag.needsChecksum, segmentationType: GSO.tcp4, headerLength: 54, segmentSize: 1448, checksumStart: 34,
            checksumOffset: 16)
        try f.send(header.bytes + testFrame(length: 9000))
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(f.backend.outgoing == [header.bytes + testFrame(length: 9000)])
    }

    @Test("a failed backend write is counted; the chain still goes back to the driver")
    func transmitFailure() throws {
        var f = try Fixture()
        f.backend.state.withLock { $0.sendError = SystemError("write to tap memory0", errno: EIO) }
        try f.send(VirtioNetHeader().bytes + testFrame(length: 60))
        f.transport.processQueue(VirtioNet.transmitQueue)
        #expect(try f.tx.usedIndex() == 1)
        #expect(f.statistics.transmitErrors == 1 && f.statistics.lastBackendErrno == EIO && f.statistics.droppedFrames == 1)
    }

    // MARK: The receive pump (event loop side)

    @Test("the receive pump counts frames left waiting for buffers, and takes the link down when the tap fails")
    func receivePump() throws {
        var f = try Fixture()
        let loop = try EventLoop()
        // An eventfd stands in for the tap: readable while its counter is not zero.
        let tap = try EventFD()
        try loop.add(tap.rawValue, events: 0) { _ in }
        let pump = TapReceivePump(tapDescriptor: tap.rawValue, eventLoop: loop)
        pump.serve(f.transport)
        #expect(f.statistics.receiveStalls == 0, "no buffers, but nothing waiting either")
        try tap.signal()
        pump.serve(f.transport)
        #expect(f.statistics.receiveStalls == 1, "no buffers while the tap has frames")
        try f.offerReceiveBuffer(0)
        pump.serve(f.transport)
        #expect(f.statistics.receiveStalls == 1, "a buffer waits for a frame: not a stall")
        #expect(f.transport.registerState.configuration[6] == 1)

        pump.tapReady(EPOLLERR.rawValue, transport: f.transport)
        #expect(f.transport.registerState.configuration[6] == 0, "link down")
        #expect(f.driver.interruptStatus & VirtioInterruptBit.configurationChange != 0)
        let generation = f.transport.registerState.configGeneration
        pump.tapReady(EPOLLHUP.rawValue, transport: f.transport)
        #expect(f.transport.registerState.configGeneration == generation, "only once")
    }

    @Test("a failed tap read detaches the tap and takes the link down")
    func receivePumpReadFailure() throws {
        var f = try Fixture()
        let loop = try EventLoop()
        let tap = try EventFD()
        try loop.add(tap.rawValue, events: 0) { _ in }
        let pump = TapReceivePump(tapDescriptor: tap.rawValue, eventLoop: loop)
        f.backend.state.withLock { $0.receiveError = SystemError("read from tap memory0", errno: EBADFD) }
        try f.offerReceiveBuffer(0)
        pump.tapReady(EPOLLIN.rawValue, transport: f.transport)
        #expect(f.transport.registerState.configuration[6] == 0)
        #expect(f.statistics.receiveErrors == 1)
        // Later notifications do not read a failed tap again.
        pump.serve(f.transport)
        #expect(f.statistics.receiveErrors == 1)
    }

    @Test("a malformed chain on either queue is returned with length 0 by the transport; the device never sees it")
    func malformedChains() throws {
        var f = try Fixture()
        try f.rx.setDescriptor(0, address: 0xFFFF_0000, length: 1536, flags: Flag.write)
        try f.rx.publish(0)
        f.backend.push(testFrame(length: 60))
        f.transport.processQueue(VirtioNet.receiveQueue)
        #expect(try f.rx.usedElement(0) == (0, 0))
        #expect(f.backend.incomingCount == 1, "no frame consumed for a broken chain")
        #expect(f.transport.statistics.failedChains == 1)
    }
}

/// virtio-rng's request handling, over plain guest memory.
@Suite("VirtioRNG: entropy device")
struct VirtioRNGTests {
    @Test("requests fill every writable buffer with random bytes, at most 64 KiB per chain")
    func fill() throws {
        let memory = try virtioTestMemory(size: 4 << 20)
        let transport = VirtioMMIOTransport(
            device: VirtioRNG(), memory: memory, notifiers: [CountingSignal()], interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        #expect(driver.read(VirtioMMIORegisters.Offset.deviceID) == 4)
        #expect(transport.registerState.configuration.isEmpty)
        var ring = RingDriver(memory: memory, size: 16)
        #expect(driver.negotiate(VirtioFeature.version1) & VirtioDeviceStatus.featuresOK != 0)
        driver.setUpQueue(0, ring)
        driver.driverOK()

        try ring.setDescriptor(0, address: 0x10_0000, length: 32, flags: Flag.write | Flag.next, next: 1)
        try ring.setDescriptor(1, address: 0x10_1000, length: 32, flags: Flag.write)
        try ring.publish(0)
        try ring.setDescriptor(2, address: 0x20_0000, length: 128 << 10, flags: Flag.write)
        try ring.publish(2)
        try ring.setDescriptor(3, address: 0x10_2000, length: 16)  // readable only: nothing to fill
        try ring.publish(3)
        transport.processQueue(0)
        #expect(try ring.usedIndex() == 3)
        #expect(try ring.usedElement(0) == (0, 64))
        #expect(try ring.usedElement(1) == (2, UInt32(VirtioRNG.maximumRequestBytes)))
        #expect(try ring.usedElement(2) == (3, 0))
        let a = try memory.readBytes(at: GuestAddress(0x10_0000), count: 32)
        let b = try memory.readBytes(at: GuestAddress(0x10_1000), count: 32)
        #expect(a != b && a.contains { $0 != 0 } && b.contains { $0 != 0 })
        let big = try memory.readBytes(at: GuestAddress(0x20_0000), count: 128 << 10)
        #expect(big[(64 << 10) - 64..<(64 << 10)].contains { $0 != 0 })
        #expect(big[(64 << 10)...].allSatisfy { $0 == 0 }, "nothing past the 64 KiB cap")
        let statistics = transport.withDevice { $0.statistics }
        #expect(statistics.requests == 3 && statistics.bytes == 64 + 65536 && statistics.failures == 0)
    }
}
