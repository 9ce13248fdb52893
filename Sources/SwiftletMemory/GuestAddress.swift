import SwiftletHost

/// A guest physical address. A distinct type so it is never confused with a host pointer or
/// an offset.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The guest physical address as a number.
    public let rawValue: UInt64

    /// The address `rawValue` (any 64-bit value; never fails).
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The address `rawValue`, without the label: `GuestAddress(0x10_0000)`.
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    /// `self + offset`, or nil if it would pass the end of the 64-bit address space.
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : GuestAddress(sum)
    }

    /// Orders addresses numerically.
    public static func < (lhs: GuestAddress, rhs: GuestAddress) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The address in lowercase hex with a `0x` prefix, e.g. `0x100000`.
    public var description: String { "0x" + String(rawValue, radix: 16) }
}
