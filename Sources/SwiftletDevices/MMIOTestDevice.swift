import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

/// A small MMIO device for tiny test guests (and for measuring MMIO exit cost).
///
/// Registers (32-bit, offsets from the device base, `X86Layout.mmioTestDeviceAddress`):
/// - 0x00 ID, read-only: 0x53574C54 ("TLWS" in memory order, "SWLT" as a number).
/// - 0x08 scratch, read/write: reads return the last value written (initially 0).
/// - 0x10 write count, read-only: how many writes the device has received.
/// Other offsets read as zero; writes anywhere are counted, only 0x08 is stored.
public final class MMIOTestDevice: BusDevice {
    /// The ID register's value (offset 0x00): 0x53574C54, "SWLT" as a number.
    public static let identifier: UInt32 = 0x5357_4C54

    /// The device state as a plain value (snapshot-ready).
    public struct State: Equatable, Codable, Sendable {
        /// The scratch register (offset 0x08): the last value written there.
        public var scratch: UInt32 = 0
        /// The write-count register (offset 0x10): writes received at any offset, wrapping at 2^32.
        public var writeCount: UInt32 = 0
        /// The reset state: scratch 0, no writes counted.
        public init() {}
    }

    private let state = Mutex(State())

    /// A device in its reset state.
    public init() {}

    /// A copy of the current state.
    public var snapshot: State { state.withLock { $0 } }

    /// Reads the 32-bit register at `offset` (ID, scratch or write count; 0 elsewhere) into `data`,
    /// little-endian and cut or zero-extended to the access width.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let value: UInt32 = state.withLock { state in
            switch offset {
            case 0x00: MMIOTestDevice.identifier
            case 0x08: state.scratch
            case 0x10: state.writeCount
            default: 0
            }
        }
        data.storeLittleEndian(UInt64(value))
    }

    /// Counts the write; at offset 0x08 it also keeps the low 32 bits of `data` as scratch.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let value = UInt32(truncatingIfNeeded: data.littleEndianValue)
        state.withLock { state in
            state.writeCount &+= 1
            if offset == 0x08 { state.scratch = value }
        }
    }
}
