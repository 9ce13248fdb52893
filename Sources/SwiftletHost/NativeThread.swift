import CHost
import Glibc

/// A dedicated POSIX thread running one closure (vCPU threads, the event-loop thread).
///
/// Swiftlet's blocking loops need real threads with known identities (a vCPU is kicked with
/// `pthread_kill`), not tasks on a shared pool.
package final class NativeThread: @unchecked Sendable {
    private var handle = pthread_t()
    private var joined = false

    /// Starts `body` on a new thread; `name` appears in errors. `stackSize` (bytes) replaces the
    /// default stack size, which glibc takes from RLIMIT_STACK; helper threads that only wait
    /// and copy bytes ask for `helperStackSize`.
    package init(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if let stackSize {
            let set = pthread_attr_setstacksize(&attributes, stackSize)
            if set != 0 { throw SystemError("pthread_attr_setstacksize \(name)", errno: set) }
        }
        let box = Unmanaged.passRetained(ThreadBody(name: name, body: body))
        let result = pthread_create(
            &handle, &attributes,
            { raw in
                let box = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
                box.body()
                return nil
            }, box.toOpaque())
        if result != 0 {
            box.release()
            throw SystemError("pthread_create \(name)", errno: result)
        }
    }

    /// A stack for threads that only wait and copy bytes (signal stopper, console writer).
    package static let helperStackSize = 256 << 10

    /// The pthread id, for `pthread_kill`.
    package var id: pthread_t { handle }

    /// Waits for the thread to finish (once; later calls return at once).
    package func join() {
        guard !joined else { return }
        joined = true
        pthread_join(handle, nil)
    }

    /// Lets the thread's resources go when it ends; it can no longer be joined.
    package func detach() {
        guard !joined else { return }
        joined = true
        pthread_detach(handle)
    }

    /// Sends `signal` to the thread.
    package func send(_ signal: Int32) {
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
