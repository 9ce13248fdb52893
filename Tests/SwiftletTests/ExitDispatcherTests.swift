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

/// A device that records every access. Read number n (from 1) returns bytes `n << 4 | i`, so
/// the bytes show both which read produced them and their position.
private final class SequenceDevice: BusDevice {
    struct Access: Equatable, Sendable {
        var isWrite: Bool
        var offset: UInt64
        var bytes: [UInt8]
    }

    private struct State {
        var reads = 0
        var log: [Access] = []
    }

    private let state = Mutex(State())

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        state.withLock { state in
            state.reads += 1
            for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: state.reads << 4 | i) }
            state.log.append(Access(isWrite: false, offset: offset, bytes: Array(data)))
        }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        state.withLock { $0.log.append(Access(isWrite: true, offset: offset, bytes: Array(data))) }
    }

    var accesses: [Access] { state.withLock { $0.log } }
}

/// Buses with a device at COM1 (ports 0x3F8-0x3FF) and one in MMIO at 0xC000_0000 (4 KiB).
private struct Harness {
    let port = SequenceDevice()
    let memoryMapped = SequenceDevice()
    let dispatcher: ExitDispatcher

    init() throws {
        var portIO = Bus()
        try portIO.register(port, base: 0x3F8, length: 8, name: "com1")
        var mmio = Bus()
        try mmio.register(memoryMapped, base: 0xC000_0000, length: 0x1000, name: "test")
        dispatcher = ExitDispatcher(portIO: portIO, mmio: mmio)
    }

    /// Dispatches a port I/O exit over `bytes` (the `kvm_run` data area) and returns the bytes after.
    func portIO(port: UInt16, isWrite: Bool, size: Int, count: Int = 1, bytes: [UInt8]) -> (ExitDispatcher.Action, [UInt8]) {
        var buffer = bytes
        let action = buffer.withUnsafeMutableBytes { raw in
            dispatcher.handle(.portIO(PortIOExit(port: port, isWrite: isWrite, size: size, count: count, data: raw.baseAddress!)))
        }
        return (action, buffer)
    }

    func mmio(address: UInt64, isWrite: Bool, bytes: [UInt8]) -> (ExitDispatcher.Action, [UInt8]) {
        var buffer = bytes
        let action = buffer.withUnsafeMutableBytes { raw in
            dispatcher.handle(.mmio(MMIOExit(address: address, isWrite: isWrite, data: raw)))
        }
        return (action, buffer)
    }
}

/// A zeroed fake `kvm_run` page. KVM's real page is larger than `kvm_run`; PIO data lives after it.
private final class FakeRunPage {
    static let size = 4096
    let raw: UnsafeMutableRawPointer
    let run: UnsafeMutablePointer<kvm_run>

    init() {
        raw = UnsafeMutableRawPointer.allocate(byteCount: FakeRunPage.size, alignment: 4096)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: FakeRunPage.size)
        run = raw.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit { raw.deallocate() }

    func bytes(at offset: Int, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: raw + offset, count: count))
    }

    func store(_ bytes: [UInt8], at offset: Int) {
        for (i, byte) in bytes.enumerated() { raw.storeBytes(of: byte, toByteOffset: offset + i, as: UInt8.self) }
    }
}

/// (port, bytes) of port writes to the COM1 range.
private let portWrites: [(UInt16, [UInt8])] = [
    (0x3F8, [0x41]),
    (0x3FB, [0x03, 0x80]),
    (0x3FC, [0xDE, 0xAD, 0xBE, 0xEF]),
    (0x3FF, [0x7F]),
]

private let stopRIP: UInt64 = 0xFFFF_FFFF_8100_0000

