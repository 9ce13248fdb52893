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

    private let state: Mutex<State>
    private let startNanoseconds: UInt64
    private let markHandler = Mutex<(@Sendable () -> Void)?>(nil)

    /// Calls `handler` (on the vCPU thread, right after recording) when the guest's first mark
    /// arrives; it should only signal someone.
    public func onMark(_ handler: @escaping @Sendable () -> Void) { markHandler.withLock { $0 = handler } }

    /// A timer measuring from `startNanoseconds` (CLOCK_MONOTONIC), in `state` (nothing recorded
    /// unless restoring).
    public init(startNanoseconds: UInt64 = ProcessClock.startNanoseconds, state: State = State()) {
        self.startNanoseconds = startNanoseconds
        self.state = Mutex(state)
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
        let first = state.withLock { state -> Bool in
            guard state.bootNanoseconds == nil else { return false }
            state.bootNanoseconds = now &- startNanoseconds
            return true
        }
        if first, let handler = markHandler.withLock({ $0 }) { handler() }
    }
}

extension BootTimer: PersistentDevice {
    /// What a timer is attached to: the moment it measures from.
    public struct Resources: Sendable {
        /// CLOCK_MONOTONIC in nanoseconds at the reference point (`ProcessClock.startNanoseconds`).
        public var startNanoseconds: UInt64

        /// Resources measuring from `startNanoseconds`.
        public init(startNanoseconds: UInt64 = ProcessClock.startNanoseconds) {
            self.startNanoseconds = startNanoseconds
        }
    }

    /// The recorded boot time, if any.
    public func saveState() -> State { state.withLock { $0 } }

    /// A timer in `state`. A recorded boot time is kept as it was measured (by the process that
    /// saved it); any value is valid, so this never throws.
    public static func restore(from state: State, with resources: Resources) throws(DeviceRestoreError) -> BootTimer {
        BootTimer(startNanoseconds: resources.startNanoseconds, state: state)
    }
}
