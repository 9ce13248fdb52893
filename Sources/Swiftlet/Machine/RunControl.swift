import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Shared by a machine's vCPU threads: the first way the guest ended, the means to stop every
/// vCPU once it has, and pausing (every vCPU parked outside `KVM_RUN` until resumed).
final class RunControl: Sendable {
    private struct State {
        var exit: GuestExit?
        /// The guest printed a kernel panic; a reset that follows is reported as a panic.
        var panicked = false
        var threads: [pthread_t] = []
    }

    private let state = Mutex(State())
    /// Read on the vCPU loop's slow path (after an interrupted KVM_RUN).
    private let stopping = Atomic<Bool>(false)
    private let paused = Atomic<Bool>(false)
    /// Where paused vCPU threads wait; counts them so `pause()` can wait until all are parked.
    private let gate = ParkingGate()
    let vcpus: [VCPU]
    /// Each vCPU's exits by reason, indexed by vCPU id (ids are 0..<vcpus.count).
    let exitCounters: ExitCounters
    /// Called once, on the thread that ends the machine, after `exit` is recorded.
    let onFinish: @Sendable (GuestExit) -> Void

    init(vcpus: [VCPU], onFinish: @escaping @Sendable (GuestExit) -> Void) {
        self.vcpus = vcpus
        self.exitCounters = ExitCounters(count: vcpus.count)
        self.onFinish = onFinish
    }

    var isStopping: Bool { stopping.load(ordering: .sequentiallyConsistent) }
    var isPaused: Bool { paused.load(ordering: .sequentiallyConsistent) }

    /// Parks every vCPU outside `KVM_RUN` and returns once every vCPU thread started so far is
    /// parked (or the machine has ended). vCPU threads that start later park before they run
    /// any guest code, because `immediate_exit` is already set for them.
    func pause() {
        let kicked = requestPause()
        // A resume() racing with this pause releases the wait too (nobody will park then).
        gate.waitUntil { parked in parked >= kicked || self.isStopping || !self.isPaused }
    }

    /// Asks every vCPU to park, without waiting for it (callable from a vCPU thread, which parks
    /// after its current exit). `pause()` then waits for them.
    /// Returns how many vCPU threads were kicked (the ones started so far).
    @discardableResult
    func requestPause() -> Int {
        paused.store(true, ordering: .sequentiallyConsistent)
        let threads = state.withLock { $0.threads }
        for vcpu in vcpus { vcpu.requestImmediateExit(true) }
        for thread in threads { _ = pthread_kill(thread, VCPUKick.signal) }
        gate.wakeAll()
        return threads.count
    }

    /// Waits until `condition()` holds; re-checked whenever a vCPU parks, the machine ends or
    /// `requestPause()` is called.
    func waitUntil(_ condition: () -> Bool) { gate.waitUntil { _ in condition() } }

    /// Lets parked vCPUs run again.
    func resume() {
        paused.store(false, ordering: .sequentiallyConsistent)
        gate.wakeAll()
    }

    /// Called by a vCPU thread after an interrupted `KVM_RUN`: parks while paused, then clears
    /// `immediate_exit` so the vCPU can run. Returns false when the vCPU must end instead.
    ///
    /// `finish` and `pause` set their flag before `immediate_exit`; this clears `immediate_exit`
    /// before reading the flags again (with a full fence between), so a stop or pause that
    /// races with a resume is never lost: either it is seen here, or its `immediate_exit` write
    /// comes after the clear and the next `KVM_RUN` returns at once.
    func continueAfterInterrupt(_ vcpu: VCPU) -> Bool {
        while true {
            if isStopping { return false }
            if isPaused {
                gate.park { self.isPaused && !self.isStopping }
                continue
            }
            vcpu.requestImmediateExit(false)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            if !isStopping && !isPaused { return true }
        }
    }

    /// How the guest ended, once it has.
    var exit: GuestExit? { state.withLock { $0.exit } }

