import SwiftletHost
import SwiftletMemory
import Synchronization

/// A device whose state can be saved as a plain value and rebuilt from it: the contract a
/// snapshot (saving every device of a paused machine, and a machine built again from them)
/// relies on.
///
/// The idea is Firecracker's `Persist`: what a device *is* splits into its `State`, a value of
/// plain fields (registers, FIFOs, ring positions, counters: no references, no descriptors) that
/// can be encoded anywhere and compared, and its `Resources`, the host side it is attached to
/// (guest memory, an interrupt line, an output sink, a disk image, a tap, eventfds), which the
/// restoring machine opens itself and hands in. Nothing host-specific is ever saved.
///
/// `saveState()` takes the device's locks, so it sees the device between two accesses; for a
/// state that the guest's view agrees with, save while the vCPUs and the event loop are paused.
/// `restore(from:with:)` checks every field before building anything: a saved state may be
/// corrupt, come from another version, or not fit the new resources (a smaller disk, a tap with
/// fewer offloads, a ring outside the new guest memory). It throws a `DeviceRestoreError` naming
/// the field and what is wrong with it, and never traps. A restored device behaves exactly as the
/// saved one would have from that point on.
public protocol PersistentDevice {
    /// Everything the device needs to carry on, as plain values.
    associatedtype State: Codable & Equatable & Sendable
    /// The host resources the device is attached to (its constructor arguments). Sendable, as
    /// devices are used from vCPU threads and the event loop.
    associatedtype Resources: Sendable

    /// A copy of the device's state now.
    func saveState() -> State
    /// A device in `state`, attached to `resources`; throws when a field of `state` is invalid or
    /// does not fit `resources`.
    static func restore(from state: State, with resources: Resources) throws(DeviceRestoreError) -> Self
}

/// A saved device state that cannot be restored: which device, which field, and what is wrong.
public struct DeviceRestoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The device kind, for messages: "8250 UART", "i8042", "virtio-mmio", "virtio-blk"...
    public var device: String
    /// The path of the bad field within the device's `State`, as in Swift:
    /// `registers.queues[1].size`, `receivedBytes`, `settings.capacity`.
    public var field: String
    /// What is wrong with it.
    public var problem: Problem

    /// What is wrong with a field.
    public enum Problem: Equatable, Sendable, CustomStringConvertible {
        /// The value is larger than the largest the device allows.
        case tooLarge(UInt64, maximum: UInt64)
        /// The value is smaller than the smallest the device allows.
        case tooSmall(UInt64, minimum: UInt64)
        /// A counter is negative.
        case negative(Int)
        /// The value must be a power of two (a queue size, a block size) and is not.
        case notPowerOfTwo(UInt64)
        /// The value has bits set outside `allowed` (bits the register does not have, or that the
        /// device never sets).
        case undefinedBits(UInt64, allowed: UInt64)
        /// A guest address is not a multiple of `alignment`.
        case misaligned(address: UInt64, alignment: UInt64)
        /// An area of `length` bytes at `address` does not lie wholly in the guest memory given.
        case outsideGuestMemory(address: UInt64, length: UInt64)
        /// A buffer holds `count` elements, more than its `capacity`.
        case tooLong(count: Int, capacity: Int)
        /// A list has `count` entries where the device has `expected` (one per queue, say).
        case wrongCount(Int, expected: Int)
        /// The saved value differs from what the device being restored has (`current`): the state
        /// belongs to another kind of device, or the resources changed (a disk of another size).
        case mismatch(saved: UInt64, current: UInt64)
        /// The value contradicts another field, or a rule of the device; the text says which.
        case inconsistent(String)

        /// The problem as the end of a sentence that starts with the field's name.
        public var description: String {
            switch self {
            case .tooLarge(let value, let maximum): "is \(value), more than the largest allowed, \(maximum)"
            case .tooSmall(let value, let minimum): "is \(value), less than the smallest allowed, \(minimum)"
            case .negative(let value): "is \(value), a negative count"
            case .notPowerOfTwo(let value): "is \(value), not a power of two"
            case .undefinedBits(let value, let allowed):
                "is \(hex(value)), with bits \(hex(value & ~allowed)) outside the defined \(hex(allowed))"
            case .misaligned(let address, let alignment): "is \(hex(address)), not aligned to \(alignment) bytes"
            case .outsideGuestMemory(let address, let length):
                "puts \(length) bytes at \(hex(address)), outside guest memory"
            case .tooLong(let count, let capacity): "holds \(count) entries, more than its capacity of \(capacity)"
            case .wrongCount(let count, let expected): "has \(count) entries, where the device has \(expected)"
            case .mismatch(let saved, let current): "is \(saved) in the saved state but \(current) in the device restored"
            case .inconsistent(let reason): "is inconsistent: \(reason)"
            }
        }
    }

    /// A problem with `field` of `device`'s state.
    public init(device: String, field: String, problem: Problem) {
        self.device = device
        self.field = field
        self.problem = problem
    }

    /// A one-line explanation: `cannot restore the virtio-mmio state: registers.queues[0].size is
    /// 3, not a power of two`.
    public var description: String { "cannot restore the \(device) state: \(field) \(problem)" }

    /// The same problem, with `prefix` and a dot put before the field's path (a part's state
    /// inside a larger state).
    func nested(in prefix: String) -> DeviceRestoreError {
        DeviceRestoreError(device: device, field: "\(prefix).\(field)", problem: problem)
    }
}

