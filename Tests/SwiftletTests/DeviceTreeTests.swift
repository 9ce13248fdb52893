import CLibFDT
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private let encodingCases: [(FDTValue, [UInt8])] = [
    (.empty, []),
    (.u32(0x1234_5678), [0x12, 0x34, 0x56, 0x78]),
    (.u64(0x0102_0304_0506_0708), [1, 2, 3, 4, 5, 6, 7, 8]),
    (.cells([1, 0xAABB_CCDD]), [0, 0, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD]),
    (.cells([]), []),
    (.cells(splitting: [0x8000_0000, 0x1_0000_0002]), [0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]),
    (.string("abc"), [0x61, 0x62, 0x63, 0]),
    (.string(""), [0]),
    (.strings(["a", "bc"]), [0x61, 0, 0x62, 0x63, 0]),
    (.strings([]), []),
    (.bytes([0xDE, 0xAD, 0xBE, 0xEF, 0x01]), [0xDE, 0xAD, 0xBE, 0xEF, 0x01]),
    (.phandle(FDTPhandle(rawValue: 0x0102)), [0, 0, 1, 2]),
]

@Suite("Device tree builder")
struct DeviceTreeTests {
    @Test("an empty tree is a valid blob: magic, version 17, a root without properties")
    func emptyTree() throws {
        let blob = try DeviceTreeBuilder().finish()
        #expect(Array(blob.bytes.prefix(4)) == [0xD0, 0x0D, 0xFE, 0xED])
        let totalSize = blob.bytes[4..<8].reduce(0) { $0 << 8 | Int($1) }
        #expect(totalSize == blob.bytes.count)
        #expect(blob.bytes[20..<24] == [0, 0, 0, 17])
        #expect(try blob.propertyNames(of: "/") == [])
        #expect(try blob.childNames(of: "/") == [])
        #expect(blob.hasNode("/"))
        #expect(!blob.hasNode("/chosen"))
    }

