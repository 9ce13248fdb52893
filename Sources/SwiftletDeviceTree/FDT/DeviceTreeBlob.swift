import CLibFDT
import Glibc
import Swiftlet
import SwiftletDevices
import SwiftletHost
import SwiftletMemory

/// A finished flattened device tree (a DTB), checked with libfdt's `fdt_check_full`, with
/// read-back through libfdt (`fdt_path_offset`, `fdt_getprop`) for inspection and tests.
package struct DeviceTreeBlob: Equatable, Sendable {
    /// The blob, exactly `totalsize` bytes: what a guest finds in memory.
    package let bytes: [UInt8]

    /// Takes `bytes` as a blob if `fdt_check_full` accepts them.
    package init(bytes: [UInt8]) throws(FDTError) {
        self.bytes = bytes
        try check()
    }

    /// libfdt's full structural check (`fdt_check_full`): header, block layout, tag sequence,
    /// node and property names, strings.
    package func check() throws(FDTError) {
        // Shorter than a version 17 header: refused before libfdt reads one.
        guard bytes.count >= 40 else { throw FDTError("check the blob", code: FDT_ERR_TRUNCATED) }
        try FDTError.check(bytes.withUnsafeBytes { fdt_check_full($0.baseAddress, $0.count) }, "check the blob")
    }

    /// Whether the tree has a node at `path`.
    package func hasNode(_ path: String) -> Bool { (try? offset(of: path)) != nil }

    /// The names of the children of the node at `path`, in blob order.
    package func childNames(of path: String) throws(FDTError) -> [String] {
        let parent = try offset(of: path)
        return try withBlob { fdt throws(FDTError) in
            var names: [String] = []
            var child = fdt_first_subnode(fdt, parent)
            while child >= 0 {
                names.append(String(cString: fdt_get_name(fdt, child, nil)))
                child = fdt_next_subnode(fdt, child)
            }
            guard child == -FDT_ERR_NOTFOUND else { throw FDTError("list the children of \(path)", code: child) }
            return names
        }
    }

    /// The names of the properties of the node at `path`, in blob order.
    package func propertyNames(of path: String) throws(FDTError) -> [String] {
        let node = try offset(of: path)
        return try withBlob { fdt throws(FDTError) in
            var names: [String] = []
            var property = fdt_first_property_offset(fdt, node)
            while property >= 0 {
                var name: UnsafePointer<CChar>?
                if fdt_getprop_by_offset(fdt, property, &name, nil) != nil, let name { names.append(String(cString: name)) }
                property = fdt_next_property_offset(fdt, property)
            }
            guard property == -FDT_ERR_NOTFOUND else { throw FDTError("list the properties of \(path)", code: property) }
            return names
        }
    }

    /// The raw value of property `name` of the node at `path` (`fdt_getprop`); fails with
    /// `FDT_ERR_NOTFOUND` if the node or the property is missing.
    package func property(_ name: String, of path: String) throws(FDTError) -> [UInt8] {
        let node = try offset(of: path)
        return try withBlob { fdt throws(FDTError) in
            var length: Int32 = 0
            guard let value = fdt_getprop(fdt, node, name, &length) else {
                throw FDTError("read property \"\(name)\" of \(path)", code: length)
            }
            return Array(UnsafeRawBufferPointer(start: value, count: Int(length)))
        }
    }

    /// Whether the node at `path` has property `name`.
    package func hasProperty(_ name: String, of path: String) -> Bool { (try? property(name, of: path)) != nil }

    /// A property that holds one 32-bit cell.
    package func u32(_ name: String, of path: String) throws(FDTError) -> UInt32 {
        let values = try cells(name, of: path)
        guard values.count == 1 else {
            throw FDTError("read property \"\(name)\" of \(path) as one cell", code: FDT_ERR_BADVALUE)
        }
        return values[0]
    }

    /// A property that holds one 64-bit number (two cells).
    package func u64(_ name: String, of path: String) throws(FDTError) -> UInt64 {
        let values = try cells(name, of: path)
        guard values.count == 2 else {
            throw FDTError("read property \"\(name)\" of \(path) as a 64-bit number", code: FDT_ERR_BADVALUE)
        }
        return UInt64(values[0]) << 32 | UInt64(values[1])
    }

    /// A property read as an array of 32-bit cells.
    package func cells(_ name: String, of path: String) throws(FDTError) -> [UInt32] {
        let bytes = try property(name, of: path)
        guard bytes.count % 4 == 0 else {
            throw FDTError("read property \"\(name)\" of \(path) as cells", code: FDT_ERR_BADVALUE)
        }
        return stride(from: 0, to: bytes.count, by: 4).map { i in
            bytes[i..<(i + 4)].reduce(0) { $0 << 8 | UInt32($1) }
        }
    }

    /// A property read as a string list (every string NUL-terminated).
    package func strings(_ name: String, of path: String) throws(FDTError) -> [String] {
        let bytes = try property(name, of: path)
        guard bytes.last == 0 else { throw FDTError("read property \"\(name)\" of \(path) as strings", code: FDT_ERR_BADVALUE) }
        return bytes.dropLast().split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// A property read as one string.
    package func string(_ name: String, of path: String) throws(FDTError) -> String {
        let values = try strings(name, of: path)
        guard values.count == 1 else {
            throw FDTError("read property \"\(name)\" of \(path) as one string", code: FDT_ERR_BADVALUE)
        }
        return values[0]
    }

    /// The phandle of the node at `path`, or nil if it has none.
    package func phandle(of path: String) throws(FDTError) -> FDTPhandle? {
        let node = try offset(of: path)
        let value = withBlob { fdt_get_phandle($0, node) }
        return value == 0 ? nil : FDTPhandle(rawValue: value)
    }

    /// The path of the node whose phandle is `phandle`.
    package func path(of phandle: FDTPhandle) throws(FDTError) -> String {
        try withBlob { fdt throws(FDTError) in
            let node = fdt_node_offset_by_phandle(fdt, phandle.rawValue)
            guard node >= 0 else { throw FDTError("find the node with phandle \(phandle.rawValue)", code: node) }
            var path = [CChar](repeating: 0, count: 1024)
            try FDTError.check(fdt_get_path(fdt, node, &path, Int32(path.count)), "find the path of phandle \(phandle.rawValue)")
            return path.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
    }

    /// Writes the blob to the file at `path` (created or truncated, mode 0644); `-` is stdout.
    package func write(toFile path: String) throws(SystemError) {
        let owned: OwnedFileDescriptor?
        if path == "-" {
            owned = nil
        } else {
            owned = try OwnedFileDescriptor(opening: path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
        }
        let fd = owned?.rawValue ?? STDOUT_FILENO
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write \(path)")
            }
            written += n
        }
    }

    // MARK: - libfdt access

    private func offset(of path: String) throws(FDTError) -> Int32 {
        try FDTError.check(withBlob { fdt_path_offset($0, path) }, "find node \(path)")
    }

    private func withBlob<R, E: Error>(_ body: (UnsafeRawPointer) throws(E) -> R) throws(E) -> R {
        // A checked blob is never empty, so the base address exists.
        let result: Result<R, E> = bytes.withUnsafeBytes { buffer in
            do throws(E) { return .success(try body(buffer.baseAddress!)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