/// Every stop cause with the guest exit it means for vCPU 3 at `stopRIP`.
private let stopCauses: [(ExitDispatcher.StopCause, GuestExit)] = [
    (.halt, .halted(vcpu: 3, rip: stopRIP)),
    (.shutdown, .tripleFault(vcpu: 3, rip: stopRIP)),
    (.systemEvent(UInt32(KVM_SYSTEM_EVENT_SHUTDOWN)), .powerOff),
    (.systemEvent(UInt32(KVM_SYSTEM_EVENT_RESET)), .reset),
    (.systemEvent(UInt32(KVM_SYSTEM_EVENT_CRASH)), .guestPanic(vcpu: 3)),
    (.systemEvent(99), .unhandledExit(vcpu: 3, reason: UInt32(KVM_EXIT_SYSTEM_EVENT), rip: stopRIP)),
    (.internalError(1), .internalError(vcpu: 3, suberror: 1, rip: stopRIP)),
    (.failEntry(0x8000_0021), .entryFailure(vcpu: 3, reason: 0x8000_0021, rip: stopRIP)),
    (.unhandled(UInt32(KVM_EXIT_DEBUG)), .unhandledExit(vcpu: 3, reason: 4, rip: stopRIP)),
]

@Suite("ExitDispatcher")
struct ExitDispatcherTests {
    // MARK: Port I/O

    @Test("PIO out reaches the device with its offset and bytes", arguments: portWrites)
    func pioOut(port: UInt16, bytes: [UInt8]) throws {
        let harness = try Harness()
        let (action, after) = harness.portIO(port: port, isWrite: true, size: bytes.count, bytes: bytes)
        #expect(action == .resume)
        #expect(after == bytes)
        #expect(harness.port.accesses == [.init(isWrite: true, offset: UInt64(port - 0x3F8), bytes: bytes)])
        #expect(harness.memoryMapped.accesses.isEmpty)
    }

    @Test("PIO in fills the buffer from the device", arguments: [1, 2, 4])
    func pioIn(size: Int) throws {
        let harness = try Harness()
        let sentinel: UInt8 = 0xEE
        let (action, after) = harness.portIO(
            port: 0x3FD, isWrite: false, size: size, bytes: [UInt8](repeating: 0, count: size) + [sentinel])
        #expect(action == .resume)
        let expected = (0..<size).map { UInt8(0x10 | $0) }
        #expect(after == expected + [sentinel])
        #expect(harness.port.accesses == [.init(isWrite: false, offset: 5, bytes: expected)])
    }

