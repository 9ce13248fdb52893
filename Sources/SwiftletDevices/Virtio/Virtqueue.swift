import CGuestAtomics
import CHost
import SwiftletHost
import SwiftletMemory
import Synchronization

/// A split virtqueue (virtio 1.2, 2.7) as the device sees it: the descriptor table, the
/// available ring (driver area) and the used ring (device area) in guest memory, plus the
/// device's own position in them.
///
/// A plain value (Equatable, Codable) holding only guest addresses and indices, so it can be
/// saved and restored; every access to the rings goes through `GuestMemory`, which checks
/// bounds. The rings are validated once, when the queue is created (at DRIVER_OK): sizes,
/// alignment, and that each area lies in guest RAM. Everything read from the rings afterwards
/// is checked again as it is used: ring indices, descriptor indices, chain lengths, indirect
/// tables and every buffer's address and length.
///
/// Errors come in two kinds (`VirtqueueError.requiresReset`): a broken ring (the available
/// index jumped by more than the queue size, a head index out of range) makes the queue
/// unusable and the device asks for a reset; a broken chain (a loop, a buffer outside guest
/// RAM, a bad indirect table) only fails the request it belongs to.
///
/// Layout in guest memory (all little-endian):
///
///     descriptor table  size × { addr: u64, len: u32, flags: u16, next: u16 }   align 16
///     available ring    flags: u16, idx: u16, ring[size]: u16, used_event: u16   align 2
///     used ring         flags: u16, idx: u16, ring[size]: { id: u32, len: u32 },
///                       avail_event: u16                                         align 4
public struct Virtqueue: Equatable, Codable, Sendable {
    /// The largest queue size the specification allows.
    public static let maximumSize: UInt16 = 32768
    static let descriptorSize: UInt64 = 16

    /// Descriptor flags (2.7.5).
    public enum DescriptorFlag {
        /// VIRTQ_DESC_F_NEXT: the chain continues at the descriptor in `next`.
        public static let next: UInt16 = 1
        /// VIRTQ_DESC_F_WRITE: the buffer is device-writable (otherwise device-readable).
        public static let write: UInt16 = 2
        /// VIRTQ_DESC_F_INDIRECT: the buffer is a table of further descriptors (2.7.5.3).
        public static let indirect: UInt16 = 4
    }

    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver asks for no interrupts (without EVENT_IDX).
    static let availableFlagNoInterrupt: UInt16 = 1

    /// Number of descriptors (a power of two).
    public let size: UInt16
    /// Guest physical address of the descriptor table (QueueDesc; 16-byte aligned).
    public let descriptorTable: UInt64
    /// Guest physical address of the available ring (QueueDriver; 2-byte aligned).
    public let availableRing: UInt64
    /// Guest physical address of the used ring (QueueDevice; 4-byte aligned).
    public let usedRing: UInt64
    /// VIRTIO_F_RING_INDIRECT_DESC was negotiated.
    public let indirectDescriptors: Bool
    /// VIRTIO_F_RING_EVENT_IDX was negotiated.
    public let eventIndex: Bool
    /// The next available-ring entry the device will take.
    public private(set) var nextAvailable: UInt16 = 0
    /// The used-ring index the device will publish next.
    public private(set) var nextUsed: UInt16 = 0
    /// `nextUsed` when the device last decided whether to interrupt (EVENT_IDX).
    public private(set) var usedAtLastInterruptCheck: UInt16 = 0

    /// Size in bytes of the descriptor table of a queue of `size` descriptors (16 bytes each).
    public static func descriptorTableLength(size: UInt16) -> UInt64 { descriptorSize * UInt64(size) }
    /// Size in bytes of the available ring: flags, idx, `size` 2-byte entries and used_event.
    public static func availableRingLength(size: UInt16) -> UInt64 { 6 + 2 * UInt64(size) }
    /// Size in bytes of the used ring: flags, idx, `size` 8-byte elements and avail_event.
    public static func usedRingLength(size: UInt16) -> UInt64 { 6 + 8 * UInt64(size) }

