import CHost
import SwiftletHost
import SwiftletMemory

/// A device on a bus. It sees offsets from the start of its own range and never its bus address.
///
/// `read` fills `data` (1, 2, 4 or 8 bytes, little-endian); `write` receives the bytes the guest
/// stored. Both are called on vCPU threads, possibly several at once, so a device guards its own
/// state; neither may block, allocate per call, or do file or network I/O.
public protocol BusDevice: AnyObject, Sendable {
    /// Fills `data` (`data.count` bytes, little-endian) with the value at `offset` in the range.
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    /// Takes the guest's store of `data` (1 to 8 bytes, little-endian) at `offset` in the range.
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// A registration that cannot be accepted.
public enum BusError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The device was registered with length 0.
    case emptyRange(name: String)
    /// `base + length` passes the end of the 64-bit address space.
    case wrapsAround(name: String, base: UInt64, length: UInt64)
    /// The range overlaps the one already registered for the device named `existing`.
    case overlap(name: String, base: UInt64, length: UInt64, existing: String)

    /// A one-line explanation naming the device, with its range in hex.
    public var description: String {
        switch self {
        case .emptyRange(let name): "device \(name) has an empty bus range"
        case .wrapsAround(let name, let base, let length):
            "device \(name) at 0x\(String(base, radix: 16)) with length 0x\(String(length, radix: 16)) wraps around the address space"
        case .overlap(let name, let base, let length, let existing):
            "device \(name) at 0x\(String(base, radix: 16))+0x\(String(length, radix: 16)) overlaps device \(existing)"
        }
    }
}

/// An address space (port I/O or MMIO) that routes an access to the device whose range holds it.
///
/// Ranges are registered while the machine is built; overlapping ranges are rejected. Lookup is
/// a binary search over the sorted ranges: O(log n), no allocation, no lock, and no reference
/// counting (see `Route`). Once the machine starts, the bus is a value shared read-only by every
/// vCPU thread.
public struct Bus: Sendable {
    /// One registered device and the address range `[base, base + length)` it claims.
    public struct Entry: Sendable {
        /// First bus address of the range (a port number or a guest physical address).
        public let base: UInt64
        /// Size of the range (bytes of MMIO space, or number of ports), at least 1.
        public let length: UInt64
        /// The device's name, for error messages and diagnostics.
        public let name: String
        /// Holds the device; the entry's strong reference keeps it (and its route's target) alive.
        let target: RouteTarget
        /// The device that receives accesses in the range, at offsets from `base`.
        public var device: any BusDevice { target.device }
        var last: UInt64 { base + (length - 1) }
    }

    /// What an access looks up: a range and an unretained reference to its device, all trivial
    /// values, so copying one out of `routes` retains nothing (copying an `Entry` would retain
    /// its name's storage and its device, atomically, on memory every vCPU shares).
    ///
    /// `routes[i]` is `entries[i]` without the name: both arrays are stored properties of the
    /// same value and change only together (`register`), so every copy of a bus that holds a
    /// route also holds the entry whose strong reference keeps the route's target alive.
    struct Route: @unchecked Sendable {
        let base: UInt64
        let last: UInt64
        let target: Unmanaged<RouteTarget>
    }

    /// Registered ranges, sorted by base address.
    public private(set) var entries: [Entry] = []
    /// The same ranges as `entries`, in the same order, for the lookup on every access.
    private var routes: [Route] = []

    /// An empty bus: every read returns all ones and every write is dropped.
    public init() {}

    /// Adds `device` at `[base, base + length)`.
    public mutating func register(_ device: any BusDevice, base: UInt64, length: UInt64, name: String) throws(BusError) {
        guard length > 0 else { throw .emptyRange(name: name) }
        guard base.addingReportingOverflow(length - 1).overflow == false else {
            throw .wrapsAround(name: name, base: base, length: length)
        }
        let entry = Entry(base: base, length: length, name: name, target: RouteTarget(device))
        let index = entries.firstIndex { $0.base > base } ?? entries.count
        if index > 0, entries[index - 1].last >= base {
            throw .overlap(name: name, base: base, length: length, existing: entries[index - 1].name)
        }
        if index < entries.count, entries[index].base <= entry.last {
            throw .overlap(name: name, base: base, length: length, existing: entries[index].name)
        }
        entries.insert(entry, at: index)
        routes.insert(Route(base: base, last: entry.last, target: .passUnretained(entry.target)), at: index)
    }

    /// The index in `entries` (and `routes`) of the range that contains `address`, found by
    /// binary search over `routes`.
    @inline(__always)
    func index(containing address: UInt64) -> Int? {
        var low = 0
        var high = routes.count
        while low < high {
            let mid = (low + high) / 2
            if routes[mid].base <= address { low = mid + 1 } else { high = mid }
        }
        guard low > 0, address <= routes[low - 1].last else { return nil }
        return low - 1
    }

    /// The entry whose range contains `address` (for diagnostics: the access path uses `routes`).
    public func entry(containing address: UInt64) -> Entry? {
        index(containing: address).map { entries[$0] }
    }

    /// Routes a read. Unclaimed addresses read as all ones (an empty ISA/PCI bus). Returns whether
    /// a device claimed the access.
    @inline(__always) @discardableResult
    public func read(_ address: UInt64, data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let index = index(containing: address) else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return false
        }
        let route = routes[index]
        // A +0 reference: the entry keeps the target alive for as long as this bus value lives.
        route.target._withUnsafeGuaranteedRef { $0.device.read(offset: address - route.base, data: data) }
        return true
    }

    /// Routes a write. Writes to unclaimed addresses are dropped. Returns whether a device
    /// claimed the access.
    @inline(__always) @discardableResult
    public func write(_ address: UInt64, data: UnsafeRawBufferPointer) -> Bool {
        guard let index = index(containing: address) else { return false }
        let route = routes[index]
        // A +0 reference: the entry keeps the target alive for as long as this bus value lives.
        route.target._withUnsafeGuaranteedRef { $0.device.write(offset: address - route.base, data: data) }
        return true
    }
}

/// A registered device, boxed in a final class: an `Unmanaged` reference (a `Bus.Route`) can
/// point at it, where it cannot point at an `any BusDevice`, and calling the device through the
/// box's `let` property borrows it without a retain.
final class RouteTarget: Sendable {
    let device: any BusDevice
    init(_ device: any BusDevice) { self.device = device }
}

/// A level-triggered interrupt input of the guest's interrupt controller, as a device sees it.
/// Devices get one injected, so they are testable without a VM.
public protocol InterruptLine: Sendable {
    /// Drives the line high (`true`) or low (`false`).
    func setLevel(_ high: Bool)
}

/// Little-endian helpers for device registers.
extension UnsafeRawBufferPointer {
    /// The bytes as an unsigned little-endian integer (up to 8 bytes; extra bytes ignored).
    @inline(__always)
    public var littleEndianValue: UInt64 {
        var value: UInt64 = 0
        for i in 0..<Swift.min(count, 8) { value |= UInt64(self[i]) << (8 * UInt64(i)) }
        return value
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores the low `count` bytes of `value`, little-endian.
    @inline(__always)
    public func storeLittleEndian(_ value: UInt64) {
        for i in 0..<Swift.min(count, 8) { self[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}
