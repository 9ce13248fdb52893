import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Controlling a started machine from any thread: pause, resume, and waiting asynchronously.
extension Machine {
    /// Stops every vCPU outside the guest and returns once they are all parked. The guest's
    /// state stays as it is (a later snapshot reads it from here); devices keep their state.
    /// Pausing before `start()` makes the machine start paused. Does nothing once it has ended.
    public func pause() {
        control.pause()
    }

    /// Lets a paused machine run again.
    public func resume() {
        control.resume()
    }

    /// Whether the machine is paused (between `pause()` and `resume()`).
    public var isPaused: Bool { control.isPaused }

    /// Waits, without blocking the caller's thread, until the guest ends; returns how it ended.
    /// Equivalent to `wait()` on a dedicated thread.
    public func waitUntilExit() async -> GuestExit {
        await withCheckedContinuation { (continuation: CheckedContinuation<GuestExit, Never>) in
            do {
                try NativeThread(name: "machine waiter") { continuation.resume(returning: self.wait()) }.detach()
            } catch {
                // No thread could be made: wait on this one instead of failing the caller.
                continuation.resume(returning: self.wait())
            }
        }
    }
}

extension Machine {
    /// Queues `bytes` as console input for the guest (from any thread). They reach the UART in
    /// order as its receive FIFO has room; nothing is dropped.
    public func sendConsoleInput(_ bytes: [UInt8]) {
        consoleInput.send(bytes)
    }

    /// Nanoseconds from process start to the guest's boot-timer write, once it has happened
    /// (nil without `configuration.bootTimer`).
    public var bootTime: UInt64? { bootTimer?.bootNanoseconds }
}
