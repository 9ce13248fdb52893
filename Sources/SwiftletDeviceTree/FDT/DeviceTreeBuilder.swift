import CLibFDT
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// A node of a tree being built, named by its path (`/`, `/cpus`, `/cpus/cpu@0`).
///
/// libfdt identifies nodes by their offset in the blob, and every insertion moves the nodes
/// after it; a path stays valid, so it is what the builder hands out.
package struct DeviceTreeNode: Hashable, Sendable, CustomStringConvertible {
    /// The node's absolute path, e.g. `/cpus/cpu@0`.
    package let path: String

    /// The root node, `/`.
    package static let root = DeviceTreeNode(path: "/")

    init(path: String) { self.path = path }

    /// The path of the child called `name`.
    func child(_ name: String) -> DeviceTreeNode {
        DeviceTreeNode(path: path == "/" ? "/" + name : path + "/" + name)
    }

    /// The node's path.
    package var description: String { path }
}

/// Builds a flattened device tree with libfdt's read-write functions (`fdt_add_subnode`,
/// `fdt_setprop`): add nodes, set properties, give nodes phandles, then `finish()` for the
/// packed and checked blob, nodes and properties in the order they were added.
///
///     var tree = try DeviceTreeBuilder()
///     try tree.setProperty("#address-cells", .u32(2), on: .root)
///     let cpus = try tree.addNode("cpus")
///     let blob = try tree.finish()
///
/// The blob lives in a byte array that doubles whenever libfdt runs out of room
/// (`FDT_ERR_NOSPACE`), so callers never size it. Errors are libfdt's, in `FDTError`.
package struct DeviceTreeBuilder: Sendable {
    private var buffer: [UInt8]

    /// The buffer size a new tree starts with; it grows as needed.
    package static let initialCapacity = 4096
    /// The largest blob libfdt can address (its offsets are `int`).
    package static let maximumSize = Int(Int32.max)

    /// Starts an empty tree: a root node with no properties.
    package init(capacity: Int = initialCapacity) throws(FDTError) {
        let size = min(max(capacity, 256), Self.maximumSize)
        buffer = [UInt8](repeating: 0, count: size)
        try FDTError.check(
            buffer.withUnsafeMutableBytes { fdt_create_empty_tree($0.baseAddress, Int32(size)) }, "create an empty tree")
    }

    /// Adds a node called `name` (`cpus`, `cpu@0`) under `parent` and returns it.
    /// Fails with `FDT_ERR_EXISTS` if `parent` already has a child of that name,
    /// `FDT_ERR_NOTFOUND` if `parent` is not in the tree, and `FDT_ERR_BADPATH` if `name` is not
    /// a node name: 1 to 31 letters, digits or `,._+-` starting with a letter, then optionally
    /// `@` and a unit address of the same characters.
    @discardableResult
    package mutating func addNode(_ name: String, under parent: DeviceTreeNode = .root) throws(FDTError) -> DeviceTreeNode {
        let operation = "add node \"\(name)\" under \(parent)"
        guard Self.isValidNodeName(name) else { throw FDTError(operation, code: FDT_ERR_BADPATH) }
        try modify(operation) { fdt in
            let parentOffset = fdt_path_offset(fdt, parent.path)
            return parentOffset < 0 ? parentOffset : fdt_add_subnode(fdt, parentOffset, name)
        }
        return parent.child(name)
    }

    /// Sets property `name` of `node` to `value`, replacing any value it had.
    /// Fails with `FDT_ERR_NOTFOUND` if `node` is not in the tree, and `FDT_ERR_BADVALUE` if
    /// `name` is not a property name (1 to 31 letters, digits or `,._+?#-`) or a string in
    /// `value` contains a NUL.
    package mutating func setProperty(_ name: String, _ value: FDTValue, on node: DeviceTreeNode) throws(FDTError) {
        let operation = "set property \"\(name)\" of \(node)"
        guard Self.isValidPropertyName(name), !value.hasEmbeddedNUL else { throw FDTError(operation, code: FDT_ERR_BADVALUE) }
        let bytes = value.encoded
        guard bytes.count <= Self.maximumSize else { throw FDTError(operation, code: FDT_ERR_NOSPACE) }
        try modify(operation) { fdt in
            let offset = fdt_path_offset(fdt, node.path)
            guard offset >= 0 else { return offset }
            return bytes.withUnsafeBytes { fdt_setprop(fdt, offset, name, $0.baseAddress, Int32($0.count)) }
        }
    }

    /// Sets several properties of `node`, in order.
    package mutating func setProperties(_ properties: KeyValuePairs<String, FDTValue>, on node: DeviceTreeNode) throws(FDTError) {
        for (name, value) in properties { try setProperty(name, value, on: node) }
    }

    /// Gives `node` a phandle (its `phandle` property), one above the highest in the tree, and
    /// returns it; a node that has one keeps it. Fails with `FDT_ERR_NOTFOUND` if `node` is not
    /// in the tree and `FDT_ERR_NOPHANDLES` when the phandle space is used up.
    @discardableResult
    package mutating func addPhandle(to node: DeviceTreeNode) throws(FDTError) -> FDTPhandle {
        let operation = "give \(node) a phandle"
        var phandle: UInt32 = 0
        try FDTError.check(
            buffer.withUnsafeBytes { fdt in
                let offset = fdt_path_offset(fdt.baseAddress, node.path)
                guard offset >= 0 else { return offset }
                phandle = fdt_get_phandle(fdt.baseAddress, offset)
                return phandle != 0 ? 0 : fdt_generate_phandle(fdt.baseAddress, &phandle)
            }, operation)
        try setProperty("phandle", .u32(phandle), on: node)
        return FDTPhandle(rawValue: phandle)
    }

    /// The finished blob, checked with `fdt_check_full`, with every node and property in the
    /// order it was added.
    ///
    /// libfdt's read-write functions insert a new node or property *first* among its siblings,
    /// so the working tree holds them in reverse. The blob is written afresh with libfdt's
    /// sequential-write functions (`fdt_create`, `fdt_begin_node`, `fdt_property`), visiting
    /// siblings last to first: insertion order again, and packed (no free space).
    package func finish() throws(FDTError) -> DeviceTreeBlob {
        var capacity = buffer.count
        while true {
            var output = [UInt8](repeating: 0, count: capacity)
            let result = buffer.withUnsafeBytes { source in
                output.withUnsafeMutableBytes {
                    Self.writeInOrder(source.baseAddress!, into: $0.baseAddress!, size: Int32(capacity))
                }
            }
            if result == -FDT_ERR_NOSPACE, capacity < Self.maximumSize {
                capacity = min(capacity * 2, Self.maximumSize)
                continue
            }
            try FDTError.check(result, "write out the finished tree")
            let size = Int(output.withUnsafeBytes { swiftlet_fdt_totalsize($0.baseAddress) })
            output.removeLast(output.count - size)
            return try DeviceTreeBlob(bytes: output)
        }
    }

    /// Writes the tree at `source` into `fdt` (`size` bytes) with the sequential-write functions.
    private static func writeInOrder(_ source: UnsafeRawPointer, into fdt: UnsafeMutableRawPointer, size: Int32) -> Int32 {
        var result = fdt_create(fdt, size)
        if result == 0 { result = fdt_finish_reservemap(fdt) }
        if result == 0 { result = copyNode(at: 0, of: source, into: fdt) }
        if result == 0 { result = fdt_finish(fdt) }
        return result
    }

    /// Copies the node at `offset` of `source`, its properties and its subtree, into `fdt`,
    /// reversing the order of siblings; 0 or a negative libfdt error.
    private static func copyNode(at offset: Int32, of source: UnsafeRawPointer, into fdt: UnsafeMutableRawPointer) -> Int32 {
        var result = fdt_begin_node(fdt, fdt_get_name(source, offset, nil))
        guard result == 0 else { return result }

        var properties: [Int32] = []
        var property = fdt_first_property_offset(source, offset)
        while property >= 0 {
            properties.append(property)
            property = fdt_next_property_offset(source, property)
        }
        guard property == -FDT_ERR_NOTFOUND else { return property }
        for property in properties.reversed() {
            var name: UnsafePointer<CChar>?
            var length: Int32 = 0
            guard let value = fdt_getprop_by_offset(source, property, &name, &length) else { return length }
            result = fdt_property(fdt, name, value, length)
            guard result == 0 else { return result }
        }

        var children: [Int32] = []
        var child = fdt_first_subnode(source, offset)
        while child >= 0 {
            children.append(child)
            child = fdt_next_subnode(source, child)
        }
        guard child == -FDT_ERR_NOTFOUND else { return child }
        for child in children.reversed() {
            result = copyNode(at: child, of: source, into: fdt)
            guard result == 0 else { return result }
        }
        return fdt_end_node(fdt)
    }

    // MARK: - Growing the buffer

    /// Runs `body` on the blob, doubling the buffer and retrying while libfdt reports
    /// `FDT_ERR_NOSPACE`.
    private mutating func modify(_ operation: String, _ body: (UnsafeMutableRawPointer) -> Int32) throws(FDTError) {
        while true {
            let result = buffer.withUnsafeMutableBytes { body($0.baseAddress!) }
            if result >= 0 { return }
            guard result == -FDT_ERR_NOSPACE else { throw FDTError(operation, code: result) }
            try grow(operation)
        }
    }

    private mutating func grow(_ operation: String) throws(FDTError) {
        guard buffer.count < Self.maximumSize else { throw FDTError(operation, code: FDT_ERR_NOSPACE) }
        let size = min(buffer.count * 2, Self.maximumSize)
        var larger = [UInt8](repeating: 0, count: size)
        let result = buffer.withUnsafeBytes { old in
            larger.withUnsafeMutableBytes { fdt_open_into(old.baseAddress, $0.baseAddress, Int32(size)) }
        }
        try FDTError.check(result, "\(operation) (growing the tree to \(size) bytes)")
        buffer = larger
    }

    // MARK: - Names (Devicetree Specification 2.2.1 and 2.2.4.1)

    private static func isNameCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: ","), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "+"), UInt8(ascii: "-"):
            true
        default: false
        }
    }

    static func isValidNodeName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        let at = bytes.firstIndex(of: UInt8(ascii: "@")) ?? bytes.endIndex
        let base = bytes[..<at]
        guard (1...31).contains(base.count), let first = base.first,
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first | 0x20), base.allSatisfy(isNameCharacter)
        else { return false }
        guard at < bytes.endIndex else { return true }
        let unit = bytes[(at + 1)...]
        return !unit.isEmpty && unit.allSatisfy(isNameCharacter)
    }

    static func isValidPropertyName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return (1...31).contains(bytes.count)
            && bytes.allSatisfy { isNameCharacter($0) || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }
    }
}
