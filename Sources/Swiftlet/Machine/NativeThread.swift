import Glibc

/// A dedicated POSIX thread running one closure (vCPU threads, the event-loop thread).
///
/// Swiftlet's blocking loops need real threads with known identities (a vCPU is kicked with
/// `pthread_kill`), not tasks on a shared pool.
final class NativeThread: @unchecked Sendable {
    private var handle = pthread_t()
    private var joined = false

    /// Starts `body` on a new thread; `name` appears in errors.
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let box = Unmanaged.passRetained(ThreadBody(name: name, body: body))
        let result = pthread_create(&handle, nil, { raw in
            let box = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box.toOpaque())
        if result != 0 {
            box.release()
            throw SystemError("pthread_create \(name)", errno: result)
        }
    }

    /// The pthread id, for `pthread_kill`.
    var id: pthread_t { handle }

    /// Waits for the thread to finish (once; later calls return at once).
    func join() {
        guard !joined else { return }
        joined = true
        pthread_join(handle, nil)
    }

    /// Lets the thread's resources go when it ends; it can no longer be joined.
    func detach() {
        guard !joined else { return }
        joined = true
        pthread_detach(handle)
    }

    /// Sends `signal` to the thread.
    func send(_ signal: Int32) {
        _ = pthread_kill(handle, signal)
    }
}

private final class ThreadBody {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}