    /// A queue over the areas the driver programmed, checked against `memory`.
    public init(
        size: UInt16, maximumSize: UInt16 = Virtqueue.maximumSize, descriptorTable: UInt64, availableRing: UInt64,
        usedRing: UInt64, features: UInt64, memory: GuestMemory
    ) throws(VirtqueueError) {
        guard size > 0, size & (size - 1) == 0, size <= min(maximumSize, Self.maximumSize) else {
            throw .invalidSize(size, maximum: min(maximumSize, Self.maximumSize))
        }
        let areas: [(VirtqueueError.Area, UInt64, UInt64, UInt64)] = [
            (.descriptorTable, descriptorTable, Self.descriptorTableLength(size: size), 16),
            (.availableRing, availableRing, Self.availableRingLength(size: size), 2),
            (.usedRing, usedRing, Self.usedRingLength(size: size), 4),
        ]
        for (area, address, length, alignment) in areas {
            guard address % alignment == 0 else { throw .misaligned(area, address: address, alignment: alignment) }
            guard memory.contains(GuestAddress(address), count: Int(length)) else {
                throw .areaOutsideGuestMemory(area, address: address, length: length)
            }
        }
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
        self.indirectDescriptors = features & VirtioFeature.ringIndirectDescriptors != 0
        self.eventIndex = features & VirtioFeature.ringEventIndex != 0
    }

    // MARK: Available ring

    /// The driver's available index (`avail->idx`).
    func availableIndex(_ memory: GuestMemory) throws(VirtqueueError) -> UInt16 {
        // Acquire: the ring entries and descriptors the index publishes are read after it. Pairs
        // with the driver's write barrier between filling them and storing the index (2.7.13;
        // virtio_wmb before the avail->idx store in Linux's virtqueue_add_split).
        try ringLoadAcquire(at: availableRing + 2, memory)
    }

    /// Whether the driver has made chains available that the device has not taken.
    public func hasAvailable(_ memory: GuestMemory) throws(VirtqueueError) -> Bool {
        try availableIndex(memory) != nextAvailable
    }

    /// Takes the next available chain into `chain`: its head index and its buffers, in order
    /// (readable ones first). Returns false when the ring is empty.
    ///
    /// Throws when the ring itself is broken (the device needs a reset). A broken chain is not
    /// thrown: it is taken (so the driver gets its head back) with `chain.error` set and its
    /// buffers incomplete.
    public mutating func popAvailable(from memory: GuestMemory, into chain: inout DescriptorChain) throws(VirtqueueError) -> Bool
    {
        let available = try availableIndex(memory)
        let pending = available &- nextAvailable
        if pending == 0 { return false }
        guard pending <= size else {
            throw .availableIndexJump(availableIndex: available, nextAvailable: nextAvailable, size: size)
        }
        let slot = UInt64(nextAvailable & (size - 1))
        let head = try ringRead(UInt16.self, at: availableRing + 4 + 2 * slot, memory)
        guard head < size else { throw .headIndexOutOfRange(head, size: size) }
        nextAvailable &+= 1
        chain.reset(head: head)
        do { try walk(head: head, memory: memory, chain: &chain) } catch { chain.error = error }
        return true
    }

    /// Gives back the chain the last `popAvailable` took, which the device could not use yet
    /// (a receive buffer with no frame to put in it): the next `popAvailable` takes it again.
    /// Call only right after a `popAvailable` that returned true.
    public mutating func putBackLastAvailable() {
        nextAvailable &-= 1
    }

    /// Follows a chain from `head` through the descriptor table and any indirect table.
    private func walk(head: UInt16, memory: GuestMemory, chain: inout DescriptorChain) throws(VirtqueueError) {
        var index = head
        var hops: UInt32 = 0
        while true {
            hops += 1
            guard hops <= UInt32(size) else { throw .chainTooLong(limit: Int(size)) }
            let descriptor = try Descriptor(
                at: descriptorTable + Self.descriptorSize * UInt64(index), memory: memory, ring: true)
            if descriptor.flags & DescriptorFlag.indirect != 0 {
                guard indirectDescriptors else { throw .indirectNotNegotiated }
                guard descriptor.flags & DescriptorFlag.next == 0 else { throw .indirectWithNext }
                try walkIndirect(descriptor, memory: memory, chain: &chain)
                return
            }
            try chain.append(descriptor, memory: memory)
            guard descriptor.flags & DescriptorFlag.next != 0 else { return }
            guard descriptor.next < size else { throw .nextIndexOutOfRange(descriptor.next, tableSize: UInt32(size)) }
            index = descriptor.next
        }
    }