    @Test("rep outs: count accesses over successive slices")
    func repOut() throws {
        let harness = try Harness()
        let data: [UInt8] = [1, 2, 3, 4, 5, 6]
        let (action, _) = harness.portIO(port: 0x3F9, isWrite: true, size: 2, count: 3, bytes: data + [0xEE])
        #expect(action == .resume)
        #expect(
            harness.port.accesses == [
                .init(isWrite: true, offset: 1, bytes: [1, 2]),
                .init(isWrite: true, offset: 1, bytes: [3, 4]),
                .init(isWrite: true, offset: 1, bytes: [5, 6]),
            ])
    }

    @Test("rep ins: count reads fill successive slices and nothing past them")
    func repIn() throws {
        let harness = try Harness()
        let (action, after) = harness.portIO(
            port: 0x3F8, isWrite: false, size: 2, count: 3, bytes: [UInt8](repeating: 0, count: 6) + [0xEE, 0xEE])
        #expect(action == .resume)
        #expect(after == [0x10, 0x11, 0x20, 0x21, 0x30, 0x31, 0xEE, 0xEE])
        #expect(harness.port.accesses.count == 3)
        #expect(harness.port.accesses.allSatisfy { $0.offset == 0 && !$0.isWrite })

        let (_, bytes) = harness.portIO(port: 0x3F8, isWrite: false, size: 1, count: 4, bytes: [0, 0, 0, 0, 0xEE])
        #expect(bytes == [0x40, 0x50, 0x60, 0x70, 0xEE])
    }

    @Test("unclaimed PIO: reads give 0xFF, writes are dropped, the vCPU resumes")
    func pioUnclaimed() throws {
        let harness = try Harness()
        let (readAction, readBytes) = harness.portIO(port: 0x80, isWrite: false, size: 4, bytes: [0, 0, 0, 0, 0x12])
        #expect(readAction == .resume)
        #expect(readBytes == [0xFF, 0xFF, 0xFF, 0xFF, 0x12])
        let (repAction, repBytes) = harness.portIO(port: 0x400, isWrite: false, size: 1, count: 3, bytes: [0, 0, 0, 0x12])
        #expect(repAction == .resume)
        #expect(repBytes == [0xFF, 0xFF, 0xFF, 0x12])
        let (writeAction, _) = harness.portIO(port: 0x3F7, isWrite: true, size: 2, bytes: [9, 9])
        #expect(writeAction == .resume)
        #expect(harness.port.accesses.isEmpty)
    }

    // MARK: MMIO

    @Test("MMIO writes and reads reach the device at its offset")
    func mmioAccess() throws {
        let harness = try Harness()
        let (writeAction, _) = harness.mmio(address: 0xC000_0010, isWrite: true, bytes: [1, 2, 3, 4])
        #expect(writeAction == .resume)
        let (readAction, bytes) = harness.mmio(address: 0xC000_0FF8, isWrite: false, bytes: [UInt8](repeating: 0, count: 8))
        #expect(readAction == .resume)
        #expect(bytes == [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17])
        #expect(
            harness.memoryMapped.accesses == [
                .init(isWrite: true, offset: 0x10, bytes: [1, 2, 3, 4]),
                .init(isWrite: false, offset: 0xFF8, bytes: bytes),
            ])
        #expect(harness.port.accesses.isEmpty)
    }

    @Test("unclaimed MMIO: reads give 0xFF, writes are dropped")
    func mmioUnclaimed() throws {
        let harness = try Harness()
        let (readAction, bytes) = harness.mmio(address: 0xC000_1000, isWrite: false, bytes: [0, 0, 0, 0])
        #expect(readAction == .resume)
        #expect(bytes == [0xFF, 0xFF, 0xFF, 0xFF])
        let (writeAction, _) = harness.mmio(address: 0xBFFF_FFFF, isWrite: true, bytes: [1])
        #expect(writeAction == .resume)
        #expect(harness.memoryMapped.accesses.isEmpty)
    }

    @Test("MMIO through the dispatcher to the real MMIO test device")
    func mmioTestDevice() throws {
        var mmio = Bus()
        let device = MMIOTestDevice()
        try mmio.register(
            device, base: X86Layout.mmioTestDeviceAddress.rawValue, length: X86Layout.mmioTestDeviceSize, name: "test")
        let dispatcher = ExitDispatcher(portIO: Bus(), mmio: mmio)
        let base = X86Layout.mmioTestDeviceAddress.rawValue

        func access(_ offset: UInt64, write value: UInt32? = nil) -> UInt32 {
            var word = value ?? 0
            withUnsafeMutableBytes(of: &word) { raw in
                _ = dispatcher.handle(.mmio(MMIOExit(address: base + offset, isWrite: value != nil, data: raw)))
            }
            return word
        }
        #expect(access(0x00) == 0x5357_4C54)
        _ = access(0x08, write: 0x1234_5678)
        _ = access(0x0C, write: 0xFFFF_FFFF)
        #expect(access(0x08) == 0x1234_5678)
        #expect(access(0x10) == 2)
        #expect(access(0x20) == 0)
        #expect(device.snapshot.writeCount == 2)
        #expect(device.snapshot.scratch == 0x1234_5678)
    }

    // MARK: Stops

    @Test("non-I/O exits map to actions")
    func actions() throws {
        let dispatcher = ExitDispatcher(portIO: Bus(), mmio: Bus())
        #expect(dispatcher.handle(.interrupted) == .interrupted)
        #expect(dispatcher.handle(.halt) == .stop(.halt))
        #expect(dispatcher.handle(.shutdown) == .stop(.shutdown))
        #expect(dispatcher.handle(.systemEvent(type: 2)) == .stop(.systemEvent(2)))
        #expect(dispatcher.handle(.internalError(suberror: 1)) == .stop(.internalError(1)))
        #expect(dispatcher.handle(.failEntry(reason: 0x8000_0021)) == .stop(.failEntry(0x8000_0021)))
        #expect(dispatcher.handle(.unhandled(reason: 4)) == .stop(.unhandled(4)))
    }

    @Test("stop causes map to guest exits", arguments: stopCauses)
    func guestExitMapping(cause: ExitDispatcher.StopCause, expected: GuestExit) {
        #expect(ExitDispatcher.guestExit(for: cause, vcpu: 3, rip: stopRIP) == expected)
    }

    @Test("an out-of-range system event type is reported as unhandled, not a trap")
    func hugeSystemEventType() async {
        // KVM's system event types are small, but the value is the kernel's: converting it must not trap.
        await #expect(processExitsWith: .success) {
            let ended = ExitDispatcher.guestExit(for: .systemEvent(0x8000_0001), vcpu: 0, rip: 0x1000)
            guard ended == .unhandledExit(vcpu: 0, reason: UInt32(KVM_EXIT_SYSTEM_EVENT), rip: 0x1000) else { exit(1) }
        }
    }

    @Test("an out-of-range internal error suberror is described, not a trap")
    func hugeInternalErrorSuberror() async {
        await #expect(processExitsWith: .success) {
            let text = GuestExit.internalError(vcpu: 0, suberror: 0xFFFF_FFFF, rip: 0x1000).description
            guard text.contains("unknown") else { exit(1) }
        }
    }

    @Test("exit codes, cleanliness and descriptions of every guest exit")
    func guestExitProperties() {
        struct Row {
            var exit: GuestExit
            var code: Int32
            var clean: Bool
            var mentions: [String]
        }
        let rows: [Row] = [
            Row(exit: .reset, code: 0, clean: true, mentions: ["reset"]),
            Row(exit: .powerOff, code: 0, clean: true, mentions: ["powered off"]),
            Row(exit: .halted(vcpu: 1, rip: 0x10_00AB), code: 0, clean: true, mentions: ["vCPU 1", "RIP 0x1000ab"]),
            Row(exit: .stopped(.requested), code: 0, clean: true, mentions: ["host"]),
            Row(
                exit: .tripleFault(vcpu: 2, rip: 0xFFFF_FFFF_8100_0000), code: 3, clean: false,
                mentions: ["triple fault", "vCPU 2", "RIP 0xffffffff81000000"]),
            Row(
                exit: .internalError(vcpu: 0, suberror: 1, rip: 0xDEAD), code: 4, clean: false,
                mentions: ["internal error 1", "emulation", "RIP 0xdead"]),
            Row(
                exit: .internalError(vcpu: 0, suberror: 3, rip: 0xBEEF), code: 4, clean: false,
                mentions: ["internal error 3", "event delivery", "RIP 0xbeef"]),
            Row(
                exit: .internalError(vcpu: 0, suberror: 77, rip: 0x1), code: 4, clean: false,
                mentions: ["internal error 77", "unknown", "RIP 0x1"]),
            Row(
                exit: .entryFailure(vcpu: 5, reason: 0x8000_0021, rip: 0xFFF0), code: 5, clean: false,
                mentions: ["entry failed", "0x80000021", "vCPU 5", "RIP 0xfff0"]),
            Row(
                exit: .unhandledExit(vcpu: 0, reason: 4, rip: 0x7C00), code: 6, clean: false,
                mentions: ["unhandled KVM exit 4", "RIP 0x7c00"]),
            Row(
                exit: .vcpuFailed(vcpu: 1, error: SystemError("KVM_RUN", errno: 14)), code: 7, clean: false,
                mentions: ["vCPU 1", "KVM_RUN", "errno 14"]),
            Row(exit: .guestPanic(vcpu: 0), code: 8, clean: false, mentions: ["panic"]),
            Row(exit: .stopped(.deadline), code: 124, clean: false, mentions: ["deadline"]),
        ]
        for row in rows {
            #expect(row.exit.exitCode == row.code, "\(row.exit)")
            #expect(row.exit.isClean == row.clean, "\(row.exit)")
            #expect(row.exit.isClean == (row.exit.exitCode == 0), "\(row.exit)")
            let text = row.exit.description
            #expect(!text.contains("\n"))
            for word in row.mentions { #expect(text.contains(word), "\(text) should mention \(word)") }
        }
    }

    // MARK: Parsing kvm_run

    @Test("a KVM_EXIT_IO exit points into the kvm_run page, without copying")
    func parsePortIO() throws {
        let page = FakeRunPage()
        let dataOffset = 0xF00
        #expect(MemoryLayout<kvm_run>.size < dataOffset)
        page.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        page.run.pointee.io.direction = UInt8(KVM_EXIT_IO_OUT)
        page.run.pointee.io.size = 2
        page.run.pointee.io.port = 0x3F9
        page.run.pointee.io.count = 3
        page.run.pointee.io.data_offset = UInt64(dataOffset)
        page.store([1, 2, 3, 4, 5, 6], at: dataOffset)

        guard case .portIO(let io) = VCPUExit(page.run) else {
            Issue.record("not parsed as port I/O")
            return
        }
        #expect(io.port == 0x3F9)
        #expect(io.isWrite)
        #expect(io.size == 2)
        #expect(io.count == 3)
        #expect(io.data == page.raw + dataOffset)
        #expect(Array(UnsafeRawBufferPointer(start: io.data, count: 6)) == [1, 2, 3, 4, 5, 6])

        // Writing through the exit's pointer changes the page itself.
        io.data.storeBytes(of: 0xAB, toByteOffset: 5, as: UInt8.self)
        #expect(page.bytes(at: dataOffset, count: 6) == [1, 2, 3, 4, 5, 0xAB])

        // And the dispatcher delivers the page's bytes.
        let harness = try Harness()
        #expect(harness.dispatcher.handle(VCPUExit(page.run)) == .resume)
        #expect(harness.port.accesses.map(\.bytes) == [[1, 2], [3, 4], [5, 0xAB]])
    }

    @Test("a KVM_EXIT_IO read is answered in place in the kvm_run page")
    func parsePortIORead() throws {
        let page = FakeRunPage()
        page.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        page.run.pointee.io.direction = UInt8(KVM_EXIT_IO_IN)
        page.run.pointee.io.size = 4
        page.run.pointee.io.port = 0x3F8
        page.run.pointee.io.count = 1
        page.run.pointee.io.data_offset = 0xE00
        page.store([0xEE], at: 0xE04)
        let exit = VCPUExit(page.run)
        guard case .portIO(let io) = exit else {
            Issue.record("not parsed as port I/O")
            return
        }
        #expect(!io.isWrite)
        let harness = try Harness()
        #expect(harness.dispatcher.handle(exit) == .resume)
        #expect(page.bytes(at: 0xE00, count: 5) == [0x10, 0x11, 0x12, 0x13, 0xEE])
    }

    @Test("a KVM_EXIT_MMIO exit views kvm_run.mmio.data in place")
    func parseMMIO() throws {
        let page = FakeRunPage()
        let dataOffset = Int(SWL_KVM_RUN_MMIO_DATA_OFFSET)
        page.run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
        page.run.pointee.mmio.phys_addr = 0xC000_0008
        page.run.pointee.mmio.len = 4
        page.run.pointee.mmio.is_write = 1
        page.store([0x78, 0x56, 0x34, 0x12, 0x99, 0x99, 0x99, 0x99], at: dataOffset)

        guard case .mmio(let access) = VCPUExit(page.run) else {
            Issue.record("not parsed as MMIO")
            return
        }
        #expect(access.address == 0xC000_0008)
        #expect(access.isWrite)
        #expect(access.data.count == 4)
        #expect(access.data.baseAddress == page.raw + dataOffset)
        #expect(Array(access.data) == [0x78, 0x56, 0x34, 0x12])
        access.data[0] = 0x01
        #expect(page.bytes(at: dataOffset, count: 4) == [0x01, 0x56, 0x34, 0x12])

        // A read: the device's answer lands in the page.
        page.run.pointee.mmio.is_write = 0
        page.run.pointee.mmio.len = 8
        let read = VCPUExit(page.run)
        guard case .mmio(let readAccess) = read else {
            Issue.record("not parsed as MMIO")
            return
        }
        #expect(!readAccess.isWrite)
        #expect(readAccess.data.count == 8)
        let harness = try Harness()
        #expect(harness.dispatcher.handle(read) == .resume)
        #expect(page.bytes(at: dataOffset, count: 8) == [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17])
        #expect(harness.memoryMapped.accesses == [.init(isWrite: false, offset: 8, bytes: page.bytes(at: dataOffset, count: 8))])
    }

    @Test("an MMIO length above 8 is clamped to the 8-byte data field")
    func mmioLengthClamped() {
        let page = FakeRunPage()
        page.run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
        page.run.pointee.mmio.len = 64
        guard case .mmio(let access) = VCPUExit(page.run) else {
            Issue.record("not parsed as MMIO")
            return
        }
        #expect(access.data.count == 8)
    }

    @Test("the other exit reasons are parsed with their payloads")
    func parseOtherExits() {
        let page = FakeRunPage()
        let run = page.run

        run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
        guard case .halt = VCPUExit(run) else { Issue.record("HLT"); return }

        run.pointee.exit_reason = UInt32(KVM_EXIT_SHUTDOWN)
        guard case .shutdown = VCPUExit(run) else { Issue.record("SHUTDOWN"); return }

        run.pointee.exit_reason = UInt32(KVM_EXIT_SYSTEM_EVENT)
        run.pointee.system_event.type = UInt32(KVM_SYSTEM_EVENT_RESET)
        guard case .systemEvent(let type) = VCPUExit(run) else { Issue.record("SYSTEM_EVENT"); return }
        #expect(type == UInt32(KVM_SYSTEM_EVENT_RESET))

        run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
        run.pointee.internal.suberror = UInt32(KVM_INTERNAL_ERROR_DELIVERY_EV)
        guard case .internalError(let suberror) = VCPUExit(run) else { Issue.record("INTERNAL_ERROR"); return }
        #expect(suberror == 3)

        run.pointee.exit_reason = UInt32(KVM_EXIT_FAIL_ENTRY)
        run.pointee.fail_entry.hardware_entry_failure_reason = 0x8000_0021
        guard case .failEntry(let reason) = VCPUExit(run) else { Issue.record("FAIL_ENTRY"); return }
        #expect(reason == 0x8000_0021)

        run.pointee.exit_reason = UInt32(KVM_EXIT_INTR)
        guard case .interrupted = VCPUExit(run) else { Issue.record("INTR"); return }

        run.pointee.exit_reason = UInt32(KVM_EXIT_DEBUG)
        guard case .unhandled(let debugReason) = VCPUExit(run) else { Issue.record("DEBUG"); return }
        #expect(debugReason == 4)
    }

    @Test("an exit reason above Int32.max is reported as unhandled, not a trap")
    func hugeExitReason() async {
        await #expect(processExitsWith: .success) {
            let page = FakeRunPage()
            page.run.pointee.exit_reason = 0xFFFF_FFFF
            guard case .unhandled(let reason) = VCPUExit(page.run), reason == 0xFFFF_FFFF else { exit(1) }
        }
    }
}
