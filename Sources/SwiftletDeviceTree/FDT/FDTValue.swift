import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// A phandle: the 32-bit number by which one node refers to another (`interrupt-parent`,
/// `clocks`...). Zero and 0xFFFF_FFFF are not valid phandles.
package struct FDTPhandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The phandle number, stored as one big-endian cell in `phandle` properties and references.
    package let rawValue: UInt32
    /// Wraps `rawValue` as is; it is not checked against the invalid values 0 and 0xFFFF_FFFF.
    package init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The phandle as a cell in device-tree source, e.g. `<1>`.
    package var description: String { "<\(rawValue)>" }
}

/// The value of a device-tree property, in the encodings of the Devicetree Specification
/// (section 2.2.4): every number big-endian, strings NUL-terminated.
package enum FDTValue: Equatable, Sendable {
    /// No value: a boolean property that is true by being present (`interrupt-controller`).
    case empty
    /// One 32-bit cell.
    case u32(UInt32)
    /// One 64-bit number (two cells, high first).
    case u64(UInt64)
    /// A `<...>` array of 32-bit cells (`reg`, `interrupts`).
    case cells([UInt32])
    /// One string.
    case string(String)
    /// A string list (`compatible = "a", "b"`): each string NUL-terminated, back to back.
    case strings([String])
    /// Bytes as they are (`[00 11 22]`).
    case bytes([UInt8])
    /// A reference to another node (one cell).
    case phandle(FDTPhandle)

    /// A cell array of 64-bit numbers, each split into two cells (high, low): addresses and
    /// sizes when `#address-cells` and `#size-cells` are 2.
    package static func cells(splitting values: [UInt64]) -> FDTValue {
        .cells(values.flatMap { [UInt32(truncatingIfNeeded: $0 >> 32), UInt32(truncatingIfNeeded: $0)] })
    }

    /// The property's bytes as they appear in the blob.
    package var encoded: [UInt8] {
        switch self {
        case .empty: []
        case .u32(let value): bigEndianBytes(value)
        case .u64(let value): bigEndianBytes(value)
        case .cells(let values): values.flatMap(bigEndianBytes)
        case .string(let text): Array(text.utf8) + [0]
        case .strings(let texts): texts.flatMap { Array($0.utf8) + [0] }
        case .bytes(let bytes): bytes
        case .phandle(let phandle): bigEndianBytes(phandle.rawValue)
        }
    }

    /// Whether a string in the value contains a NUL, which would cut it short in the blob.
    var hasEmbeddedNUL: Bool {
        switch self {
        case .string(let text): text.utf8.contains(0)
        case .strings(let texts): texts.contains { $0.utf8.contains(0) }
        default: false
        }
    }
}

func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
}
