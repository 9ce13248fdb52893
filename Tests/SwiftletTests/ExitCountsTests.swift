import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// The per-vCPU exit counters with made-up exits: which reason each exit counts as, that vCPUs'
/// counters are separate cache lines, and the line `--report-exits` prints.
@Suite("Exit counters")
struct ExitCountsTests {
    /// One exit of every kind `VCPUExit` has, with the reason it counts as.
    static func everyExit(_ data: UnsafeMutableRawPointer) -> [(VCPUExit, WritableKeyPath<ExitCounts, UInt64>)] {
        let bytes = UnsafeMutableRawBufferPointer(start: data, count: 4)
        return [
            (.portIO(PortIOExit(port: 0x3F8, isWrite: false, size: 1, count: 1, data: data)), \.portIn),
            (.portIO(PortIOExit(port: 0x3F8, isWrite: true, size: 1, count: 4, data: data)), \.portOut),
            (.mmio(MMIOExit(address: 0xC000_0000, isWrite: false, data: bytes)), \.mmioRead),
            (.mmio(MMIOExit(address: 0xC000_0000, isWrite: true, data: bytes)), \.mmioWrite),
            (.halt, \.halt),
            (.shutdown, \.shutdown),
            (.interrupted, \.interrupted),
            (.internalError(suberror: 1), \.internalError),
            (.systemEvent(type: 1), \.other),
            (.failEntry(reason: 7), \.other),
            (.unhandled(reason: 99), \.other),
        ]
    }

    @Test("each exit counts once, under its own reason, on its own vCPU")
    func reasons() {
        let counters = ExitCounters(count: 2)
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { data.deallocate() }
        var expected = ExitCounts()
        for (exit, reason) in Self.everyExit(data) {
            counters.slot(1).record(exit)
            expected[keyPath: reason] += 1
            #expect(counters.counts(of: 1) == expected)
        }
        #expect(expected.other == 3)
        #expect(expected.total == 11)
        #expect(counters.counts(of: 0) == ExitCounts(), "vCPU 0 made no exits")
        #expect(counters.all == [ExitCounts(), expected])
    }

    @Test("counts keep growing past 2^32 on the 64-bit counters")
    func wideCounters() {
        let counters = ExitCounters(count: 1)
        let slot = counters.slot(0)
        slot.line.pointee.portOut.store(UInt64(UInt32.max), ordering: .relaxed)
        slot.record(.portIO(PortIOExit(port: 0x80, isWrite: true, size: 1, count: 1, data: slot.line)))
        #expect(counters.counts(of: 0).portOut == UInt64(UInt32.max) + 1)
    }

    @Test("every vCPU's counters fill one cache line of their own")
    func oneLineEach() {
        #expect(MemoryLayout<ExitCounters.Line>.size <= ExitCounters.lineSize)
        let counters = ExitCounters(count: 4)
        let addresses = (0..<4).map { UInt(bitPattern: counters.slot($0).line) }
        #expect(addresses.allSatisfy { $0 % UInt(ExitCounters.lineSize) == 0 })
        #expect(zip(addresses, addresses.dropFirst()).allSatisfy { $1 - $0 == UInt(ExitCounters.lineSize) })
    }

    @Test("the one-line description names every reason")
    func description() {
        var counts = ExitCounts()
        counts.portIn = 1
        counts.portOut = 2
        counts.mmioRead = 3
        counts.mmioWrite = 4
        counts.halt = 5
        counts.shutdown = 6
        counts.interrupted = 7
        counts.internalError = 8
        counts.other = 9
        #expect(
            counts.description
                == "pio-in 1, pio-out 2, mmio-read 3, mmio-write 4, hlt 5, shutdown 6, interrupted 7, internal-error 8, other 9")
        #expect(counts.total == 45)
    }
}
