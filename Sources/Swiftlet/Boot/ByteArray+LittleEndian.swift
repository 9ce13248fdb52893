import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Little-endian access to byte arrays, shared by the loaders (ELF, setup header) and the
/// x86 boot structures (zero page, MP table). Callers check the bounds.
extension Array where Element == UInt8 {
    /// Little-endian integers at byte offset `i` (the caller checked the bounds).
    func le16(_ i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    func le32(_ i: Int) -> UInt32 { UInt32(le16(i)) | UInt32(le16(i + 2)) << 16 }
    func le64(_ i: Int) -> UInt64 { UInt64(le32(i)) | UInt64(le32(i + 4)) << 32 }

    mutating func replace(at offset: Int, with bytes: [UInt8]) {
        for (i, byte) in bytes.enumerated() { self[offset + i] = byte }
    }

    mutating func replace<T: FixedWidthInteger>(at offset: Int, with value: T) {
        for i in 0..<(T.bitWidth / 8) { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }
}