    /// Follows the chain inside an indirect table (at most `size` descriptors, no nesting).
    private func walkIndirect(_ table: Descriptor, memory: GuestMemory, chain: inout DescriptorChain) throws(VirtqueueError) {
        guard table.length > 0, UInt64(table.length) % Self.descriptorSize == 0 else {
            throw .indirectTableLength(table.length)
        }
        let count = UInt32(UInt64(table.length) / Self.descriptorSize)
        guard count <= UInt32(size) else { throw .indirectTableTooLong(count: count, limit: UInt32(size)) }
        guard memory.contains(GuestAddress(table.address), count: Int(table.length)) else {
            throw .indirectTableOutsideGuestMemory(address: table.address, length: table.length)
        }
        var index: UInt32 = 0
        var hops: UInt32 = 0
        while true {
            hops += 1
            guard hops <= count else { throw .chainTooLong(limit: Int(count)) }
            let descriptor = try Descriptor(
                at: table.address + Self.descriptorSize * UInt64(index), memory: memory, ring: false)
            guard descriptor.flags & DescriptorFlag.indirect == 0 else { throw .nestedIndirect }
            try chain.append(descriptor, memory: memory)
            guard descriptor.flags & DescriptorFlag.next != 0 else { return }
            guard UInt32(descriptor.next) < count else { throw .nextIndexOutOfRange(descriptor.next, tableSize: count) }
            index = UInt32(descriptor.next)
        }
    }

    // MARK: Used ring

    /// Returns chain `head` to the driver with `length` bytes written into its buffers.
    public mutating func addUsed(head: UInt16, length: UInt32, memory: GuestMemory) throws(VirtqueueError) {
        let slot = UInt64(nextUsed & (size - 1))
        let element = usedRing + 4 + 8 * slot
        try ringWrite(UInt32(head).littleEndian, at: element, memory)
        try ringWrite(length.littleEndian, at: element + 4, memory)
        // Release: the element (and the bytes written into the chain's buffers before this call)
        // is visible before the index that publishes it. Pairs with the driver's read barrier
        // between loading used->idx and reading the element (virtio_rmb in Linux's
        // virtqueue_get_buf_ctx_split).
        try ringStoreRelease(nextUsed &+ 1, at: usedRing + 2, memory)
        nextUsed &+= 1
    }

    /// Whether the driver wants an interrupt for the used entries added since the last check:
    /// with EVENT_IDX, when `used_event` lies among them (2.7.10); otherwise unless the
    /// driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
    public mutating func needsInterrupt(_ memory: GuestMemory) throws(VirtqueueError) -> Bool {
        // A full fence, not only acquire/release: the used->idx store (a release store in
        // addUsed) must be globally visible before the suppression field below is read, a
        // store-then-load order that acquire and release do not give. The driver does the mirror
        // image when it re-enables interrupts: it stores used_event (or clears NO_INTERRUPT), full
        // barrier, then re-reads used->idx (virtio_mb in Linux's virtqueue_enable_cb_delayed).
        // With both fences, at least one side sees the other's store; without this one the device
        // could read a stale used_event and skip the interrupt while the driver reads a stale
        // used->idx and waits for it: a lost wake-up (2.7.7.2, 2.7.10; vhost_notify's smp_mb).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = usedAtLastInterruptCheck
        let new = nextUsed
        usedAtLastInterruptCheck = new
        guard eventIndex else {
            // Acquire (as used_event below): the driver writes the field concurrently; the load
            // is one atomic 16-bit access, and nothing after it is hoisted above it.
            let flags = try ringLoadAcquire(at: availableRing, memory)
            return new != old && flags & Self.availableFlagNoInterrupt == 0
        }
        let usedEvent = try ringLoadAcquire(at: availableRing + 4 + 2 * UInt64(size), memory)
        return new &- usedEvent &- 1 < new &- old
    }

