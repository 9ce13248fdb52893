import CHost
import CKVM
import Glibc
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Feeds a virtio-net device's receive queue from its tap, on the event-loop thread.
///
/// The tap is watched (EPOLLIN) only while the driver has receive buffers the device could
/// not fill (the queue ended `.deferred`). When the driver has none (`.drained`), the loop stops
/// reading the tap and frames wait there (the kernel queues about 500 per tap, then drops and
/// counts them on the interface) until the driver adds buffers and notifies the queue, which
/// serves it again. A tap that reports an error or hang-up (its interface was deleted) is no
/// longer watched and the guest sees its link go down. While the device's receive limiter
/// refuses (`.throttled`), the tap is not watched either, and the limiter's timer brings the
/// pump back.
final class TapReceivePump: Sendable {
    private struct State {
        var watching = false
        var detached = false
    }

    private let tapDescriptor: Int32
    private let eventLoop: EventLoop
    private let state = Mutex(State())
    /// The receive limiter's retry timer (nil: no limiter), watched by the loop, which calls
    /// `serve` when it expires.
    private let retry: LoopTimer?

    init(tapDescriptor: Int32, eventLoop: EventLoop, retry: LoopTimer? = nil) {
        self.tapDescriptor = tapDescriptor
        self.eventLoop = eventLoop
        self.retry = retry
    }

    /// The driver notified the receive queue, the tap has frames, or the receive limiter's timer
    /// expired: fill receive buffers. While the limiter refuses, the tap is not watched (frames
    /// wait in it) and the timer is armed for the limiter's wait.
    @discardableResult
    func serve(_ transport: VirtioNetTransport) -> VirtioQueueService {
        let service = transport.processQueue(VirtioNet.receiveQueue)
        if transport.withDevice({ $0.backendFailure }) != nil {
            detach(transport)
            return service
        }
        // A yielded queue is served again from its notifier; the tap's watching stays as it is.
        guard service != .yielded else { return service }
        if case .throttled(let nanoseconds) = service { retry?.arm(afterNanoseconds: nanoseconds) }
        let change = state.withLock { state -> Bool? in
            let watch = service == .deferred
            guard !state.detached, watch != state.watching else { return nil }
            state.watching = watch
            return watch
        }
        if let watch = change { eventLoop.modify(tapDescriptor, events: watch ? EPOLLIN.rawValue : 0) }
        if service == .drained && tapHasFrames { transport.updateDevice { $0.countReceiveStall() } }
        return service
    }

    /// Whether a frame is waiting in the tap (a poll that does not wait).
    private var tapHasFrames: Bool {
        var descriptor = pollfd(fd: tapDescriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1 && descriptor.revents & Int16(POLLIN) != 0
    }

    /// The event loop's handler for the tap descriptor.
    func tapReady(_ events: UInt32, transport: VirtioNetTransport) {
        if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            detach(transport)
            return
        }
        serve(transport)
    }

    private func detach(_ transport: VirtioNetTransport) {
        let first = state.withLock { state -> Bool in
            defer { state.detached = true }
            return !state.detached
        }
        guard first else { return }
        eventLoop.remove(tapDescriptor)
        transport.setLinkUp(false)
    }
}
