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

/// A bus device that records every access. Reads return `tag` in every byte so a test can tell
/// which device answered.
private final class RecordingDevice: BusDevice {
    struct Access: Equatable, Sendable {
        var isWrite: Bool
        var offset: UInt64
        var bytes: [UInt8]
    }

    let tag: UInt8
    private let log = Mutex<[Access]>([])

    init(tag: UInt8 = 0x5A) { self.tag = tag }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: tag)
        log.withLock { $0.append(Access(isWrite: false, offset: offset, bytes: Array(data))) }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        log.withLock { $0.append(Access(isWrite: true, offset: offset, bytes: Array(data))) }
    }

    var accesses: [Access] { log.withLock { $0 } }
}

/// Reads `count` bytes at `address`, starting from a buffer of 0x00 bytes.
private func busRead(_ bus: Bus, _ address: UInt64, count: Int = 1) -> (claimed: Bool, bytes: [UInt8]) {
    var bytes = [UInt8](repeating: 0x00, count: count)
    let claimed = bytes.withUnsafeMutableBytes { bus.read(address, data: $0) }
    return (claimed, bytes)
}

private func busWrite(_ bus: Bus, _ address: UInt64, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { bus.write(address, data: $0) }
}

/// (base, length) of new ranges that overlap an existing device at [0x1000, 0x2000).
private let overlappingRanges: [(UInt64, UInt64)] = [
    (0x1000, 0x10),  // same base, shorter
    (0x1000, 0x1000),  // identical range
    (0x1000, 0x2000),  // same base, longer
    (0x1800, 0x10),  // inside
    (0x1FFF, 1),  // the last byte only
    (0x0FF0, 0x20),  // straddles the start
    (0x0FFF, 2),  // straddles the start by one byte
    (0x1FF0, 0x20),  // straddles the end
    (0x0800, 0x2000),  // encloses
    (0, .max),  // encloses everything
]

@Suite("Bus")
struct BusTests {
    @Test("a registered device is found at its base and the entries are kept sorted")
    func registerAndLookup() throws {
        var bus = Bus()
        #expect(bus.entry(containing: 0) == nil)
        try bus.register(RecordingDevice(), base: 0x200, length: 8, name: "second")
        try bus.register(RecordingDevice(), base: 0x100, length: 0x10, name: "first")
        #expect(bus.entries.map(\.name) == ["first", "second"])
        #expect(bus.entries.map(\.base) == [0x100, 0x200])
        #expect(bus.entries.map(\.length) == [0x10, 8])
        #expect(bus.entry(containing: 0x100)?.name == "first")
        #expect(bus.entry(containing: 0x200)?.name == "second")
        #expect(bus.entry(containing: 0x180) == nil)
    }

    @Test("lookup at the first and last byte of a range, and one outside either end")
    func rangeBoundaries() throws {
        var bus = Bus()
        try bus.register(RecordingDevice(), base: 0x3F8, length: 8, name: "com1")
        #expect(bus.entry(containing: 0x3F7) == nil)
        #expect(bus.entry(containing: 0x3F8)?.name == "com1")
        #expect(bus.entry(containing: 0x3FF)?.name == "com1")
        #expect(bus.entry(containing: 0x400) == nil)
    }

