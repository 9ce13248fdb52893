import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// The machine's event-loop thread: epoll over host file descriptors (the console's stdin and
/// input-room eventfd, virtio queue eventfds, taps). Blocking host I/O happens here, never on a
/// vCPU thread. Nothing runs on a timer: the loop sleeps in epoll_wait until a descriptor is
/// ready, `wake()` or `stop()` is called, or the deadline (if one is set) comes.
final class EventLoop: Sendable {
    /// Called with the epoll event bits when its descriptor is ready.
    typealias Handler = @Sendable (UInt32) -> Void

    private let epoll: OwnedFileDescriptor
    private let wakeup: EventFD
    private let handlers = Mutex<[Int32: Handler]>([:])
    private let stopped = Atomic<Bool>(false)
    /// A one-shot action at a CLOCK_MONOTONIC time (the machine's deadline). Kept in a class:
    /// a closure stored in a tuple inside the Mutex gained a reabstraction thunk on every
    /// `withLock`, until calling it overflowed the stack.
    private let deadline = Mutex<Deadline?>(nil)
    /// Whether `run()` is running, and the work `perform(_:)` queued for the loop thread.
    private let tasks = Mutex<(running: Bool, pending: [Task])>((false, []))

    private final class Task: @unchecked Sendable {
        let body: () -> Void
        var done = false
        let finished = ParkingGate()
        init(_ body: @escaping () -> Void) { self.body = body }
        func run() {
            body()
            finished.wakeAll(after: { self.done = true })
        }
    }

    private final class Deadline: Sendable {
        let nanoseconds: UInt64
        let action: @Sendable () -> Void
        init(nanoseconds: UInt64, action: @escaping @Sendable () -> Void) {
            self.nanoseconds = nanoseconds
            self.action = action
        }
    }

    init() throws(SystemError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if fd < 0 { throw SystemError.current("epoll_create1") }
        epoll = OwnedFileDescriptor(taking: fd)
        wakeup = try EventFD()
        try add(wakeup.rawValue, events: EPOLLIN.rawValue) { _ in }
    }

    /// Watches `fd` for `events` (EPOLLIN, ...), calling `handler` on the loop thread.
    func add(_ fd: Int32, events: UInt32, handler: @escaping Handler) throws(SystemError) {
        handlers.withLock { $0[fd] = handler }
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        if epoll_ctl(epoll.rawValue, EPOLL_CTL_ADD, fd, &event) != 0 {
            handlers.withLock { _ = $0.removeValue(forKey: fd) }
            throw SystemError.current("epoll_ctl add fd \(fd)")
        }
    }

    /// Changes which events `fd` is watched for (0 pauses it).
    func modify(_ fd: Int32, events: UInt32) {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_MOD, fd, &event)
    }

    /// Stops watching `fd` (it gave an error or hung up and would be reported again and again).
    func remove(_ fd: Int32) {
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_DEL, fd, nil)
        handlers.withLock { _ = $0.removeValue(forKey: fd) }
    }

    /// Drops every handler and the deadline (after `run()` has returned for good): they hold
    /// the devices, and the devices may hold the loop.
    func removeAllHandlers() {
        handlers.withLock { $0.removeAll() }
        deadline.withLock { $0 = nil }
    }

    /// Calls `action` on the loop thread `seconds` from now (replacing an earlier deadline).
    func setDeadline(after seconds: Double, _ action: @escaping @Sendable () -> Void) {
        let delay = UInt64(max(0, min(seconds, 1e9)) * 1e9)
        let due = Deadline(nanoseconds: monotonicNanoseconds() + delay, action: action)
        deadline.withLock { $0 = due }
        wake()
    }

    /// Runs until `stop()`; call on the loop's own thread.
    func run() {
        tasks.withLock { $0.running = true }
        defer {
            let left = tasks.withLock { tasks in
                tasks.running = false
                defer { tasks.pending = [] }
                return tasks.pending
            }
            for task in left { task.run() }
        }
        while !stopped.load(ordering: .acquiring) {
            runPendingTasks()
            if dispatch(waitingAtMost: -1) == nil { return }
        }
    }

    /// Runs `body` on the loop thread between two handlers, so no handler runs meanwhile, and
    /// returns once it has run; when the loop is not running (not started yet, or ended), runs it
    /// here. Not to be called from the loop thread itself.
    func perform(_ body: @escaping () -> Void) {
        let task = Task(body)
        let queued = tasks.withLock { tasks -> Bool in
            guard tasks.running else { return false }
            tasks.pending.append(task)
            return true
        }
        guard queued else { return body() }
        wake()
        task.finished.waitUntil { _ in task.done }
    }

    private func runPendingTasks() {
        let due = tasks.withLock { tasks in
            defer { tasks.pending = [] }
            return tasks.pending
        }
        for task in due { task.run() }
    }

    /// One turn of the loop: runs the deadline's action if it is due, otherwise waits in
    /// epoll_wait (at most `timeoutMilliseconds`, -1 for no limit, and never past the deadline)
    /// and calls the handlers of the descriptors that are ready. Returns how many handlers ran
    /// (the deadline counts as one), or nil when epoll_wait failed. `run()` calls it; tests call
    /// it with a timeout of 0 to see exactly what is ready now.
    func dispatch(waitingAtMost timeoutMilliseconds: Int32) -> Int? {
        var timeout = timeoutMilliseconds
        if let due = deadline.withLock({ $0 }) {
            let now = monotonicNanoseconds()
            if now >= due.nanoseconds {
                deadline.withLock { if $0 === due { $0 = nil } }
                due.action()
                return 1
            }
            let untilDue = Int32(clamping: (due.nanoseconds - now + 999_999) / 1_000_000)
            timeout = timeout < 0 ? untilDue : min(timeout, untilDue)
        }
        var events = InlineArray<16, epoll_event>(repeating: epoll_event())
        var span = events.mutableSpan
        let count = span.withUnsafeMutableBufferPointer {
            epoll_wait(epoll.rawValue, $0.baseAddress, Int32($0.count), timeout)
        }
        if count < 0 { return Glibc.errno == EINTR ? 0 : nil }
        var handled = 0
        for i in 0..<Int(count) {
            let fd = events[i].data.fd
            if fd == wakeup.rawValue {
                _ = try? wakeup.consume()
                continue
            }
            if let handler = handlers.withLock({ $0[fd] }) {
                handler(events[i].events)
                handled += 1
            }
        }
        return handled
    }

    /// Makes `run()` return (from any thread).
    func stop() {
        stopped.store(true, ordering: .releasing)
        try? wakeup.signal()
    }

    /// Wakes the loop so it re-reads the deadline (from any thread).
    func wake() { try? wakeup.signal() }
}