    /// Records a started vCPU thread so `finish` can signal it.
    func register(thread: pthread_t) {
        let stopNow = state.withLock { state -> Bool in
            state.threads.append(thread)
            return state.exit != nil
        }
        if stopNow { _ = pthread_kill(thread, VCPUKick.signal) }
    }

    /// Notes that the guest reported a kernel panic on its console.
    func notePanic() { state.withLock { $0.panicked = true } }

    /// Records `exit` if nothing was recorded yet, then stops every vCPU.
    func finish(_ exit: GuestExit) {
        let (first, threads) = state.withLock { state -> (Bool, [pthread_t]) in
            let first = state.exit == nil
            if first {
                let rebootAfterPanic = state.panicked && (exit == .reset || exit == .powerOff)
                state.exit = rebootAfterPanic ? .guestPanic(vcpu: 0) : exit
            }
            return (first, state.threads)
        }
        guard first else { return }
        stopping.store(true, ordering: .sequentiallyConsistent)
        gate.wakeAll()
        for vcpu in vcpus { vcpu.requestImmediateExit(true) }
        for thread in threads { _ = pthread_kill(thread, VCPUKick.signal) }
        onFinish(state.withLock { $0.exit! })
    }
}

/// The loop each vCPU thread runs: enter the guest, count the exit, dispatch it, repeat.
///
/// Per exit it allocates nothing, logs nothing, takes no lock and does no reference counting:
/// the dispatcher's buses are immutable values whose lookup copies only trivial values, devices
/// guard only their own state, and the exit counters are this vCPU's own cache line, reached
/// through a plain pointer.
enum VCPULoop {
    static func run(_ vcpu: VCPU, dispatcher: ExitDispatcher, control: RunControl) {
        let counters = control.exitCounters.slot(Int(vcpu.id))
        while true {
            let action: ExitDispatcher.Action
            do {
                let exit = try vcpu.run()
                counters.record(exit)
                action = dispatcher.handle(exit)
            } catch {
                control.finish(.vcpuFailed(vcpu: vcpu.id, error: error))
                return
            }
            switch action {
            case .resume:
                continue
            case .interrupted:
                if !control.continueAfterInterrupt(vcpu) { return }
            case .stop(let cause):
                let rip = (try? vcpu.registers().rip) ?? 0
                control.finish(ExitDispatcher.guestExit(for: cause, vcpu: vcpu.id, rip: rip))
                return
            }
        }
    }
}

/// A condition variable with a count of parked threads (POSIX mutex and condition, heap
/// allocated so they never move). No wait here times out: every condition waited on is
/// signalled by whoever changes it (`park`, or `wakeAll()` after the change).
final class ParkingGate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var parked = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Waits, counted as parked, while `stayParked()` is true.
    func park(while stayParked: () -> Bool) {
        pthread_mutex_lock(mutex)
        parked += 1
        pthread_cond_broadcast(condition)
        while stayParked() { pthread_cond_wait(condition, mutex) }
        parked -= 1
        pthread_mutex_unlock(mutex)
    }

    /// Waits until `done(parkedCount)` is true. Re-checked each time a thread parks and each
    /// time `wakeAll()` is called, and only then: whoever changes what `done` reads (outside
    /// the park count) must call `wakeAll()` after the change. Because `done` is evaluated with
    /// the gate's mutex held and `wakeAll()` takes that mutex, a change made just after `done`
    /// returned false is never missed: its `wakeAll()` waits until this thread is in
    /// pthread_cond_wait.
    func waitUntil(_ done: (Int) -> Bool) {
        pthread_mutex_lock(mutex)
        while !done(parked) { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// Runs `change` with the gate's mutex held, then wakes every waiting thread.
    func wakeAll(after change: () -> Void) {
        pthread_mutex_lock(mutex)
        change()
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Wakes every parked or waiting thread so it re-checks its condition.
    func wakeAll() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }
}