/// Checks for the fields of a saved state, each throwing a `DeviceRestoreError` for `device`.
struct StateValidator {
    /// The device kind named in the errors.
    let device: String

    /// An error for `field`.
    func error(_ field: String, _ problem: DeviceRestoreError.Problem) -> DeviceRestoreError {
        DeviceRestoreError(device: device, field: field, problem: problem)
    }

    /// `value` has no bits outside `allowed`.
    func bits<T: FixedWidthInteger & UnsignedInteger>(_ value: T, allowed: T, _ field: String) throws(DeviceRestoreError) {
        guard value & ~allowed == 0 else { throw error(field, .undefinedBits(UInt64(value), allowed: UInt64(allowed))) }
    }

    /// `value` is at most `maximum`.
    func atMost<T: FixedWidthInteger & UnsignedInteger>(_ value: T, _ maximum: T, _ field: String) throws(DeviceRestoreError) {
        guard value <= maximum else { throw error(field, .tooLarge(UInt64(value), maximum: UInt64(maximum))) }
    }

    /// `value` is at least `minimum`.
    func atLeast<T: FixedWidthInteger & UnsignedInteger>(_ value: T, _ minimum: T, _ field: String) throws(DeviceRestoreError) {
        guard value >= minimum else { throw error(field, .tooSmall(UInt64(value), minimum: UInt64(minimum))) }
    }

    /// `value` is a power of two (so not 0).
    func powerOfTwo<T: FixedWidthInteger & UnsignedInteger>(_ value: T, _ field: String) throws(DeviceRestoreError) {
        guard value != 0, value & (value - 1) == 0 else { throw error(field, .notPowerOfTwo(UInt64(value))) }
    }

    /// Every counter is zero or more; `counters` pairs each field name with its value.
    func nonNegative(_ counters: KeyValuePairs<String, Int>, in prefix: String) throws(DeviceRestoreError) {
        for (name, value) in counters where value < 0 { throw error("\(prefix).\(name)", .negative(value)) }
    }

    /// `saved` equals what the device being restored has.
    func matches<T: FixedWidthInteger & UnsignedInteger>(_ saved: T, _ current: T, _ field: String) throws(DeviceRestoreError) {
        guard saved == current else { throw error(field, .mismatch(saved: UInt64(saved), current: UInt64(current))) }
    }

    /// `condition` holds; otherwise `field` is inconsistent for `reason`.
    func require(_ condition: Bool, _ field: String, _ reason: @autoclosure () -> String) throws(DeviceRestoreError) {
        guard condition else { throw error(field, .inconsistent(reason())) }
    }
}
