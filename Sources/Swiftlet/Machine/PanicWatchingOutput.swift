import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory
import Synchronization

/// Passes guest console output through and watches it for Linux's panic message, so a guest
/// that panics and then reboots (`panic=N`) ends as `.guestPanic`, not as a clean reset.
///
/// Matching is a streaming comparison against one fixed string: no allocation per byte.
struct PanicWatchingOutput: SerialOutput {
    static let pattern = Array("Kernel panic - not syncing".utf8)

    let output: any SerialOutput
    let control: RunControl
    private let matched = MatchState()

    init(_ output: any SerialOutput, control: RunControl) {
        self.output = output
        self.control = control
    }

    func write(_ bytes: UnsafeRawBufferPointer) {
        output.write(bytes)
        for byte in bytes where matched.advance(byte, pattern: Self.pattern) {
            control.notePanic()
        }
    }
}

/// Progress through the pattern; the pattern's first byte does not recur in it, so a mismatch
/// restarts at zero (or one, if the byte starts a new match).
final class MatchState: Sendable {
    private let position = Atomic<Int>(0)

    /// Feeds a byte; true when it completes the pattern.
    func advance(_ byte: UInt8, pattern: [UInt8]) -> Bool {
        var index = position.load(ordering: .relaxed)
        if byte == pattern[index] {
            index += 1
        } else {
            index = byte == pattern[0] ? 1 : 0
        }
        if index == pattern.count {
            position.store(0, ordering: .relaxed)
            return true
        }
        position.store(index, ordering: .relaxed)
        return false
    }
}