    /// Asks the driver to notify again for the next chain it makes available (with EVENT_IDX,
    /// `avail_event = nextAvailable`; without it the device never suppresses notifications),
    /// then returns whether chains arrived meanwhile, which the device must process because
    /// their notification may have been suppressed.
    public func enableNotifications(_ memory: GuestMemory) throws(VirtqueueError) -> Bool {
        if eventIndex {
            // Release: the device's earlier ring accesses (the entries it took) are ordered before
            // the store that tells the driver how far it has got.
            try ringStoreRelease(nextAvailable, at: usedRing + 4 + 8 * UInt64(size), memory)
            // A full fence between that store and the avail->idx load in hasAvailable (a
            // store-then-load order, which acquire and release do not give). The driver, after
            // storing avail->idx, does a full barrier and then reads avail_event to decide whether
            // to notify (virtio_mb in Linux's virtqueue_kick_prepare_split). Without this fence the
            // device could read a stale avail->idx while the driver reads a stale avail_event and
            // skips the notification: a chain left in the ring with nobody to process it
            // (2.7.10; vhost_enable_notify's smp_mb).
            atomicMemoryFence(ordering: .sequentiallyConsistent)
        }
        return try hasAvailable(memory)
    }

    // MARK: Guest memory access

    private func ringRead<T: BitwiseCopyable & FixedWidthInteger>(_ type: T.Type, at address: UInt64, _ memory: GuestMemory)
        throws(VirtqueueError) -> T
    {
        do { return T(littleEndian: try memory.read(T.self, at: GuestAddress(address))) } catch {
            throw .ringOutsideGuestMemory(address: address)
        }
    }

    private func ringWrite<T: BitwiseCopyable>(_ value: T, at address: UInt64, _ memory: GuestMemory) throws(VirtqueueError) {
        do { try memory.write(value, at: GuestAddress(address)) } catch { throw .ringOutsideGuestMemory(address: address) }
    }

    /// The 16-bit field at `address` in the available ring (idx, flags or used_event: the driver
    /// writes them concurrently), loaded atomically with acquire ordering.
    private func ringLoadAcquire(at address: UInt64, _ memory: GuestMemory) throws(VirtqueueError) -> UInt16 {
        UInt16(littleEndian: swl_guest_load_acquire_u16(try ringField(.availableRing, at: address, memory)))
    }

    /// Stores `value` in the 16-bit field at `address` in the used ring (idx or avail_event: the
    /// driver reads them concurrently) atomically with release ordering.
    private func ringStoreRelease(_ value: UInt16, at address: UInt64, _ memory: GuestMemory) throws(VirtqueueError) {
        swl_guest_store_release_u16(try ringField(.usedRing, at: address, memory), value.littleEndian)
    }

    /// The host address of the 16-bit field at `address` in ring `area`, checked to lie in guest
    /// RAM and to be 2-byte aligned (an atomic access must be). The areas' alignment is checked
    /// when the queue is created, but a queue decoded from a saved state was not: a misaligned
    /// field is reported as `.misaligned` (a ring error) and never reaches the atomic access.
    private func ringField(
        _ area: VirtqueueError.Area, at address: UInt64, _ memory: GuestMemory
    ) throws(VirtqueueError) -> UnsafeMutablePointer<UInt16> {
        let pointer: UnsafeMutableRawPointer
        do { pointer = try memory.hostPointer(GuestAddress(address), count: 2) } catch {
            throw .ringOutsideGuestMemory(address: address)
        }
        // Guest RAM regions are page-aligned mappings of page-aligned guest ranges, so this is
        // also the guest address's alignment.
        let alignment = UInt64(MemoryLayout<UInt16>.alignment)
        guard UInt64(UInt(bitPattern: pointer)) % alignment == 0 else {
            throw .misaligned(area, address: address, alignment: alignment)
        }
        return pointer.assumingMemoryBound(to: UInt16.self)
    }
}

