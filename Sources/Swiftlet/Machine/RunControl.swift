import Glibc
import Synchronization

/// Shared by a machine's vCPU threads: the first way the guest ended, and the means to stop
/// every vCPU once it has.
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
    let vcpus: [VCPU]
    /// Called once, on the thread that ends the machine, after `exit` is recorded.
    let onFinish: @Sendable (GuestExit) -> Void

    init(vcpus: [VCPU], onFinish: @escaping @Sendable (GuestExit) -> Void) {
        self.vcpus = vcpus
        self.onFinish = onFinish
    }

    var isStopping: Bool { stopping.load(ordering: .acquiring) }

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
        stopping.store(true, ordering: .releasing)
        for vcpu in vcpus { vcpu.requestImmediateExit(true) }
        for thread in threads { _ = pthread_kill(thread, VCPUKick.signal) }
        onFinish(state.withLock { $0.exit! })
    }
}

/// The loop each vCPU thread runs: enter the guest, dispatch the exit, repeat.
///
/// Per exit it allocates nothing, logs nothing and takes no lock: the dispatcher's buses are
/// immutable values and devices guard only their own state.
enum VCPULoop {
    static func run(_ vcpu: VCPU, dispatcher: ExitDispatcher, control: RunControl) {
        while true {
            let action: ExitDispatcher.Action
            do {
                action = dispatcher.handle(try vcpu.run())
            } catch {
                control.finish(.vcpuFailed(vcpu: vcpu.id, error: error))
                return
            }
            switch action {
            case .resume:
                continue
            case .interrupted:
                if control.isStopping { return }
            case .stop(let cause):
                let rip = (try? vcpu.registers().rip) ?? 0
                control.finish(ExitDispatcher.guestExit(for: cause, vcpu: vcpu.id, rip: rip))
                return
            }
        }
    }
}
