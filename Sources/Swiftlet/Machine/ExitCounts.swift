import SwiftletKVM
import Synchronization

/// How many times one vCPU left `KVM_RUN`, by reason. One `KVM_RUN` return is one exit: string
/// I/O that KVM hands over as one exit of several accesses (`PortIOExit.count`) counts once.
public struct ExitCounts: Sendable, Equatable, CustomStringConvertible {
    /// Port reads (`in`, `ins`: `KVM_EXIT_IO` with `KVM_EXIT_IO_IN`).
    public var portIn: UInt64 = 0
    /// Port writes (`out`, `outs`: `KVM_EXIT_IO` with `KVM_EXIT_IO_OUT`).
    public var portOut: UInt64 = 0
    /// MMIO loads (`KVM_EXIT_MMIO` with `is_write` 0).
    public var mmioRead: UInt64 = 0
    /// MMIO stores (`KVM_EXIT_MMIO` with `is_write` 1).
    public var mmioWrite: UInt64 = 0
    /// `hlt` without an in-kernel irqchip to sleep in (`KVM_EXIT_HLT`).
    public var halt: UInt64 = 0
    /// Triple faults and other shutdown conditions (`KVM_EXIT_SHUTDOWN`).
    public var shutdown: UInt64 = 0
    /// Interrupted runs: `EINTR` (a kick, `immediate_exit`), the `EAGAIN` of a woken
    /// application processor, and `KVM_EXIT_INTR`.
    public var interrupted: UInt64 = 0
    /// `KVM_EXIT_INTERNAL_ERROR` (an emulation failure, for instance).
    public var internalError: UInt64 = 0
    /// Every other exit: system events, entry failures, reasons Swiftlet does not handle.
    public var other: UInt64 = 0

    /// No exits.
    public init() {}

    /// The exits of every reason together.
    public var total: UInt64 {
        portIn &+ portOut &+ mmioRead &+ mmioWrite &+ halt &+ shutdown &+ interrupted &+ internalError &+ other
    }

    /// `pio-in N, pio-out N, mmio-read N, mmio-write N, hlt N, shutdown N, interrupted N,
    /// internal-error N, other N`, on one line.
    public var description: String {
        "pio-in \(portIn), pio-out \(portOut), mmio-read \(mmioRead), mmio-write \(mmioWrite), hlt \(halt), "
            + "shutdown \(shutdown), interrupted \(interrupted), internal-error \(internalError), other \(other)"
    }
}

/// The exit counters of a machine's vCPUs, one cache line per vCPU.
///
/// Each vCPU's line is written only by its own thread and read by anyone (`counts(of:)`, during
/// or after a run). The counters are atomics with relaxed ordering so that a concurrent read is
/// not a data race, and a vCPU bumps its own with a relaxed load and store (no read-modify-write:
/// it is the only writer), which on x86-64 and AArch64 are plain loads and stores. A line per
/// vCPU, aligned to the line size, means two vCPUs never write the same cache line. A reader may
/// see the counters of one line from slightly different moments.
///
/// The five kinds of exit after which the vCPU goes on are 64-bit counters; the four after which
/// it stops (hlt, shutdown, internal error, other) happen at most once per vCPU in a run and are
/// 32-bit (wrapping), which is what fits all nine in 64 bytes.
final class ExitCounters: @unchecked Sendable {
    /// The cache line size assumed for x86-64 and AArch64 hosts.
    static let lineSize = 64

    /// One vCPU's counters; exactly one cache line.
    struct Line: ~Copyable {
        let portIn = Atomic<UInt64>(0)
        let portOut = Atomic<UInt64>(0)
        let mmioRead = Atomic<UInt64>(0)
        let mmioWrite = Atomic<UInt64>(0)
        let interrupted = Atomic<UInt64>(0)
        let halt = Atomic<UInt32>(0)
        let shutdown = Atomic<UInt32>(0)
        let internalError = Atomic<UInt32>(0)
        let other = Atomic<UInt32>(0)
    }

    /// A vCPU thread's handle on its own line: a plain pointer, so counting retains nothing.
    struct Slot: @unchecked Sendable {
        let line: UnsafeMutablePointer<Line>

        /// Counts `exit` (one `KVM_RUN` return).
        @inline(__always)
        func record(_ exit: VCPUExit) {
            switch exit {
            case .portIO(let io): io.isWrite ? bump(line.pointee.portOut) : bump(line.pointee.portIn)
            case .mmio(let access): access.isWrite ? bump(line.pointee.mmioWrite) : bump(line.pointee.mmioRead)
            case .interrupted: bump(line.pointee.interrupted)
            case .halt: bump(line.pointee.halt)
            case .shutdown: bump(line.pointee.shutdown)
            case .internalError: bump(line.pointee.internalError)
            case .systemEvent, .failEntry, .unhandled: bump(line.pointee.other)
            }
        }

        /// The only writer's increment: relaxed load, add, relaxed store.
        @inline(__always)
        private func bump(_ counter: borrowing Atomic<UInt64>) {
            counter.store(counter.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        }

        /// The only writer's increment of a 32-bit counter (wrapping).
        @inline(__always)
        private func bump(_ counter: borrowing Atomic<UInt32>) {
            counter.store(counter.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        }
    }

    let count: Int
    private let lines: UnsafeMutableRawPointer

    /// Zeroed counters for `count` vCPUs.
    init(count: Int) {
        precondition(MemoryLayout<Line>.size <= Self.lineSize, "ExitCounters.Line must fit one cache line")
        self.count = count
        lines = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * Self.lineSize, alignment: Self.lineSize)
        for index in 0..<count { line(index).initialize(to: Line()) }
    }

    deinit {
        for index in 0..<count { line(index).deinitialize(count: 1) }
        lines.deallocate()
    }

    private func line(_ index: Int) -> UnsafeMutablePointer<Line> {
        (lines + index * Self.lineSize).assumingMemoryBound(to: Line.self)
    }

    /// The handle vCPU `index`'s thread counts its exits through. Valid while `self` lives.
    func slot(_ index: Int) -> Slot {
        precondition(index >= 0 && index < count, "no exit counters for vCPU \(index)")
        return Slot(line: line(index))
    }

    /// vCPU `index`'s counts so far.
    func counts(of index: Int) -> ExitCounts {
        let line = line(index)
        var counts = ExitCounts()
        counts.portIn = line.pointee.portIn.load(ordering: .relaxed)
        counts.portOut = line.pointee.portOut.load(ordering: .relaxed)
        counts.mmioRead = line.pointee.mmioRead.load(ordering: .relaxed)
        counts.mmioWrite = line.pointee.mmioWrite.load(ordering: .relaxed)
        counts.interrupted = line.pointee.interrupted.load(ordering: .relaxed)
        counts.halt = UInt64(line.pointee.halt.load(ordering: .relaxed))
        counts.shutdown = UInt64(line.pointee.shutdown.load(ordering: .relaxed))
        counts.internalError = UInt64(line.pointee.internalError.load(ordering: .relaxed))
        counts.other = UInt64(line.pointee.other.load(ordering: .relaxed))
        return counts
    }

    /// Every vCPU's counts so far, by vCPU id.
    var all: [ExitCounts] { (0..<count).map(counts(of:)) }
}