extension Virtqueue {
    /// Puts the device back at a saved position in the rings (restoring a snapshot); the areas
    /// were checked by `init`, the indices are any `UInt16`.
    mutating func restorePosition(nextAvailable: UInt16, nextUsed: UInt16, usedAtLastInterruptCheck: UInt16) {
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
        self.usedAtLastInterruptCheck = usedAtLastInterruptCheck
    }
}

/// One descriptor as read from guest memory.
struct Descriptor {
    let address: UInt64
    let length: UInt32
    let flags: UInt16
    let next: UInt16

    /// Reads the descriptor at `address`; in the queue's own table (`ring`) a failure is a ring
    /// error, in an indirect table (checked before) it cannot happen but is reported as one.
    init(at address: UInt64, memory: GuestMemory, ring: Bool) throws(VirtqueueError) {
        let pointer: UnsafeMutableRawPointer
        do { pointer = try memory.hostPointer(GuestAddress(address), count: 16) } catch {
            throw ring
                ? .ringOutsideGuestMemory(address: address) : .indirectTableOutsideGuestMemory(address: address, length: 16)
        }
        self.address = UInt64(littleEndian: pointer.loadUnaligned(as: UInt64.self))
        self.length = UInt32(littleEndian: pointer.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        self.flags = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        self.next = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
    }
}

/// One guest buffer of a descriptor chain, already checked to lie in guest RAM.
public struct VirtqueueBuffer: Equatable, Sendable {
    /// Guest physical address of the buffer's first byte.
    public var address: GuestAddress
    /// Length in bytes; never 0 in a chain (empty descriptors are skipped).
    public var length: UInt32
    /// Device-writable (the device fills it) rather than device-readable.
    public var isWritable: Bool

    /// A buffer with these fields, unchecked (`DescriptorChain` checks the buffers it takes).
    public init(address: GuestAddress, length: UInt32, isWritable: Bool) {
        self.address = address
        self.length = length
        self.isWritable = isWritable
    }
}

/// A chain taken from the available ring: its head index and its buffers in order, the
/// device-readable ones first. A device keeps one and reuses it for every request, so walking
/// a chain allocates nothing once the buffer array has grown.
public struct DescriptorChain: Sendable {
    /// The head descriptor's index: what goes back in the used ring.
    public private(set) var head: UInt16 = 0
    /// The chain's non-empty buffers, device-readable first.
    public private(set) var buffers: [VirtqueueBuffer] = []
    /// Total bytes of the device-readable buffers.
    public private(set) var readableLength: UInt64 = 0
    /// Total bytes of the device-writable buffers.
    public private(set) var writableLength: UInt64 = 0
    /// Why the chain is unusable (the request fails; its buffers are incomplete).
    public internal(set) var error: VirtqueueError?

    /// An empty chain (head 0, no buffers), for `Virtqueue.popAvailable` to fill.
    public init() {}

    /// Index of the first writable buffer (`buffers.count` if none).
    public var firstWritableIndex: Int { buffers.firstIndex { $0.isWritable } ?? buffers.count }

    mutating func reset(head: UInt16) {
        self.head = head
        buffers.removeAll(keepingCapacity: true)
        readableLength = 0
        writableLength = 0
        error = nil
    }

    /// Adds a descriptor's buffer after checking it lies in guest RAM and keeps the order
    /// readable-then-writable. Zero-length buffers carry nothing and are skipped.
    mutating func append(_ descriptor: Descriptor, memory: GuestMemory) throws(VirtqueueError) {
        let writable = descriptor.flags & Virtqueue.DescriptorFlag.write != 0
        guard writable || writableLength == 0 else { throw .readableAfterWritable }
        guard descriptor.length > 0 else { return }
        guard memory.contains(GuestAddress(descriptor.address), count: Int(descriptor.length)) else {
            throw .bufferOutsideGuestMemory(address: descriptor.address, length: descriptor.length)
        }
        if writable {
            writableLength += UInt64(descriptor.length)
            guard writableLength <= UInt64(UInt32.max) else { throw .chainLengthOverflow }
        } else {
            readableLength += UInt64(descriptor.length)
            guard readableLength <= UInt64(UInt32.max) else { throw .chainLengthOverflow }
        }
        buffers.append(
            VirtqueueBuffer(address: GuestAddress(descriptor.address), length: descriptor.length, isWritable: writable))
    }

