import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

/// The exit-status device: the guest's init writes its command's exit status (one byte, 0-255)
/// to `X86Layout.exitStatusPort` before it powers the VM off, and the machine's end becomes
/// `GuestExit.commandExited(status:)` instead of a plain reset or power-off.
///
/// This carries the status from guest to host without parsing console text. The last write
/// counts; a guest that never writes keeps the ordinary ending. Swiftlet's init
/// (`Guests/initramfs/init.c`) writes `WEXITSTATUS` for a command that exited and 128 + N for
/// one killed by signal N, as a shell reports them.
public final class ExitStatusPort: BusDevice {
    /// Plain-value state (snapshot-ready): the status the guest reported, if any.
    public struct State: Equatable, Codable, Sendable {
        /// The last byte the guest wrote to offset 0; nil until it writes.
        public var reportedStatus: UInt8?
        /// Nothing reported.
        public init() {}
    }

    private let state: Mutex<State>

    /// A device in `state` (nothing reported unless restoring).
    public init(state: State = State()) {
        self.state = Mutex(state)
    }

    /// The status the guest reported, or nil if it has not written one.
    public var reportedStatus: UInt8? { state.withLock { $0.reportedStatus } }

    /// The device's state, for saving.
    public var currentState: State { state.withLock { $0 } }

    /// Reads return zeros (the port is write-only).
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// A write to offset 0 records its low byte as the status (a wider access counts its first
    /// byte); writes elsewhere are ignored.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count >= 1 else { return }
        let status = data[0]
        state.withLock { $0.reportedStatus = status }
    }
}

extension ExitStatusPort: PersistentDevice {
    /// Nothing on the host side: the status is read by the machine.
    public typealias Resources = Void

    /// The reported status, if any.
    public func saveState() -> State { currentState }

    /// A port in `state`; every byte is a valid status, so this never throws.
    public static func restore(from state: State, with resources: Void) throws(DeviceRestoreError) -> ExitStatusPort {
        ExitStatusPort(state: state)
    }
}
