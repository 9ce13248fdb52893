import CHost
import CKVM
import Glibc
import SwiftletHost

// The system calls each kind of Swiftlet thread may make (Docs/SECCOMP.md): one list per
// thread kind, in the order the filter compares them (frequent calls first). To let a thread
// make another call, add it to that thread's list here (and its line to Docs/SECCOMP.md); the
// ioctl requests a thread may make are its `ioctlRequests`.

/// The kinds of thread Swiftlet gives a seccomp filter of their own.
package enum SeccompThreadKind: CaseIterable, Sendable {
    /// A vCPU thread: `KVM_RUN` and the exit dispatch (`VCPULoop`).
    case vcpu
    /// The event-loop thread: virtio I/O, taps, console input, timers, snapshots (`EventLoop`).
    case eventLoop
    /// The console-writer thread (`ConsoleWriter`): the guest's output to stdout.
    case consoleWriter
    /// The signal-stopper thread (`SignalStopper`): SIGINT/SIGTERM/SIGHUP by sigwait.
    case signalStopper
    /// The CLI's `--snapshot-on-signal` thread: SIGUSR1 by sigwait, then a snapshot.
    case snapshotter
    /// The CLI's main thread once the machine has started: waits, reports, exits.
    case main

    /// The name the SIGSYS report and the docs use.
    package var name: StaticString {
        switch self {
        case .vcpu: "vcpu"
        case .eventLoop: "event-loop"
        case .consoleWriter: "console-writer"
        case .signalStopper: "signal-stopper"
        case .snapshotter: "snapshotter"
        case .main: "main"
        }
    }
}

extension SystemCall {
    // The calls the allowlists name (x86_64 numbers from the kernel headers, via CHost).
    static let accept4 = SystemCall(SWL_SYS_accept4)
    static let brk = SystemCall(SWL_SYS_brk)
    static let clockGetTime = SystemCall(SWL_SYS_clock_gettime)
    static let clockNanosleep = SystemCall(SWL_SYS_clock_nanosleep)
    static let close = SystemCall(SWL_SYS_close)
    static let connect = SystemCall(SWL_SYS_connect)
    static let epollCtl = SystemCall(SWL_SYS_epoll_ctl)
    static let epollPWait = SystemCall(SWL_SYS_epoll_pwait)
    static let epollWait = SystemCall(SWL_SYS_epoll_wait)
    static let exit = SystemCall(SWL_SYS_exit)
    static let exitGroup = SystemCall(SWL_SYS_exit_group)
    static let fdatasync = SystemCall(SWL_SYS_fdatasync)
    static let fstat = SystemCall(SWL_SYS_fstat)
    static let fsync = SystemCall(SWL_SYS_fsync)
    static let ftruncate = SystemCall(SWL_SYS_ftruncate)
    static let futex = SystemCall(SWL_SYS_futex)
    static let getpid = SystemCall(SWL_SYS_getpid)
    static let getrandom = SystemCall(SWL_SYS_getrandom)
    static let getrusage = SystemCall(SWL_SYS_getrusage)
    static let gettid = SystemCall(SWL_SYS_gettid)
    static let gettimeofday = SystemCall(SWL_SYS_gettimeofday)
    static let ioctl = SystemCall(SWL_SYS_ioctl)
    static let lseek = SystemCall(SWL_SYS_lseek)
    static let madvise = SystemCall(SWL_SYS_madvise)
    static let mincore = SystemCall(SWL_SYS_mincore)
    static let mkdir = SystemCall(SWL_SYS_mkdir)
    static let mkdirat = SystemCall(SWL_SYS_mkdirat)
    static let mmap = SystemCall(SWL_SYS_mmap)
    static let mprotect = SystemCall(SWL_SYS_mprotect)
    static let mremap = SystemCall(SWL_SYS_mremap)
    static let munmap = SystemCall(SWL_SYS_munmap)
    static let nanosleep = SystemCall(SWL_SYS_nanosleep)
    static let newfstatat = SystemCall(SWL_SYS_newfstatat)
    static let open = SystemCall(SWL_SYS_open)
    static let openat = SystemCall(SWL_SYS_openat)
    static let poll = SystemCall(SWL_SYS_poll)
    static let ppoll = SystemCall(SWL_SYS_ppoll)
    static let pread64 = SystemCall(SWL_SYS_pread64)
    static let preadv = SystemCall(SWL_SYS_preadv)
    static let pwrite64 = SystemCall(SWL_SYS_pwrite64)
    static let pwritev = SystemCall(SWL_SYS_pwritev)
    static let read = SystemCall(SWL_SYS_read)
    static let recvfrom = SystemCall(SWL_SYS_recvfrom)
    static let readv = SystemCall(SWL_SYS_readv)
    static let restartSyscall = SystemCall(SWL_SYS_restart_syscall)
    static let rtSigaction = SystemCall(SWL_SYS_rt_sigaction)
    static let rtSigprocmask = SystemCall(SWL_SYS_rt_sigprocmask)
    static let rtSigreturn = SystemCall(SWL_SYS_rt_sigreturn)
    static let rtSigtimedwait = SystemCall(SWL_SYS_rt_sigtimedwait)
    static let schedYield = SystemCall(SWL_SYS_sched_yield)
    static let sendto = SystemCall(SWL_SYS_sendto)
    static let shutdown = SystemCall(SWL_SYS_shutdown)
    static let socket = SystemCall(SWL_SYS_socket)
    static let statx = SystemCall(SWL_SYS_statx)
    static let tgkill = SystemCall(SWL_SYS_tgkill)
    static let timerfdSettime = SystemCall(SWL_SYS_timerfd_settime)
    static let unlink = SystemCall(SWL_SYS_unlink)
    static let unlinkat = SystemCall(SWL_SYS_unlinkat)
    static let write = SystemCall(SWL_SYS_write)
    static let writev = SystemCall(SWL_SYS_writev)
}