    @Test("property encodings are big-endian and read back byte for byte through fdt_getprop", arguments: encodingCases)
    func encodings(value: FDTValue, expected: [UInt8]) throws {
        #expect(value.encoded == expected)
        var tree = try DeviceTreeBuilder()
        let node = try tree.addNode("node")
        try tree.setProperty("value", value, on: node)
        let blob = try tree.finish()
        #expect(try blob.property("value", of: "/node") == expected)
        // Straight through libfdt as well.
        blob.bytes.withUnsafeBytes { fdt in
            let offset = fdt_path_offset(fdt.baseAddress, "/node")
            #expect(offset > 0)
            var length: Int32 = -1
            let pointer = fdt_getprop(fdt.baseAddress, offset, "value", &length)
            #expect(pointer != nil)
            #expect(Int(length) == expected.count)
            if let pointer { #expect(Array(UnsafeRawBufferPointer(start: pointer, count: Int(length))) == expected) }
        }
    }

    @Test("typed read-back: u32, u64, cells, string, string list")
    func typedReadBack() throws {
        var tree = try DeviceTreeBuilder()
        try tree.setProperties(
            [
                "one": .u32(7), "wide": .u64(0xFFFF_0000_1234_5678), "list": .cells([3, 2, 1]),
                "name": .string("swiftlet"), "compatible": .strings(["x,y", "z"]), "flag": .empty,
            ], on: .root)
        let blob = try tree.finish()
        #expect(try blob.u32("one", of: "/") == 7)
        #expect(try blob.u64("wide", of: "/") == 0xFFFF_0000_1234_5678)
        #expect(try blob.cells("list", of: "/") == [3, 2, 1])
        #expect(try blob.string("name", of: "/") == "swiftlet")
        #expect(try blob.strings("compatible", of: "/") == ["x,y", "z"])
        #expect(try blob.property("flag", of: "/") == [])
        #expect(blob.hasProperty("flag", of: "/"))
        // Reading a value as the wrong shape is FDT_ERR_BADVALUE; a missing one FDT_ERR_NOTFOUND.
        #expect(throws: FDTError("read property \"list\" of / as one cell", code: FDT_ERR_BADVALUE)) {
            try blob.u32("list", of: "/")
        }
        #expect(throws: FDTError("read property \"one\" of / as strings", code: FDT_ERR_BADVALUE)) {
            try blob.string("one", of: "/")
        }
        #expect(throws: FDTError("read property \"missing\" of /", code: FDT_ERR_NOTFOUND)) {
            try blob.property("missing", of: "/")
        }
        #expect(throws: FDTError("find node /nowhere", code: FDT_ERR_NOTFOUND)) { try blob.property("one", of: "/nowhere") }
    }

    @Test("nodes and properties keep the order they were added in")
    func insertionOrder() throws {
        var tree = try DeviceTreeBuilder()
        let cpus = try tree.addNode("cpus")
        try tree.addNode("memory@0")
        try tree.addNode("chosen")
        for index in 0..<4 { try tree.addNode("cpu@\(index)", under: cpus) }
        try tree.setProperties(["#address-cells": .u32(1), "#size-cells": .u32(0)], on: cpus)
        try tree.setProperty("z", .empty, on: .root)
        try tree.setProperty("a", .empty, on: .root)
        try tree.setProperty("z", .u32(1), on: .root)  // replacing keeps the place
        let blob = try tree.finish()
        #expect(try blob.childNames(of: "/") == ["cpus", "memory@0", "chosen"])
        #expect(try blob.childNames(of: "/cpus") == ["cpu@0", "cpu@1", "cpu@2", "cpu@3"])
        #expect(try blob.propertyNames(of: "/cpus") == ["#address-cells", "#size-cells"])
        #expect(try blob.propertyNames(of: "/") == ["z", "a"])
        #expect(try blob.u32("z", of: "/") == 1)
    }

    @Test("setting a property again replaces its value")
    func replaceProperty() throws {
        var tree = try DeviceTreeBuilder()
        try tree.setProperty("bootargs", .string("console=ttyS0 a-much-longer-command-line"), on: .root)
        try tree.setProperty("bootargs", .string("short"), on: .root)
        let blob = try tree.finish()
        #expect(try blob.string("bootargs", of: "/") == "short")
        #expect(try blob.propertyNames(of: "/") == ["bootargs"])
    }

    @Test("phandles: numbered from 1, one per node, resolvable back to the node")
    func phandles() throws {
        var tree = try DeviceTreeBuilder()
        let gic = try tree.addNode("intc@8000000")
        let clock = try tree.addNode("clock")
        let first = try tree.addPhandle(to: gic)
        let second = try tree.addPhandle(to: clock)
        #expect(first == FDTPhandle(rawValue: 1))
        #expect(second == FDTPhandle(rawValue: 2))
        #expect(try tree.addPhandle(to: gic) == first)
        try tree.setProperty("interrupt-parent", .phandle(first), on: .root)
        let blob = try tree.finish()
        #expect(try blob.u32("phandle", of: "/intc@8000000") == 1)
        #expect(try blob.phandle(of: "/clock") == second)
        #expect(try blob.phandle(of: "/") == nil)
        #expect(try blob.path(of: FDTPhandle(rawValue: try blob.u32("interrupt-parent", of: "/"))) == "/intc@8000000")
        #expect(throws: FDTError("find the node with phandle 9", code: FDT_ERR_NOTFOUND)) {
            try blob.path(of: FDTPhandle(rawValue: 9))
        }
    }

    @Test("libfdt's errors: a duplicate node is FDT_ERR_EXISTS, a missing node FDT_ERR_NOTFOUND")
    func libfdtErrors() throws {
        var tree = try DeviceTreeBuilder()
        let cpus = try tree.addNode("cpus")
        try tree.addNode("cpu@0", under: cpus)

        let duplicate = #expect(throws: FDTError.self) { try tree.addNode("cpu@0", under: cpus) }
        #expect(duplicate?.code == FDT_ERR_EXISTS)
        #expect(duplicate?.message == "FDT_ERR_EXISTS")
        #expect(duplicate?.description == "add node \"cpu@0\" under /cpus: FDT_ERR_EXISTS")

        let orphan = #expect(throws: FDTError.self) { try tree.addNode("cpu@1", under: DeviceTreeNode.root.child("missing")) }
        #expect(orphan?.code == FDT_ERR_NOTFOUND)
        #expect(orphan?.message == String(cString: fdt_strerror(-FDT_ERR_NOTFOUND)))

        let property = #expect(throws: FDTError.self) { try tree.setProperty("reg", .u32(0), on: cpus.child("cpu@9")) }
        #expect(property?.code == FDT_ERR_NOTFOUND)
        let phandle = #expect(throws: FDTError.self) { try tree.addPhandle(to: cpus.child("cpu@9")) }
        #expect(phandle?.code == FDT_ERR_NOTFOUND)

        // The failed calls left the tree as it was.
        let blob = try tree.finish()
        #expect(try blob.childNames(of: "/cpus") == ["cpu@0"])
    }

    @Test("FDTError keeps libfdt's code positive and names it with fdt_strerror")
    func errorValues() {
        let error = FDTError("pack", code: -FDT_ERR_NOSPACE)
        #expect(error.code == FDT_ERR_NOSPACE)
        #expect(error == FDTError("pack", code: FDT_ERR_NOSPACE))
        #expect(error.message == "FDT_ERR_NOSPACE")
        #expect(error.description == "pack: FDT_ERR_NOSPACE")
    }

    @Test(
        "node names the spec does not allow are refused with FDT_ERR_BADPATH",
        arguments: ["", "a/b", "/", "1cpu", "@0", "cpu@", "cpu@0@1", "a b", String(repeating: "n", count: 32), "ü", "a\u{0}b"])
    func badNodeNames(name: String) throws {
        var tree = try DeviceTreeBuilder()
        let error = #expect(throws: FDTError.self) { try tree.addNode(name) }
        #expect(error?.code == FDT_ERR_BADPATH)
    }

    @Test(
        "node names the spec allows are accepted",
        arguments: [
            "cpus", "cpu@0", "virtio_mmio@a000000", "A,b-c.d+e", "intc@8000000", String(repeating: "n", count: 31), "x@1,2",
        ])
    func goodNodeNames(name: String) throws {
        var tree = try DeviceTreeBuilder()
        try tree.addNode(name)
        #expect(try tree.finish().childNames(of: "/") == [name])
    }

    @Test("property names outside the spec and strings with a NUL are refused with FDT_ERR_BADVALUE")
    func badProperties() throws {
        var tree = try DeviceTreeBuilder()
        for name in ["", "a b", "a/b", "a@b", String(repeating: "p", count: 32)] {
            let error = #expect(throws: FDTError.self) { try tree.setProperty(name, .empty, on: .root) }
            #expect(error?.code == FDT_ERR_BADVALUE)
        }
        for value: FDTValue in [.string("a\u{0}b"), .strings(["ok", "\u{0}"])] {
            let error = #expect(throws: FDTError.self) { try tree.setProperty("p", value, on: .root) }
            #expect(error?.code == FDT_ERR_BADVALUE)
        }
        try tree.setProperty("#interrupt-cells", .u32(3), on: .root)
        try tree.setProperty("linux,initrd-start", .u64(0), on: .root)
        try tree.setProperty("status?", .string("okay"), on: .root)
        #expect(try tree.finish().propertyNames(of: "/") == ["#interrupt-cells", "linux,initrd-start", "status?"])
    }

    @Test("the buffer grows as the tree does: far beyond the initial capacity")
    func growth() throws {
        var tree = try DeviceTreeBuilder(capacity: 256)
        let parent = try tree.addNode("devices")
        for index in 0..<600 {
            let node = try tree.addNode("device@\(String(index, radix: 16))", under: parent)
            try tree.setProperties(["reg": .cells([UInt32(index)]), "label": .string("device number \(index)")], on: node)
        }
        try tree.setProperty("blob", .bytes([UInt8](repeating: 0xA5, count: 100_000)), on: .root)
        let blob = try tree.finish()
        #expect(blob.bytes.count > 100_000 + 600 * 40)
        let names = try blob.childNames(of: "/devices")
        #expect(names.count == 600)
        #expect(names.last == "device@257")
        #expect(try blob.string("label", of: "/devices/device@12b") == "device number 299")
        #expect(try blob.property("blob", of: "/").count == 100_000)
    }

    @Test("a blob is checked with fdt_check_full: truncated or corrupted bytes are refused")
    func blobCheck() throws {
        var tree = try DeviceTreeBuilder()
        try tree.setProperty("compatible", .strings(["linux,dummy-virt"]), on: .root)
        let bytes = try tree.finish().bytes
        #expect(fdt_check_full(bytes, bytes.count) == 0)

        let truncated = #expect(throws: FDTError.self) { try DeviceTreeBlob(bytes: Array(bytes.dropLast(8))) }
        #expect(truncated?.code == FDT_ERR_TRUNCATED)

        var badMagic = bytes
        badMagic[0] = 0
        let magic = #expect(throws: FDTError.self) { try DeviceTreeBlob(bytes: badMagic) }
        #expect(magic?.code == FDT_ERR_BADMAGIC)

        let empty = #expect(throws: FDTError.self) { try DeviceTreeBlob(bytes: []) }
        #expect(empty != nil)
    }
}