    @Test("overlapping registrations are refused", arguments: overlappingRanges)
    func overlapRejected(base: UInt64, length: UInt64) throws {
        var bus = Bus()
        try bus.register(RecordingDevice(), base: 0x1000, length: 0x1000, name: "existing")
        #expect(throws: BusError.overlap(name: "new", base: base, length: length, existing: "existing")) {
            try bus.register(RecordingDevice(), base: base, length: length, name: "new")
        }
        #expect(bus.entries.count == 1)
        #expect(bus.entry(containing: base)?.name == (base >= 0x1000 ? "existing" : nil))
    }

    @Test("overlap with the following range when a preceding range exists")
    func overlapBetweenNeighbours() throws {
        var bus = Bus()
        try bus.register(RecordingDevice(), base: 0x1000, length: 0x100, name: "low")
        try bus.register(RecordingDevice(), base: 0x3000, length: 0x100, name: "high")
        #expect(throws: BusError.overlap(name: "mid", base: 0x2000, length: 0x1001, existing: "high")) {
            try bus.register(RecordingDevice(), base: 0x2000, length: 0x1001, name: "mid")
        }
        #expect(throws: BusError.overlap(name: "mid", base: 0x10FF, length: 0x10, existing: "low")) {
            try bus.register(RecordingDevice(), base: 0x10FF, length: 0x10, name: "mid")
        }
        // Exactly filling the hole is fine.
        try bus.register(RecordingDevice(), base: 0x1100, length: 0x1F00, name: "mid")
        #expect(bus.entries.map(\.name) == ["low", "mid", "high"])
        #expect(bus.entry(containing: 0x10FF)?.name == "low")
        #expect(bus.entry(containing: 0x1100)?.name == "mid")
        #expect(bus.entry(containing: 0x2FFF)?.name == "mid")
        #expect(bus.entry(containing: 0x3000)?.name == "high")
    }

    @Test("adjacent ranges on either side are accepted")
    func adjacentAccepted() throws {
        var bus = Bus()
        try bus.register(RecordingDevice(), base: 0x1000, length: 0x1000, name: "middle")
        try bus.register(RecordingDevice(), base: 0x0F00, length: 0x100, name: "below")
        try bus.register(RecordingDevice(), base: 0x2000, length: 0x10, name: "above")
        #expect(bus.entries.map(\.name) == ["below", "middle", "above"])
        #expect(bus.entry(containing: 0xFFF)?.name == "below")
        #expect(bus.entry(containing: 0x1000)?.name == "middle")
        #expect(bus.entry(containing: 0x1FFF)?.name == "middle")
        #expect(bus.entry(containing: 0x2000)?.name == "above")
        #expect(bus.entry(containing: 0x2010) == nil)
    }

    @Test("a zero-length range is refused")
    func zeroLength() {
        var bus = Bus()
        #expect(throws: BusError.emptyRange(name: "nothing")) {
            try bus.register(RecordingDevice(), base: 0x10, length: 0, name: "nothing")
        }
        #expect(bus.entries.isEmpty)
    }

    @Test("ranges that wrap past UInt64.max are refused; ranges ending at it are accepted")
    func wrapAround() throws {
        var bus = Bus()
        #expect(throws: BusError.wrapsAround(name: "wrap", base: .max, length: 2)) {
            try bus.register(RecordingDevice(), base: .max, length: 2, name: "wrap")
        }
        #expect(throws: BusError.wrapsAround(name: "wrap", base: 2, length: .max)) {
            try bus.register(RecordingDevice(), base: 2, length: .max, name: "wrap")
        }
        #expect(throws: BusError.wrapsAround(name: "wrap", base: .max - 0xF, length: 0x11)) {
            try bus.register(RecordingDevice(), base: .max - 0xF, length: 0x11, name: "wrap")
        }
        #expect(bus.entries.isEmpty)

        try bus.register(RecordingDevice(), base: .max - 0xF, length: 0x10, name: "top")
        #expect(bus.entry(containing: .max)?.name == "top")
        #expect(bus.entry(containing: .max - 0xF)?.name == "top")
        #expect(bus.entry(containing: .max - 0x10) == nil)
        // The whole space but address 0.
        var full = Bus()
        try full.register(RecordingDevice(), base: 1, length: .max, name: "all")
        #expect(full.entry(containing: 0) == nil)
        #expect(full.entry(containing: 1)?.name == "all")
        #expect(full.entry(containing: .max)?.name == "all")
    }

    @Test("many ranges registered out of order all route correctly")
    func manyRangesOutOfOrder() throws {
        var bus = Bus()
        let count = 97  // prime, so i * 41 % count visits every index in a scrambled order
        var devices: [Int: RecordingDevice] = [:]
        for step in 0..<count {
            let i = (step * 41) % count
            let device = RecordingDevice(tag: UInt8(i))
            devices[i] = device
            // Ranges of varying length with gaps between them: [i * 0x100, i * 0x100 + 1 + i).
            try bus.register(device, base: UInt64(i) * 0x100, length: UInt64(1 + i), name: "dev\(i)")
        }
        #expect(bus.entries.count == count)
        #expect(bus.entries.map(\.base) == (0..<count).map { UInt64($0) * 0x100 })
        for i in 0..<count {
            let base = UInt64(i) * 0x100
            let last = base + UInt64(i)
            #expect(bus.entry(containing: base)?.name == "dev\(i)")
            #expect(bus.entry(containing: last)?.name == "dev\(i)")
            #expect(bus.entry(containing: last + 1) == nil)
            let (claimed, bytes) = busRead(bus, last, count: 2)
            #expect(claimed)
            #expect(bytes == [UInt8(i), UInt8(i)])
        }
        #expect(bus.entry(containing: UInt64(count) * 0x100) == nil)
        #expect(bus.entry(containing: .max) == nil)
        // Every read went to the device that owns the range, at its own last offset.
        for i in 0..<count {
            #expect(devices[i]?.accesses == [.init(isWrite: false, offset: UInt64(i), bytes: [UInt8(i), UInt8(i)])])
        }
    }

    @Test("unclaimed reads return all-ones bytes and report false", arguments: [1, 2, 4, 8])
    func unclaimedRead(size: Int) throws {
        var bus = Bus()
        let device = RecordingDevice()
        try bus.register(device, base: 0x60, length: 1, name: "kbd")
        let (claimed, bytes) = busRead(bus, 0x61, count: size)
        #expect(claimed == false)
        #expect(bytes == [UInt8](repeating: 0xFF, count: size))
        #expect(device.accesses.isEmpty)

        let (claimedByDevice, deviceBytes) = busRead(bus, 0x60, count: size)
        #expect(claimedByDevice)
        #expect(deviceBytes == [UInt8](repeating: 0x5A, count: size))
    }

    @Test("unclaimed writes are dropped and report false")
    func unclaimedWrite() throws {
        var bus = Bus()
        let device = RecordingDevice()
        try bus.register(device, base: 0x60, length: 1, name: "kbd")
        #expect(busWrite(bus, 0x5F, [1]) == false)
        #expect(busWrite(bus, 0x61, [1, 2]) == false)
        #expect(busWrite(Bus(), 0, [1]) == false)
        #expect(device.accesses.isEmpty)
        #expect(busWrite(bus, 0x60, [7]))
        #expect(device.accesses == [.init(isWrite: true, offset: 0, bytes: [7])])
    }

    @Test("a device sees offsets relative to its base and the exact bytes")
    func relativeOffsets() throws {
        var bus = Bus()
        let serial = RecordingDevice(tag: 0x11)
        let mmio = RecordingDevice(tag: 0x22)
        try bus.register(serial, base: 0x3F8, length: 8, name: "com1")
        try bus.register(mmio, base: 0xC000_0000, length: 0x1000, name: "test")
        #expect(busWrite(bus, 0x3FD, [0x41]))
        #expect(busWrite(bus, 0xC000_0010, [1, 2, 3, 4]))
        #expect(busRead(bus, 0x3F8, count: 1) == (true, [0x11]))
        #expect(busRead(bus, 0xC000_0FF8, count: 8) == (true, [UInt8](repeating: 0x22, count: 8)))
        #expect(
            serial.accesses == [
                .init(isWrite: true, offset: 5, bytes: [0x41]),
                .init(isWrite: false, offset: 0, bytes: [0x11]),
            ])
        #expect(
            mmio.accesses == [
                .init(isWrite: true, offset: 0x10, bytes: [1, 2, 3, 4]),
                .init(isWrite: false, offset: 0xFF8, bytes: [UInt8](repeating: 0x22, count: 8)),
            ])
    }

    @Test("little-endian helpers round-trip", arguments: [1, 2, 4, 8])
    func littleEndianRoundTrip(size: Int) {
        let value: UInt64 = 0x8877_6655_4433_2211
        var bytes = [UInt8](repeating: 0xEE, count: size)
        bytes.withUnsafeMutableBytes { $0.storeLittleEndian(value) }
        #expect(bytes == Array([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88].prefix(size)))
        let mask: UInt64 = size == 8 ? .max : (1 << (8 * UInt64(size))) - 1
        #expect(bytes.withUnsafeBytes { $0.littleEndianValue } == value & mask)

        let other: UInt64 = 0x0102_0304_0506_0708 & mask
        bytes.withUnsafeMutableBytes { $0.storeLittleEndian(other) }
        #expect(bytes.withUnsafeBytes { $0.littleEndianValue } == other)
    }

    @Test("little-endian helpers ignore bytes past the eighth and handle odd sizes")
    func littleEndianEdges() {
        let nine: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0x80, 0xFF]
        #expect(nine.withUnsafeBytes { $0.littleEndianValue } == 0x8000_0000_0000_0001)
        #expect([UInt8]().withUnsafeBytes { $0.littleEndianValue } == 0)
        var three: [UInt8] = [0, 0, 0]
        three.withUnsafeMutableBytes { $0.storeLittleEndian(0xAABB_CCDD) }
        #expect(three == [0xDD, 0xCC, 0xBB])
        var ten = [UInt8](repeating: 0x77, count: 10)
        ten.withUnsafeMutableBytes { $0.storeLittleEndian(0x0807_0605_0403_0201) }
        #expect(ten == [1, 2, 3, 4, 5, 6, 7, 8, 0x77, 0x77])
    }

    @Test("bus errors describe the device and its range on one line")
    func errorDescriptions() {
        let errors: [BusError] = [
            .emptyRange(name: "uart"),
            .wrapsAround(name: "uart", base: 0xFFFF_FFFF_FFFF_FFF0, length: 0x20),
            .overlap(name: "uart", base: 0x3F8, length: 8, existing: "kbd"),
        ]
        for error in errors {
            #expect(error.description.contains("uart"))
            #expect(!error.description.contains("\n"))
        }
        #expect(errors[1].description.contains("0xfffffffffffffff0"))
        #expect(errors[2].description.contains("0x3f8"))
        #expect(errors[2].description.contains("kbd"))
    }
    @Test("a bus keeps its devices alive as long as any copy of it lives, and releases them after")
    func deviceLifetime() throws {
        weak var watched: RecordingDevice?
        var copy: Bus
        do {
            var bus = Bus()
            let device = RecordingDevice(tag: 0x11)
            watched = device
            try bus.register(device, base: 0x60, length: 4, name: "kept")
            copy = bus
        }
        // Only the copy holds the device now; accesses reach it through the unretained route.
        #expect(watched != nil)
        #expect(busWrite(copy, 0x62, [0xAB]))
        #expect(busRead(copy, 0x63) == (true, [0x11]))
        #expect(
            watched?.accesses == [
                RecordingDevice.Access(isWrite: true, offset: 2, bytes: [0xAB]),
                RecordingDevice.Access(isWrite: false, offset: 3, bytes: [0x11]),
            ])
        // A registration on a copy leaves the original's routes as they were.
        var grown = copy
        try grown.register(RecordingDevice(tag: 0x22), base: 0x10, length: 4, name: "new")
        #expect(busRead(grown, 0x10) == (true, [0x22]))
        #expect(busRead(grown, 0x60) == (true, [0x11]))
        #expect(busRead(copy, 0x10) == (false, [0xFF]))
        copy = Bus()
        grown = Bus()
        #expect(watched == nil, "the device outlived every bus that held it")
    }
}
