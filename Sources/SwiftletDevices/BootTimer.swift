import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

/// The boot-timer device: the guest writes `BootTimer.magic` to the boot-timer port
/// (`X86Layout.bootTimerPort`) when its workload is ready, and Swiftlet records how long it
/// has been since the VMM process started (`ProcessClock`). The first such write counts.
public final class BootTimer: BusDevice {
    /// The value the guest writes (one byte) to mark "booted".
    public static let magic: UInt8 = 123

    /// Plain-value state (snapshot-ready): nanoseconds from process start, once recorded.
    public struct State: Equatable, Codable, Sendable {
        /// Nanoseconds from process start to the guest's first `magic` write; nil until then.
        public var bootNanoseconds: UInt64?
        /// The state before the guest's mark: nothing recorded.
        public init() {}
    }

    private let state = Mutex(State())
    private let startNanoseconds: UInt64

    /// A timer measuring from `startNanoseconds` (CLOCK_MONOTONIC).
    public init(startNanoseconds: UInt64 = ProcessClock.startNanoseconds) {
        self.startNanoseconds = startNanoseconds
    }

    /// Nanoseconds from process start to the guest's mark, if the guest has written it.
    public var bootNanoseconds: UInt64? { state.withLock { $0.bootNanoseconds } }

    /// Reads of the boot-timer port return zeros.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// Records the boot time on the first write of `magic` to offset 0; any other write is ignored.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count >= 1, data[0] == BootTimer.magic else { return }
        let now = monotonicNanoseconds()
        state.withLock { state in
            if state.bootNanoseconds == nil { state.bootNanoseconds = now &- startNanoseconds }
        }
    }
}
