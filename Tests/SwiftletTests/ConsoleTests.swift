import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

/// Feeds every byte of `input` and returns the outcomes in order.
private func feed(_ escape: inout ConsoleEscape, _ input: [UInt8]) -> [ConsoleEscape.Outcome] {
    input.map { escape.feed($0) }
}

/// The bytes the guest receives for `input`, and whether a stop was requested (feeding stops there).
private func run(_ input: [UInt8]) -> (forwarded: [UInt8], stopped: Bool) {
    var escape = ConsoleEscape()
    var forwarded: [UInt8] = []
    for byte in input {
        switch escape.feed(byte) {
        case .forward(let bytes): forwarded += bytes
        case .stop: return (forwarded, true)
        }
    }
    return (forwarded, false)
}

private let ctrlA: UInt8 = 0x01

@Suite("ConsoleEscape")
struct ConsoleTests {
    @Test("plain bytes are forwarded one for one")
    func plainBytes() {
        var escape = ConsoleEscape()
        let input = Array("ls -l\r".utf8) + [0x03, 0x1B, 0x00, 0x7F, 0xFF, 0x02]
        #expect(feed(&escape, input) == input.map { .forward([$0]) })
        #expect(escape == ConsoleEscape())
    }

    @Test("Ctrl-A x and Ctrl-A X stop", arguments: [UInt8(ascii: "x"), UInt8(ascii: "X")])
    func stop(key: UInt8) {
        var escape = ConsoleEscape()
        #expect(escape.feed(ctrlA) == .forward([]))
        #expect(escape.feed(key) == .stop)
        // The escape is over: the next byte is plain again.
        #expect(escape.feed(key) == .forward([key]))
        #expect(run(Array("abc".utf8) + [ctrlA, key] + Array("def".utf8)) == (Array("abc".utf8), true))
    }

    @Test("Ctrl-A Ctrl-A forwards a single Ctrl-A")
    func doubledPrefix() {
        var escape = ConsoleEscape()
        #expect(feed(&escape, [ctrlA, ctrlA]) == [.forward([]), .forward([ctrlA])])
        #expect(escape == ConsoleEscape())
        // And the state is clear afterwards: x is just x.
        #expect(escape.feed(UInt8(ascii: "x")) == .forward([UInt8(ascii: "x")]))
        #expect(run([ctrlA, ctrlA, ctrlA, ctrlA]) == ([ctrlA, ctrlA], false))
        #expect(run([ctrlA, ctrlA, UInt8(ascii: "x")]) == ([ctrlA, UInt8(ascii: "x")], false))
    }

    @Test(
        "Ctrl-A then another byte forwards both",
        arguments: [UInt8(ascii: "a"), UInt8(ascii: "c"), 0x00, 0x03, 0x1B, 0xFF, UInt8(ascii: "y")])
    func prefixThenOther(byte: UInt8) {
        var escape = ConsoleEscape()
        #expect(escape.feed(ctrlA) == .forward([]))
        #expect(escape.feed(byte) == .forward([ctrlA, byte]))
        #expect(escape == ConsoleEscape())
    }

    @Test("the escape state spans separate feeds and reads")
    func stateSpansCalls() {
        var escape = ConsoleEscape()
        // One read ends with Ctrl-A...
        #expect(feed(&escape, Array("hi".utf8) + [ctrlA]) == [.forward([0x68]), .forward([0x69]), .forward([])])
        #expect(escape != ConsoleEscape(), "a pending prefix is state")
        // ...the next read starts with x.
        #expect(escape.feed(UInt8(ascii: "x")) == .stop)

        var second = ConsoleEscape()
        _ = second.feed(ctrlA)
        let copy = second
        var resumed = copy
        #expect(resumed.feed(UInt8(ascii: "X")) == .stop, "the pending prefix travels with the value")
        #expect(second.feed(UInt8(ascii: "q")) == .forward([ctrlA, UInt8(ascii: "q")]))
    }

    @Test("the prefix byte is Ctrl-A")
    func prefixValue() {
        #expect(ConsoleEscape.prefix == 0x01)
        #expect(run([0x02, UInt8(ascii: "x")]) == ([0x02, UInt8(ascii: "x")], false))
    }
}
