import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Stops a machine cleanly when the process receives one of the given signals (SIGINT, SIGTERM,
/// ...): the machine ends as `.stopped(.signal(n))`, threads are joined and the terminal is
/// restored on the normal path instead of the process dying mid-run.
///
/// Create it on the main thread before `Machine.start()` and before any other thread exists:
/// it blocks the signals in the calling thread, so every thread started afterwards (vCPU and
/// event-loop threads) inherits the mask, and a dedicated thread receives them with sigwait(2).
/// Call `cancel()` when the machine has ended.
///
/// A second signal while the machine is still stopping is not left pending: it ends the
/// process at once as the signal's default action would (after restoring a raw-mode terminal),
/// the usual "press Ctrl-C again to force" behaviour.
public final class SignalStopper: Sendable {
    let waiter: NativeThread
    private let machine: Machine
    private let finished = CancellationFlag()
    private let wakeSignal: Int32

    /// Starts waiting for `signals` on behalf of `machine`.
    public init(stopping machine: Machine, on signals: [Int32]) throws(SystemError) {
        precondition(!signals.isEmpty, "SignalStopper needs at least one signal")
        var set = sigset_t()
        sigemptyset(&set)
        for sig in signals { sigaddset(&set, sig) }
        let blocked = pthread_sigmask(SIG_BLOCK, &set, nil)
        if blocked != 0 { throw SystemError("pthread_sigmask", errno: blocked) }
        wakeSignal = signals[0]
        self.machine = machine
        let mask = set
        let finished = self.finished
        waiter = try NativeThread(name: "signal stopper", stackSize: NativeThread.helperStackSize) {
            // The filter goes on once the machine has started: after the privilege drop, which
            // makes every thread call setuid and setgid itself (glibc's setxid broadcast). A
            // signal that comes meanwhile stays pending (blocked) until sigwait takes it.
            machine.waitUntilStarted(unless: { finished.isSet })
            if finished.isSet { return }
            do throws(SystemError) {
                try machine.installSeccompFilter(.signalStopper)
            } catch {
                machine.control.finish(.hostThreadFailed(error))
                return
            }
            var waitSet = mask
            var stopping = false
            while true {
                var received: Int32 = 0
                guard sigwait(&waitSet, &received) == 0 else { continue }
                if finished.isSet { return }
                if !stopping {
                    stopping = true
                    machine.stop(.signal(received))
                } else {
                    HostTerminal.restoreAndDie(of: received)
                }
            }
        }
    }

    /// Ends the waiting thread (after the machine has ended).
    public func cancel() {
        if finished.set() { return }
        machine.wakeStartWaiters()
        waiter.send(wakeSignal)
        waiter.join()
    }

    deinit { cancel() }
}

/// A flag set once, shared with a thread.
final class CancellationFlag: Sendable {
    private let value = Atomic<Bool>(false)

    var isSet: Bool { value.load(ordering: .acquiring) }

    /// Sets the flag; returns whether it was already set.
    func set() -> Bool { value.exchange(true, ordering: .acquiringAndReleasing) }
}
