import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Stopping a vCPU from another thread: set `immediate_exit` in its `kvm_run`, then send its
/// thread a real-time signal whose handler does nothing. The signal interrupts a `KVM_RUN` in
/// progress (EINTR); `immediate_exit` covers the window before the thread enters `KVM_RUN`.
enum VCPUKick {
    /// SIGRTMIN + 2 (glibc reserves the first two real-time signals for itself).
    static let signal: Int32 = __libc_current_sigrtmin() + 2

    /// Installs the no-op handler once per process (without SA_RESTART, so KVM_RUN returns).
    static let installed: Bool = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        return sigaction(signal, &action, nil) == 0
    }()
}

extension VCPUKick {
    /// Makes sure the calling (vCPU) thread can receive the kick signal.
    static func unblock() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
