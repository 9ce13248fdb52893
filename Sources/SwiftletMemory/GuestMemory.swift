import Glibc
import SwiftletHost

/// An access to guest memory that does not lie inside guest RAM.
public struct GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Guest physical address of the access's first byte.
    public let address: GuestAddress
    /// Size of the access in bytes.
    public let length: UInt64
    /// A message naming the access's size and address.
    public var description: String {
        "guest memory access of \(length) bytes at \(address) is outside guest RAM"
    }
}

/// One contiguous block of guest RAM backed by an anonymous host mapping.
public struct GuestMemoryRegion: Sendable {
    /// Guest physical address of the region's first byte (page-aligned).
    public let start: GuestAddress
    /// Length of the region in bytes (a nonzero multiple of the host page size).
    public let size: UInt64
    /// The host address of `start`. Stored as a bit pattern so the region is Sendable.
    let hostBase: UInt

    /// The host address of `start`, as a pointer.
    package var host: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: hostBase)! }
    /// One past the last byte (fits: regions are validated at creation).
    package var end: UInt64 { start.rawValue + size }
}

/// Guest RAM: anonymous `MAP_NORESERVE` mappings at guest physical addresses, with
/// bounds-checked reads and writes that throw `GuestMemoryError` instead of trapping.
///
/// Guest memory is shared with the guest itself (through KVM memory slots) and with device
/// threads; it offers no synchronisation beyond what the guest/device protocol provides, as on
/// real hardware.
public final class GuestMemory: @unchecked Sendable {
    /// The mapped regions, disjoint and sorted by start address.
    public let regions: [GuestMemoryRegion]

    /// Maps one region per `(start, size)` pair. Regions must be page-aligned and disjoint.
    public convenience init(regions layout: [(start: GuestAddress, size: UInt64)]) throws {
        try self.init(
            mapping: { size, _ in
                mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            }, regions: layout)
    }

    /// Maps each region with `map(size, fileOffset)` (the offset being the sum of the sizes of
    /// the regions below it).
    init(
        mapping map: (UInt64, UInt64) -> UnsafeMutableRawPointer?, regions layout: [(start: GuestAddress, size: UInt64)]
    ) throws {
        var fileOffset: UInt64 = 0
        var mapped: [GuestMemoryRegion] = []
        // On an error, unmap what was already mapped (deinit does not run for a failed init).
        var committed = false
        defer {
            if !committed { for region in mapped { munmap(region.host, Int(region.size)) } }
        }
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        for (start, size) in layout.sorted(by: { $0.start < $1.start }) {
            guard size > 0, size <= UInt64(Int.max), start.rawValue % page == 0, size % page == 0,
                start.adding(size) != nil
            else { throw GuestMemoryLayoutError.misaligned(start: start, size: size) }
            if let last = mapped.last, last.end > start.rawValue {
                throw GuestMemoryLayoutError.overlapping(start: start)
            }
            guard let host = map(size, fileOffset), host != MAP_FAILED else {
                throw SystemError.current("mmap \(size) bytes of guest memory")
            }
            fileOffset += size
            mapped.append(GuestMemoryRegion(start: start, size: size, hostBase: UInt(bitPattern: host)))
        }
        regions = mapped
        committed = true
    }

    deinit {
        for region in regions { munmap(region.host, Int(region.size)) }
    }

    /// Total bytes of guest RAM.
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// The host pointer for `count` bytes at `address`; the whole range must lie in one region.
    public func hostPointer(_ address: GuestAddress, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard count >= 0 else { throw GuestMemoryError(address: address, length: 0) }
        let length = UInt64(count)
        for region in regions where address.rawValue >= region.start.rawValue {
            let offset = address.rawValue - region.start.rawValue
            if offset < region.size && length <= region.size - offset {
                return region.host + Int(offset)
            }
        }
        throw GuestMemoryError(address: address, length: length)
    }

    /// Whether `count` bytes at `address` are all guest RAM in one region.
    public func contains(_ address: GuestAddress, count: Int) -> Bool {
        (try? hostPointer(address, count: count)) != nil
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: UnsafeRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard bytes.count > 0 else { return }
        let target = try hostPointer(address, count: bytes.count)
        target.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: [UInt8], at address: GuestAddress) throws(GuestMemoryError) {
        guard !bytes.isEmpty else { return }
        let target = try hostPointer(address, count: bytes.count)
        bytes.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Fills `buffer` from guest memory at `address`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard buffer.count > 0 else { return }
        let source = try hostPointer(address, count: buffer.count)
        buffer.baseAddress!.copyMemory(from: source, byteCount: buffer.count)
    }

    /// `count` bytes of guest memory at `address`.
    public func readBytes(at address: GuestAddress, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let source = try hostPointer(address, count: count)
        return Array(UnsafeRawBufferPointer(start: source, count: count))
    }

    /// Writes a plain value (little-endian, unaligned allowed) at `address`.
    public func write<T: BitwiseCopyable>(_ value: T, at address: GuestAddress) throws(GuestMemoryError) {
        let target = try hostPointer(address, count: MemoryLayout<T>.size)
        target.storeBytes(of: value, as: T.self)
    }

    /// Reads a plain value (unaligned allowed) from `address`.
    public func read<T: BitwiseCopyable>(_ type: T.Type, at address: GuestAddress) throws(GuestMemoryError) -> T {
        let source = try hostPointer(address, count: MemoryLayout<T>.size)
        return source.loadUnaligned(as: T.self)
    }

    /// Fills `count` bytes at `address` with `byte`.
    public func fill(_ address: GuestAddress, count: Int, with byte: UInt8) throws(GuestMemoryError) {
        guard count > 0 else { return }
        let target = try hostPointer(address, count: count)
        target.initializeMemory(as: UInt8.self, repeating: byte, count: count)
    }
}

/// A guest memory layout that cannot be mapped.
public enum GuestMemoryLayoutError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A region is empty, not page-aligned, over `Int.max` bytes, or wraps past 2^64.
    case misaligned(start: GuestAddress, size: UInt64)
    /// The region starting at `start` overlaps the region below it.
    case overlapping(start: GuestAddress)

    /// A one-line explanation naming the region.
    public var description: String {
        switch self {
        case .misaligned(let start, let size):
            "guest memory region at \(start) of \(size) bytes is empty, not page-aligned or wraps around"
        case .overlapping(let start): "guest memory region at \(start) overlaps the previous region"
        }
    }
}

extension GuestMemory {
    /// Guest RAM mapped privately (copy on write) from `fd`: the regions of `layout` one after
    /// another in the file, from offset 0. Pages the guest never writes are read from the file on
    /// demand; its writes go to private copies, so the file never changes and many machines can
    /// map it at once.
    public convenience init(mappingPrivately fd: Int32, regions layout: [(start: GuestAddress, size: UInt64)]) throws {
        try self.init(
            mapping: { size, offset in
                mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, off_t(offset))
            }, regions: layout)
    }
}