/// The allowlists, one per thread kind, and what they are compiled with.
package enum SeccompAllowlists {
    /// What a machine's filters depend on: the descriptor whose terminal mode the SIGSYS
    /// handler and `HostTerminal` restore (nil when the console is not a raw-mode terminal).
    package struct Context: Sendable {
        /// The raw-mode terminal's descriptor, if any.
        package var terminalDescriptor: Int32?
        /// A context with `terminalDescriptor`.
        package init(terminalDescriptor: Int32?) { self.terminalDescriptor = terminalDescriptor }
    }

    /// The rules of `kind`'s filter.
    package static func rules(for kind: SeccompThreadKind, _ context: Context) -> [SeccompRule] {
        let frequent: [SeccompRule]
        var signals = [UInt32(bitPattern: VCPUKick.signal)]
        switch kind {
        case .vcpu:
            frequent = ioctl(vcpuRequests, context) + [SeccompRule(.futex), SeccompRule(.write)]
        case .eventLoop:
            frequent =
                [
                    SeccompRule(.epollWait), SeccompRule(.epollPWait), SeccompRule(.read), SeccompRule(.write),
                    SeccompRule(.readv), SeccompRule(.writev), SeccompRule(.preadv), SeccompRule(.pwritev),
                    SeccompRule(.pread64), SeccompRule(.pwrite64), SeccompRule(.fdatasync), SeccompRule(.fsync),
                    SeccompRule(.futex),
                ] + ioctl(eventLoopRequests, context) + [
                    SeccompRule(.epollCtl), SeccompRule(.poll), SeccompRule(.ppoll), SeccompRule(.getrandom),
                    SeccompRule(.timerfdSettime), SeccompRule(.lseek), SeccompRule(.close),
                ] + snapshotFiles + vsockSockets
        case .consoleWriter:
            frequent = [SeccompRule(.poll), SeccompRule(.ppoll), SeccompRule(.write), SeccompRule(.futex)] + ioctl([], context)
        case .signalStopper:
            // A second signal ends the process by that signal (HostTerminal.restoreAndDie).
            signals += [UInt32(SIGINT), UInt32(SIGTERM), UInt32(SIGHUP)]
            frequent =
                [SeccompRule(.rtSigtimedwait), SeccompRule(.futex), SeccompRule(.write), SeccompRule(.rtSigaction)]
                + ioctl([], context)
        case .snapshotter:
            frequent =
                [SeccompRule(.rtSigtimedwait), SeccompRule(.futex), SeccompRule(.write), SeccompRule(.close)]
                + ioctl([], context) + snapshotFiles
        case .main:
            // cancel() of the signal stopper and the snapshotter wakes them with their signal.
            signals += [UInt32(SIGINT), UInt32(SIGUSR1)]
            frequent =
                [
                    SeccompRule(.futex), SeccompRule(.write), SeccompRule(.rtSigaction), SeccompRule(.close),
                    SeccompRule(.getrusage), SeccompRule(.mincore), SeccompRule(.unlink), SeccompRule(.unlinkat),
                ] + ioctl([], context) + snapshotFiles
        }
        return frequent + threadBasics(signals: signals)
    }

    /// What every Swiftlet thread needs from the Swift runtime, glibc and its allocator: memory
    /// (never executable), locks, signals returning, the clock, thread end, and kicking another
    /// thread with one of `signals` (pthread_kill blocks signals around it, hence getpid and
    /// rt_sigprocmask).
    static func threadBasics(signals: [UInt32]) -> [SeccompRule] {
        let noExec = SeccompCondition.argument(2, hasNoneOf: SWL_PROT_EXEC)
        return [
            SeccompRule(.rtSigreturn), SeccompRule(.rtSigprocmask), SeccompRule(.restartSyscall),
            SeccompRule(.mmap, where: noExec), SeccompRule(.mprotect, where: noExec), SeccompRule(.munmap),
            SeccompRule(.madvise), SeccompRule(.mremap), SeccompRule(.brk),
            SeccompRule(.clockGetTime), SeccompRule(.clockNanosleep), SeccompRule(.nanosleep), SeccompRule(.gettimeofday),
            SeccompRule(.schedYield), SeccompRule(.getpid), SeccompRule(.gettid),
            SeccompRule(.tgkill, where: .argument(2, isOneOf: signals)),
            SeccompRule(.exit), SeccompRule(.exitGroup),
        ]
    }

    /// Writing a snapshot (`Machine.snapshot(to:)`, on the event loop, or inline on the calling
    /// thread when the loop has ended): the directory, the two files, their sizes.
    static let snapshotFiles: [SeccompRule] = [
        SeccompRule(.openat), SeccompRule(.open), SeccompRule(.mkdir), SeccompRule(.mkdirat), SeccompRule(.ftruncate),
        SeccompRule(.fstat), SeccompRule(.newfstatat), SeccompRule(.statx),
    ]

    /// The vsock host side (`VsockUnixHost`): accepting host programs on its listening socket,
    /// connecting to `PATH_<port>` (Unix sockets only) for the guest, and the streams' data and
    /// half closes. Binding and listening happen while the machine is built, unlinking when it ends.
    static let vsockSockets: [SeccompRule] = [
        SeccompRule(.accept4), SeccompRule(.socket, where: .argument(0, isOneOf: [UInt32(AF_UNIX)])),
        SeccompRule(.connect), SeccompRule(.recvfrom), SeccompRule(.sendto), SeccompRule(.shutdown),
    ]

    /// A vCPU's requests: run it; the UART's interrupt line; its registers when it ends.
    static let vcpuRequests: [UInt] = [SWL_KVM_RUN, SWL_KVM_IRQ_LINE, SWL_KVM_GET_REGS]

    /// The event loop's requests: the UART's interrupt line (console input), the tap's receive
    /// offloads (set before the first read after the driver accepts them), and the reads of a
    /// snapshot (`SavedVCPU`, `SavedVM`, `KVM.msrIndexList`, capabilities).
    static let eventLoopRequests: [UInt] = [
        SWL_KVM_IRQ_LINE, SWL_TUNSETOFFLOAD,
        SWL_KVM_GET_REGS, SWL_KVM_GET_SREGS, SWL_KVM_GET_FPU, SWL_KVM_GET_XSAVE, SWL_KVM_GET_XCRS, SWL_KVM_GET_MSRS,
        SWL_KVM_GET_LAPIC, SWL_KVM_GET_MP_STATE, SWL_KVM_GET_VCPU_EVENTS, SWL_KVM_GET_DEBUGREGS, SWL_KVM_GET_CPUID2,
        SWL_KVM_GET_TSC_KHZ, SWL_KVM_GET_IRQCHIP, SWL_KVM_GET_PIT2, SWL_KVM_GET_CLOCK, SWL_KVM_GET_MSR_INDEX_LIST,
        SWL_KVM_CHECK_EXTENSION,
    ]

    /// ioctl with one of `requests` on any descriptor, or tcsetattr's requests on the terminal
    /// (every thread may restore the terminal mode: the SIGSYS handler does); no rule when
    /// there is neither.
    static func ioctl(_ requests: [UInt], _ context: Context) -> [SeccompRule] {
        var alternatives: [[SeccompCondition]] = []
        if !requests.isEmpty {
            alternatives.append([.argument(1, isOneOf: requests.map { UInt32(truncatingIfNeeded: $0) })])
        }
        if let terminal = context.terminalDescriptor {
            alternatives.append([
                .argument(0, isOneOf: [UInt32(bitPattern: terminal)]),
                // glibc's tcsetattr reads the mode back (TCGETS) after setting it.
                .argument(1, isOneOf: [SWL_TCSETS, SWL_TCSETSW, SWL_TCSETSF, SWL_TCGETS]),
            ])
        }
        return alternatives.isEmpty ? [] : [SeccompRule(.ioctl, whereAnyOf: alternatives)]
    }

    /// Every kind's filter, compiled for `context`.
    package static func filters(_ context: Context) throws(SeccompCompileError) -> [SeccompThreadKind: SeccompFilter] {
        var filters: [SeccompThreadKind: SeccompFilter] = [:]
        for kind in SeccompThreadKind.allCases {
            filters[kind] = try SeccompFilter(rules: rules(for: kind, context))
        }
        return filters
    }
}