    /// Copies `destination.count` bytes of the readable part starting at byte `offset` of it.
    /// Returns how many bytes were copied (fewer when the readable part is shorter).
    public func copyReadable(from offset: UInt64, into destination: UnsafeMutableRawBufferPointer, memory: GuestMemory) -> Int {
        copy(writable: false, offset: offset, count: destination.count, memory: memory) { pointer, done, count in
            (destination.baseAddress! + done).copyMemory(from: pointer, byteCount: count)
        }
    }

    /// Copies `source` into the writable part starting at byte `offset` of it. Returns how many
    /// bytes were copied (fewer when the writable part is shorter).
    @discardableResult
    public func copyToWritable(at offset: UInt64, from source: UnsafeRawBufferPointer, memory: GuestMemory) -> Int {
        copy(writable: true, offset: offset, count: source.count, memory: memory) { pointer, done, count in
            pointer.copyMemory(from: source.baseAddress! + done, byteCount: count)
        }
    }

    /// Visits the host memory of bytes `[offset, offset + count)` of the readable or writable
    /// part, piece by piece: `body(host pointer, bytes done before, piece length)`. Pieces not in
    /// guest RAM (impossible after `append` checked them) end the walk. Returns the bytes visited.
    public func forEachPiece(
        writable: Bool, offset: UInt64, count: Int, memory: GuestMemory,
        _ body: (UnsafeMutableRawPointer, Int, Int) -> Void
    ) -> Int {
        var skip = offset
        var done = 0
        for buffer in buffers where buffer.isWritable == writable && done < count {
            let length = UInt64(buffer.length)
            if skip >= length {
                skip -= length
                continue
            }
            let piece = Int(min(length - skip, UInt64(count - done)))
            guard let address = buffer.address.adding(skip),
                let pointer = try? memory.hostPointer(address, count: piece)
            else { break }
            body(pointer, done, piece)
            done += piece
            skip = 0
        }
        return done
    }

    private func copy(
        writable: Bool, offset: UInt64, count: Int, memory: GuestMemory, _ body: (UnsafeMutableRawPointer, Int, Int) -> Void
    ) -> Int {
        guard count > 0 else { return 0 }
        return forEachPiece(writable: writable, offset: offset, count: count, memory: memory, body)
    }
}

/// Why a virtqueue cannot be set up, or a ring or chain cannot be used.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The three areas of a split virtqueue; `rawValue` names them in messages: `descriptorTable`,
    /// `availableRing` (the driver area) and `usedRing` (the device area).
    public enum Area: String, Sendable {
        case descriptorTable = "descriptor table", availableRing = "available ring", usedRing = "used ring"
    }

