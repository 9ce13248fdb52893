import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Guest console output to a host file descriptor (the CLI's standard output), written by a
/// thread of its own so that no vCPU ever waits in write(2) and a stalled reader can never keep
/// the machine from stopping.
///
/// The UART hands each byte to a fixed-capacity `ByteRing` (no allocation, one mutex); the
/// console-writer thread takes chunks of at most `chunkSize` bytes out of it and writes them
/// with poll(2) + blocking write(2). The descriptor's flags are never changed: standard output
/// is usually a terminal or pipe shared with the parent shell, and O_NONBLOCK on it would leak
/// into the shell after Swiftlet exits.
///
/// Flow control, so that a slow but live reader gets every byte while a stalled one costs
/// bounded memory and time:
/// - While the ring has room a write only copies the byte.
/// - When the ring is full, the writing vCPU waits for room, but only while the writer keeps
///   making progress: once the writer has been waiting on the descriptor (in poll(2) or
///   write(2)) for `stallTimeout` without a write completing, the output counts as stalled and
///   bytes that do not fit are dropped at once (counted in `droppedBytes`) until the reader
///   takes data again. A writer that is only short of CPU time (a loaded host) is not a stalled
///   reader: the vCPU keeps waiting for it, so output is never cut in the middle for that. The wait also ends when the machine stops (`machineEnded()`),
///   so stopping never waits for the reader.
/// - When the machine has ended, `close()` writes what is left while the reader keeps taking
///   it, and gives up (dropping the rest) after `flushStallTimeout` without progress or
///   `flushLimit` in all. A blocked write(2) is interrupted with the vCPU kick signal (its
///   handler is installed without SA_RESTART, so write returns EINTR or a partial count).
/// - A write error (EPIPE, EIO, ...) ends writing; everything after it is dropped and the
///   error is kept in `writeError`.
///
/// Every wait is for an event: the writer waits for data on `dataReady`, a full-ring vCPU for
/// room on `spaceReady`, `close()` for the writer's end on `writerEnded`, and the writer for the
/// descriptor in poll(2) with no timeout. Three waits also have a time limit because the rule
/// they implement is a time: the full-ring wait ends at the stall moment (`stallTimeout` after
/// the writer started waiting on the descriptor), the gather wait after `gatherNanoseconds`,
/// and `close()` at the flush's give-up moment. Nothing sleeps to retry, except `close()`
/// re-sending its kick after giving up (nothing tells it the writer has entered write(2)).
final class ConsoleWriter: SerialOutput, @unchecked Sendable {
    /// The ring's capacity: 256 KiB, several times a Linux boot log, on top of the pipe's or
    /// terminal's own buffer. It is what a stalled reader costs (pages are touched only once
    /// output passes through them) and what a reader that comes back after a stall still gets.
    static let defaultCapacity = 256 << 10
    /// The largest single write(2): PIPE_BUF, so a write into a pipe that poll(2) reports
    /// writable completes without blocking.
    static let chunkSize = 4096
    /// How long the writer lets output gather after the first byte of a burst (1 ms: invisible
    /// when typing, and a write per 4 KiB instead of per byte when the guest floods).
    static let gatherNanoseconds = 1_000_000
    /// How long a full ring may wait for a write(2) to complete before output counts as stalled.
    static let defaultStallTimeout: Double = 0.5
    /// How long the final flush waits without progress before giving up.
    static let flushStallTimeout: Double = 0.2
    /// The longest the final flush may take even with a reader that keeps trickling.
    static let flushLimit: Double = 2

    /// The descriptor written to (borrowed: the caller keeps it open).
    let fileDescriptor: Int32
    let stallNanoseconds: UInt64

    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Signalled when bytes arrive (while the writer waits for any), when a gathering writer's
    /// chunk is complete, or when closing; the writer waits on it.
    private let dataReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled when the writer takes bytes, when writing fails, or when the machine ends;
    /// full-ring writers wait on it.
    private let spaceReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled when the writer thread ends; `close()` waits on it.
    private let writerEnded = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    // Guarded by `lock`.
    private var ring: ByteRing
    private var writerWaiting = false
    /// The writer is letting a burst gather: wake it once a chunk is complete.
    private var writerGathering = false
    private var writerFinished = false
    /// vCPU threads waiting in `write` for room in the full ring.
    private var roomWaiters = 0
    private var stopping = false
    private var closing = false
    private var failure: Int32?

    /// CLOCK_MONOTONIC nanoseconds of the writer's last progress (a chunk taken or written).
    private let lastProgress = Atomic<UInt64>(0)
    /// When the writer took the chunk it is writing (it waits on the descriptor from then on),
    /// or last completed a write of it; 0 while it holds no chunk (then the output cannot be
    /// stalled, and the writer is on its way to take the next one). Set under `lock`.
    private let waitingOnOutputSince = Atomic<UInt64>(0)
    /// Set by `close()` when the flush gives up; the writer drops what is left and ends.
    private let givingUp = Atomic<Bool>(false)
    private var thread: NativeThread?

    /// A writer to `fileDescriptor` with a ring of `capacity` bytes. Nothing is written until `start()`.
    init(
        fileDescriptor: Int32, capacity: Int = ConsoleWriter.defaultCapacity,
        stallTimeout: Double = ConsoleWriter.defaultStallTimeout
    ) {
        self.fileDescriptor = fileDescriptor
        self.stallNanoseconds = UInt64(max(0, stallTimeout) * 1e9)
        ring = ByteRing(capacity: max(1, capacity))
        pthread_mutex_init(lock, nil)
        // Timed waits here are against CLOCK_MONOTONIC deadlines.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(dataReady, &attributes)
        pthread_cond_init(spaceReady, &attributes)
        pthread_cond_init(writerEnded, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        close()
        pthread_cond_destroy(writerEnded)
        pthread_cond_destroy(spaceReady)
        pthread_cond_destroy(dataReady)
        pthread_mutex_destroy(lock)
        writerEnded.deallocate()
        spaceReady.deallocate()
        dataReady.deallocate()
        lock.deallocate()
    }

    /// Starts the console-writer thread (once); it installs `filter` before it writes anything.
    /// If the filter cannot be installed, nothing is written: the output counts as failed.
    func start(filter: SeccompFilter? = nil) throws(SystemError) {
        guard thread == nil else { return }
        _ = VCPUKick.installed
        lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
        thread = try NativeThread(name: "console writer", stackSize: NativeThread.helperStackSize) { [self] in
            VCPUKick.unblock()
            do throws(SystemError) {
                try filter?.install(threadKind: SeccompThreadKind.consoleWriter.name)
                run()
            } catch {
                locked { failure = error.errno }
            }
            locked {
                writerFinished = true
                pthread_cond_broadcast(writerEnded)
            }
        }
    }

    /// Bytes that never reached the descriptor: dropped while output was stalled or failed, or
    /// left over when the final flush gave up.
    var droppedBytes: Int { locked { ring.dropped } }

    /// The error that ended writing, if one did.
    var writeError: SystemError? {
        locked { failure }.map { SystemError("console output write", errno: $0) }
    }

    /// How many `write` calls are waiting for room in the full ring now.
    var writersWaitingForRoom: Int { locked { roomWaiters } }

    /// Queues `bytes` for the writer. Called on vCPU threads: it copies into the ring and, only
    /// when the ring is full and the writer is still making progress, waits for room (see the
    /// type's documentation); it never does I/O.
    func write(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        pthread_mutex_lock(lock)
        var rest = bytes
        while !rest.isEmpty {
            if failure != nil || closing {
                ring.noteDropped(rest.count)
                break
            }
            let fits = min(ring.space, rest.count)
            if fits > 0 {
                ring.append(UnsafeRawBufferPointer(rebasing: rest[..<fits]))
                rest = UnsafeRawBufferPointer(rebasing: rest[fits...])
                if writerWaiting {
                    pthread_cond_signal(dataReady)
                } else if writerGathering && (ring.count >= Self.chunkSize || ring.space == 0) {
                    writerGathering = false
                    pthread_cond_signal(dataReady)
                }
                continue
            }
            // Full: wait while the writer is live and the machine is running.
            let since = waitingOnOutputSince.load(ordering: .acquiring)
            let stalledAt = since &+ stallNanoseconds
            if stopping || (since != 0 && monotonicNanoseconds() >= stalledAt) {
                ring.noteDropped(rest.count)
                break
            }
            roomWaiters += 1
            if since == 0 {
                // The writer holds no chunk, so it is on its way to take one (which signals
                // spaceReady) or writing has failed (which signals too). However long that takes
                // (a writer short of CPU), it is not a stall: wait for the signal, with no timeout.
                pthread_cond_wait(spaceReady, lock)
            } else {
                // The stall rule is a moment in time: output counts as stalled `stallTimeout`
                // after the writer started waiting on the descriptor, unless a write completes
                // first. So this wait is timed, to that moment; a taken chunk signals earlier,
                // and a completed write moves `since`, which is read again on waking.
                var deadline = timespec(tv_sec: Int(stalledAt / 1_000_000_000), tv_nsec: Int(stalledAt % 1_000_000_000))
                pthread_cond_timedwait(spaceReady, lock, &deadline)
            }
            roomWaiters -= 1
        }
        pthread_mutex_unlock(lock)
    }

    /// The machine has ended (called from its finish hook, on any thread; never blocks): writers
    /// waiting for room drop their bytes instead, and no write waits from now on.
    func machineEnded() {
        locked {
            stopping = true
            pthread_cond_broadcast(spaceReady)
        }
    }

    /// Writes what is left while the reader takes it, then ends the writer thread (after the
    /// machine's vCPU threads have ended). Gives up after `flushStallTimeout` without progress or
    /// `flushLimit` in all. Safe to call more than once.
    func close() {
        locked {
            stopping = true
            closing = true
            pthread_cond_broadcast(spaceReady)
            pthread_cond_signal(dataReady)
        }
        guard let thread else { return }
        let started = monotonicNanoseconds()
        let stall = UInt64(Self.flushStallTimeout * 1e9)
        let limit = UInt64(Self.flushLimit * 1e9)
        pthread_mutex_lock(lock)
        while !writerFinished {
            let now = monotonicNanoseconds()
            let progress = max(lastProgress.load(ordering: .relaxed), started)
            let giveUpAt = min(progress &+ stall, started &+ limit)
            let wakeAt: UInt64
            if givingUp.load(ordering: .relaxed) || now >= giveUpAt {
                givingUp.store(true, ordering: .releasing)
                // Interrupts a poll(2) or write(2) in progress. A kick that arrives just before
                // the writer enters write(2) is lost, and nothing says when it is in there, so
                // this is the one retry on a timer: kick again every 2 ms until the writer ends.
                thread.send(VCPUKick.signal)
                wakeAt = now &+ 2_000_000
            } else {
                // Giving up is a time rule (no progress for `flushStallTimeout`, or `flushLimit`
                // in all): wait for the writer's end until that moment, then look at its
                // progress again.
                wakeAt = giveUpAt
            }
            var deadline = timespec(tv_sec: Int(wakeAt / 1_000_000_000), tv_nsec: Int(wakeAt % 1_000_000_000))
            pthread_cond_timedwait(writerEnded, lock, &deadline)
        }
        pthread_mutex_unlock(lock)
        thread.join()
        self.thread = nil
    }

    // MARK: - The writer thread

    private func run() {
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            pthread_mutex_lock(lock)
            while ring.isEmpty && !closing && !givingUp.load(ordering: .acquiring) {
                writerWaiting = true
                pthread_cond_wait(dataReady, lock)
                writerWaiting = false
            }
            if ring.isEmpty || givingUp.load(ordering: .acquiring) {
                ring.discardAll()
                pthread_mutex_unlock(lock)
                return
            }
            if ring.count < Self.chunkSize && ring.space > 0 && !closing {
                // Woken by the first byte of a burst: let the rest of it gather for a moment
                // (a guest transmits a byte per exit) instead of a wake-up and a write per byte.
                // Timed, since the gathering time is the point; a complete chunk (or a full
                // ring, or closing) signals earlier.
                let until = monotonicNanoseconds() &+ UInt64(Self.gatherNanoseconds)
                var deadline = timespec(tv_sec: Int(until / 1_000_000_000), tv_nsec: Int(until % 1_000_000_000))
                writerGathering = true
                while writerGathering && !closing && monotonicNanoseconds() < until {
                    pthread_cond_timedwait(dataReady, lock, &deadline)
                }
                writerGathering = false
            }
            let count = ring.take(into: chunk)
            let now = monotonicNanoseconds()
            lastProgress.store(now, ordering: .relaxed)
            // From here until the chunk is written the writer waits on the descriptor.
            waitingOnOutputSince.store(now, ordering: .releasing)
            pthread_cond_broadcast(spaceReady)
            pthread_mutex_unlock(lock)

            let written = writeOut(UnsafeRawBufferPointer(rebasing: chunk[..<count]))
            if written < count {
                let failed = locked { () -> Bool in
                    ring.noteDropped(count - written)
                    if failure != nil { ring.discardAll() }
                    // Writers waiting for room drop their bytes now.
                    pthread_cond_broadcast(spaceReady)
                    return failure != nil
                }
                if failed { return }
            }
        }
    }

    /// Writes `bytes` to the descriptor (the chunk `run` took, `waitingOnOutputSince` set);
    /// returns how many were written before an error or the flush gave up.
    private func writeOut(_ bytes: UnsafeRawBufferPointer) -> Int {
        defer { waitingOnOutputSince.store(0, ordering: .releasing) }
        var offset = 0
        while offset < bytes.count {
            if givingUp.load(ordering: .acquiring) { return offset }
            // No timeout: the only other thing to wait for is `givingUp`, and close() sends a
            // kick with it that interrupts poll(2) (EINTR).
            var descriptor = pollfd(fd: fileDescriptor, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&descriptor, 1, -1)
            if ready == 0 || (ready < 0 && errno == EINTR) { continue }
            // Anything else (ready, POLLERR/POLLHUP, a poll error): let write(2) say what it is.
            let result = Glibc.write(fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if result > 0 {
                offset += result
                lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
                waitingOnOutputSince.store(monotonicNanoseconds(), ordering: .releasing)
            } else if result < 0 && (errno == EINTR || errno == EAGAIN) {
                continue
            } else {
                let error = result < 0 ? errno : EIO
                locked { failure = error }
                return offset
            }
        }
        return offset
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }
}