    // Set-up (at DRIVER_OK).
    /// QueueNum is 0, not a power of two, or larger than `maximum` (QueueNumMax, at most 32768).
    case invalidSize(UInt16, maximum: UInt16)
    /// An area's address is not a multiple of its alignment (16, 2 or 4 bytes, 2.7).
    case misaligned(Area, address: UInt64, alignment: UInt64)
    /// An area of `length` bytes at `address` does not lie wholly in guest RAM.
    case areaOutsideGuestMemory(Area, address: UInt64, length: UInt64)
    // The rings: the queue cannot be used any more.
    /// A read or write of a ring field or of the queue's descriptor table at `address` fell outside
    /// guest RAM.
    case ringOutsideGuestMemory(address: UInt64)
    /// The driver's `avail->idx` is more than `size` entries ahead of the device's `nextAvailable`.
    case availableIndexJump(availableIndex: UInt16, nextAvailable: UInt16, size: UInt16)
    /// An available-ring entry names a head descriptor past the end of the table of `size`.
    case headIndexOutOfRange(UInt16, size: UInt16)
    // One chain: that request fails.
    /// A descriptor's `next` lies past the end of its table (the queue's, or an indirect one).
    case nextIndexOutOfRange(UInt16, tableSize: UInt32)
    /// The chain has more than `limit` descriptors (its table's size), so it must loop.
    case chainTooLong(limit: Int)
    /// VIRTQ_DESC_F_INDIRECT without VIRTIO_F_RING_INDIRECT_DESC negotiated.
    case indirectNotNegotiated
    /// A descriptor has both INDIRECT and NEXT set, which the driver must not do (2.7.5.3).
    case indirectWithNext
    /// An indirect table holds an INDIRECT descriptor; tables do not nest (2.7.5.3).
    case nestedIndirect
    /// An indirect descriptor's length is 0 or not a multiple of 16 bytes.
    case indirectTableLength(UInt32)
    /// An indirect table of `count` descriptors, more than the queue size `limit`.
    case indirectTableTooLong(count: UInt32, limit: UInt32)
    /// An indirect table of `length` bytes at `address` does not lie wholly in guest RAM.
    case indirectTableOutsideGuestMemory(address: UInt64, length: UInt32)
    /// A buffer of `length` bytes at `address` does not lie wholly in guest RAM.
    case bufferOutsideGuestMemory(address: UInt64, length: UInt32)
    /// A device-readable descriptor follows a device-writable one; readable ones come first (2.7.5).
    case readableAfterWritable
    /// The readable or the writable buffers add up to more than `UInt32.max` bytes, which a used-ring
    /// length cannot express.
    case chainLengthOverflow

    /// Whether the queue as a whole is unusable (the device sets DEVICE_NEEDS_RESET), rather
    /// than one request failing.
    public var requiresReset: Bool {
        switch self {
        case .invalidSize, .misaligned, .areaOutsideGuestMemory, .ringOutsideGuestMemory, .availableIndexJump,
            .headIndexOutOfRange:
            true
        default: false
        }
    }

    /// A one-line explanation, with guest addresses in hex.
    public var description: String {
        switch self {
        case .invalidSize(let size, let maximum): "queue size \(size) is not a power of two between 1 and \(maximum)"
        case .misaligned(let area, let address, let alignment):
            "\(area.rawValue) at \(hex(address)) is not aligned to \(alignment) bytes"
        case .areaOutsideGuestMemory(let area, let address, let length):
            "\(area.rawValue) at \(hex(address)) (\(length) bytes) is outside guest RAM"
        case .ringOutsideGuestMemory(let address): "ring access at \(hex(address)) is outside guest RAM"
        case .availableIndexJump(let index, let next, let size):
            "available index \(index) is more than the queue size \(size) ahead of the device's \(next)"
        case .headIndexOutOfRange(let head, let size): "chain head \(head) is outside the descriptor table of \(size)"
        case .nextIndexOutOfRange(let next, let tableSize): "next descriptor \(next) is outside a table of \(tableSize)"
        case .chainTooLong(let limit): "descriptor chain is longer than \(limit) (a loop?)"
        case .indirectNotNegotiated: "indirect descriptor used without VIRTIO_F_RING_INDIRECT_DESC"
        case .indirectWithNext: "indirect descriptor also has VIRTQ_DESC_F_NEXT"
        case .nestedIndirect: "indirect descriptor inside an indirect table"
        case .indirectTableLength(let length): "indirect table length \(length) is not a non-zero multiple of 16"
        case .indirectTableTooLong(let count, let limit): "indirect table of \(count) descriptors exceeds \(limit)"
        case .indirectTableOutsideGuestMemory(let address, let length):
            "indirect table at \(hex(address)) (\(length) bytes) is outside guest RAM"
        case .bufferOutsideGuestMemory(let address, let length):
            "buffer at \(hex(address)) (\(length) bytes) is outside guest RAM"
        case .readableAfterWritable: "device-readable descriptor after a device-writable one"
        case .chainLengthOverflow: "descriptor chain holds more than 4 GiB"
        }
    }
}
