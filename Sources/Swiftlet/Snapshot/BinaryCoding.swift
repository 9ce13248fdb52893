// A compact binary encoding for Codable values, without Foundation: the payload of a snapshot's
// state file. A value is encoded to a tree (`BinaryValue`) and the tree to bytes; decoding reads
// the bytes back to a tree, checking every length against what is left, and decodes from it.
// Keyed containers keep their keys, so the order fields are encoded and decoded in, and fields
// an encoder leaves out (nil optionals), do not matter.

/// One node of an encoded value.
enum BinaryValue: Equatable {
    /// nil.
    case null
    /// Any integer or Bool (signed values as their bit pattern), or a float's bit pattern.
    case integer(UInt64)
    /// A string, as UTF-8.
    case string(String)
    /// A `[UInt8]`, stored as it is.
    case bytes([UInt8])
    /// An unkeyed container.
    case array([BinaryValue])
    /// A keyed container, in encoding order.
    case keyed([(String, BinaryValue)])

    static func == (a: BinaryValue, b: BinaryValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.integer(let x), .integer(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.bytes(let x), .bytes(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.keyed(let x), .keyed(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    private enum Tag: UInt8 { case null = 0, integer, string, bytes, array, keyed }

    /// Appends the node's bytes to `out`: a tag, then a LEB128 integer or a LEB128 length and the
    /// contents.
    func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(Tag.null.rawValue)
        case .integer(let value):
            out.append(Tag.integer.rawValue)
            Self.writeVarint(value, to: &out)
        case .string(let text):
            out.append(Tag.string.rawValue)
            Self.writeVarint(UInt64(text.utf8.count), to: &out)
            out.append(contentsOf: text.utf8)
        case .bytes(let bytes):
            out.append(Tag.bytes.rawValue)
            Self.writeVarint(UInt64(bytes.count), to: &out)
            out.append(contentsOf: bytes)
        case .array(let elements):
            out.append(Tag.array.rawValue)
            Self.writeVarint(UInt64(elements.count), to: &out)
            for element in elements { element.write(to: &out) }
        case .keyed(let entries):
            out.append(Tag.keyed.rawValue)
            Self.writeVarint(UInt64(entries.count), to: &out)
            for (key, value) in entries {
                Self.writeVarint(UInt64(key.utf8.count), to: &out)
                out.append(contentsOf: key.utf8)
                value.write(to: &out)
            }
        }
    }

    private static func writeVarint(_ value: UInt64, to out: inout [UInt8]) {
        var rest = value
        while rest >= 0x80 {
            out.append(UInt8(rest & 0x7F) | 0x80)
            rest >>= 7
        }
        out.append(UInt8(rest))
    }

    /// Reads one node from `bytes` at `offset` (moved past it); throws `BinaryDecodingError`
    /// for a length past the end, an unknown tag, bad UTF-8 or nesting deeper than 64.
    static func read(_ bytes: UnsafeRawBufferPointer, at offset: inout Int, depth: Int = 0) throws(BinaryDecodingError)
        -> BinaryValue
    {
        guard depth < 64 else { throw BinaryDecodingError(path: "", problem: "nested more than 64 levels deep") }
        guard offset < bytes.count else { throw .truncated }
        guard let tag = Tag(rawValue: bytes[offset]) else {
            throw BinaryDecodingError(path: "", problem: "unknown value tag \(bytes[offset]) at byte \(offset)")
        }
        offset += 1
        switch tag {
        case .null: return .null
        case .integer: return .integer(try readVarint(bytes, at: &offset))
        case .string: return .string(try readString(bytes, at: &offset))
        case .bytes:
            let count = try readLength(bytes, at: &offset, elementSize: 1)
            defer { offset += count }
            return .bytes(Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])))
        case .array:
            // Each element takes at least one byte.
            let count = try readLength(bytes, at: &offset, elementSize: 1)
            var elements: [BinaryValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count { elements.append(try read(bytes, at: &offset, depth: depth + 1)) }
            return .array(elements)
        case .keyed:
            let count = try readLength(bytes, at: &offset, elementSize: 2)
            var entries: [(String, BinaryValue)] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let key = try readString(bytes, at: &offset)
                entries.append((key, try read(bytes, at: &offset, depth: depth + 1)))
            }
            return .keyed(entries)
        }
    }

    private static func readVarint(_ bytes: UnsafeRawBufferPointer, at offset: inout Int) throws(BinaryDecodingError)
        -> UInt64
    {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw .truncated }
            let byte = bytes[offset]
            offset += 1
            guard shift < 64, shift < 63 || byte <= 1 else {
                throw BinaryDecodingError(path: "", problem: "integer longer than 64 bits at byte \(offset - 1)")
            }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }

    private static func readLength(_ bytes: UnsafeRawBufferPointer, at offset: inout Int, elementSize: Int)
        throws(BinaryDecodingError) -> Int
    {
        let length = try readVarint(bytes, at: &offset)
        guard length <= UInt64(bytes.count - offset) / UInt64(elementSize) else { throw .truncated }
        return Int(length)
    }

    private static func readString(_ bytes: UnsafeRawBufferPointer, at offset: inout Int) throws(BinaryDecodingError)
        -> String
    {
        let count = try readLength(bytes, at: &offset, elementSize: 1)
        defer { offset += count }
        guard let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]), as: UTF8.self)
        else { throw BinaryDecodingError(path: "", problem: "a string that is not UTF-8 at byte \(offset)") }
        return text
    }
}

/// An encoded payload that does not decode: where (the coding path) and what is wrong.
struct BinaryDecodingError: Error, Equatable, CustomStringConvertible {
    /// The field's path (`vcpus[0].registers`), empty for the payload as a whole.
    var path: String
    /// What is wrong.
    var problem: String

    /// The payload ends inside a value.
    static let truncated = BinaryDecodingError(path: "", problem: "the payload ends inside a value")

    /// `<path> <problem>`, or the problem alone.
    var description: String { path.isEmpty ? problem : "\(path): \(problem)" }
}

/// Encodes `Encodable` values to bytes (`BinaryValue.write`).
enum BinaryEncoder {
    /// The bytes of `value`.
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = TreeEncoder(codingPath: [])
        try encoder.encodeValue(value)
        var out: [UInt8] = []
        encoder.tree.write(to: &out)
        return out
    }
}

/// Decodes `Decodable` values from bytes `BinaryEncoder` wrote.
enum BinaryDecoder {
    /// The value of type `T` in `bytes`; throws `BinaryDecodingError` for malformed bytes, a
    /// missing field or a value of the wrong kind or range.
    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(BinaryDecodingError) -> T {
        var parsed: Result<BinaryValue, BinaryDecodingError> = .failure(.truncated)
        bytes.withUnsafeBytes { raw in
            parsed = Result { () throws(BinaryDecodingError) -> BinaryValue in
                var offset = 0
                let tree = try BinaryValue.read(raw, at: &offset)
                guard offset == raw.count else {
                    throw BinaryDecodingError(path: "", problem: "\(raw.count - offset) bytes after the payload's end")
                }
                return tree
            }
        }
        let tree = try parsed.get()
        do {
            return try TreeDecoder(tree, codingPath: []).decodeValue(T.self)
        } catch let error as BinaryDecodingError {
            throw error
        } catch {
            throw BinaryDecodingError(path: "", problem: "\(error)")
        }
    }
}

/// A coding path as Swift would write it: `vcpus[0].registers`.
func pathString(_ path: [any CodingKey]) -> String {
    var text = ""
    for key in path {
        if let index = key.intValue, key.stringValue.hasPrefix("Index") || key.stringValue == "\(index)" {
            text += "[\(index)]"
        } else {
            text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
        }
    }
    return text
}

/// An integer key for unkeyed containers and `super`.
private struct IndexKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ index: Int) {
        stringValue = "\(index)"
        intValue = index
    }
    init?(stringValue: String) {
        self.stringValue = stringValue
        intValue = Int(stringValue)
    }
    init?(intValue: Int) { self.init(intValue) }
}

// MARK: - Encoding

private final class TreeEncoder: Encoder, SingleValueEncodingContainer {
    final class Keyed { var entries: [(String, TreeEncoder)] = [] }
    final class Unkeyed { var elements: [TreeEncoder] = [] }
    enum Content {
        case empty, value(BinaryValue), keyed(Keyed), unkeyed(Unkeyed)
    }

    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    var content = Content.empty

    init(codingPath: [any CodingKey]) { self.codingPath = codingPath }

    var tree: BinaryValue {
        switch content {
        case .empty: .keyed([])
        case .value(let value): value
        case .keyed(let keyed): .keyed(keyed.entries.map { ($0.0, $0.1.tree) })
        case .unkeyed(let unkeyed): .array(unkeyed.elements.map(\.tree))
        }
    }

    func encodeValue<T: Encodable>(_ value: T) throws {
        if T.self == [UInt8].self, let bytes = value as? [UInt8] {
            content = .value(.bytes(bytes))
        } else {
            try value.encode(to: self)
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let keyed: Keyed
        if case .keyed(let existing) = content {
            keyed = existing
        } else {
            keyed = Keyed()
            content = .keyed(keyed)
        }
        return KeyedEncodingContainer(KeyedEncoding<Key>(encoder: self, keyed: keyed))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let unkeyed: Unkeyed
        if case .unkeyed(let existing) = content {
            unkeyed = existing
        } else {
            unkeyed = Unkeyed()
            content = .unkeyed(unkeyed)
        }
        return UnkeyedEncoding(encoder: self, unkeyed: unkeyed)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { self }

    func encodeNil() { content = .value(.null) }
    func encode(_ value: Bool) { content = .value(.integer(value ? 1 : 0)) }
    func encode(_ value: String) { content = .value(.string(value)) }
    func encode(_ value: Double) { content = .value(.integer(value.bitPattern)) }
    func encode(_ value: Float) { content = .value(.integer(UInt64(value.bitPattern))) }
    func encode(_ value: Int) { content = .value(.integer(UInt64(bitPattern: Int64(value)))) }
    func encode(_ value: Int8) { content = .value(.integer(UInt64(bitPattern: Int64(value)))) }
    func encode(_ value: Int16) { content = .value(.integer(UInt64(bitPattern: Int64(value)))) }
    func encode(_ value: Int32) { content = .value(.integer(UInt64(bitPattern: Int64(value)))) }
    func encode(_ value: Int64) { content = .value(.integer(UInt64(bitPattern: value))) }
    func encode(_ value: UInt) { content = .value(.integer(UInt64(value))) }
    func encode(_ value: UInt8) { content = .value(.integer(UInt64(value))) }
    func encode(_ value: UInt16) { content = .value(.integer(UInt64(value))) }
    func encode(_ value: UInt32) { content = .value(.integer(UInt64(value))) }
    func encode(_ value: UInt64) { content = .value(.integer(value)) }
    func encode<T: Encodable>(_ value: T) throws { try encodeValue(value) }
}

private struct KeyedEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: TreeEncoder
    let keyed: TreeEncoder.Keyed
    var codingPath: [any CodingKey] { encoder.codingPath }

    private func child(_ key: any CodingKey) -> TreeEncoder {
        let child = TreeEncoder(codingPath: codingPath + [key])
        keyed.entries.append((key.stringValue, child))
        return child
    }

    mutating func encodeNil(forKey key: Key) { child(key).encodeNil() }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { try child(key).encodeValue(value) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey>
    { child(key).container(keyedBy: keyType) }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer { child(key).unkeyedContainer() }
    mutating func superEncoder() -> any Encoder { child(IndexKey(stringValue: "super")!) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { child(key) }
}

private struct UnkeyedEncoding: UnkeyedEncodingContainer {
    let encoder: TreeEncoder
    let unkeyed: TreeEncoder.Unkeyed
    var codingPath: [any CodingKey] { encoder.codingPath }
    var count: Int { unkeyed.elements.count }

    private func child() -> TreeEncoder {
        let child = TreeEncoder(codingPath: codingPath + [IndexKey(count)])
        unkeyed.elements.append(child)
        return child
    }

    mutating func encodeNil() { child().encodeNil() }
    mutating func encode<T: Encodable>(_ value: T) throws { try child().encodeValue(value) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        child().container(keyedBy: keyType)
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { child().unkeyedContainer() }
    mutating func superEncoder() -> any Encoder { child() }
}

// MARK: - Decoding

private struct TreeDecoder: Decoder, SingleValueDecodingContainer {
    let value: BinaryValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(_ value: BinaryValue, codingPath: [any CodingKey]) {
        self.value = value
        self.codingPath = codingPath
    }

    func failure(_ problem: String) -> BinaryDecodingError {
        BinaryDecodingError(path: pathString(codingPath), problem: problem)
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == [UInt8].self {
            guard case .bytes(let bytes) = value else { throw failure("is not a byte string") }
            return bytes as! T
        }
        return try T(from: self)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .keyed(let entries) = value else { throw failure("is not a keyed value") }
        var table: [String: BinaryValue] = [:]
        for (key, value) in entries { table[key] = value }
        return KeyedDecodingContainer(KeyedDecoding<Key>(decoder: self, entries: table))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = value else { throw failure("is not a list") }
        return UnkeyedDecoding(decoder: self, elements: elements)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { value == .null }

    private func integer() throws -> UInt64 {
        guard case .integer(let bits) = value else { throw failure("is not a number") }
        return bits
    }
    private func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type) throws -> T {
        let bits = try integer()
        guard let result = T(exactly: bits) else { throw failure("is \(bits), out of range for \(T.self)") }
        return result
    }
    private func signed<T: FixedWidthInteger & SignedInteger>(_ type: T.Type) throws -> T {
        let wide = Int64(bitPattern: try integer())
        guard let result = T(exactly: wide) else { throw failure("is \(wide), out of range for \(T.self)") }
        return result
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        switch try integer() {
        case 0: return false
        case 1: return true
        case let other: throw failure("is \(other), not a Bool")
        }
    }
    func decode(_ type: String.Type) throws -> String {
        guard case .string(let text) = value else { throw failure("is not a string") }
        return text
    }
    func decode(_ type: Double.Type) throws -> Double { Double(bitPattern: try integer()) }
    func decode(_ type: Float.Type) throws -> Float { Float(bitPattern: try unsigned(UInt32.self)) }
    func decode(_ type: Int.Type) throws -> Int { try signed(Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try signed(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try signed(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try signed(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try signed(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try unsigned(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try unsigned(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try unsigned(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try unsigned(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer() }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type) }
}

private struct KeyedDecoding<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: TreeDecoder
    let entries: [String: BinaryValue]
    var codingPath: [any CodingKey] { decoder.codingPath }
    var allKeys: [Key] { entries.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { entries[key.stringValue] != nil }

    private func child(_ key: any CodingKey) throws -> TreeDecoder {
        guard let value = entries[key.stringValue] else {
            throw BinaryDecodingError(path: pathString(codingPath + [key]), problem: "is missing")
        }
        return TreeDecoder(value, codingPath: codingPath + [key])
    }

    func decodeNil(forKey key: Key) throws -> Bool { try child(key).decodeNil() }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try child(key).decodeValue(type) }
    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
        -> KeyedDecodingContainer<NestedKey>
    { try child(key).container(keyedBy: type) }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try child(key).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { try child(IndexKey(stringValue: "super")!) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try child(key) }
}

private struct UnkeyedDecoding: UnkeyedDecodingContainer {
    let decoder: TreeDecoder
    let elements: [BinaryValue]
    var codingPath: [any CodingKey] { decoder.codingPath }
    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }
    var currentIndex = 0

    init(decoder: TreeDecoder, elements: [BinaryValue]) {
        self.decoder = decoder
        self.elements = elements
    }

    private mutating func next() throws -> TreeDecoder {
        let key = IndexKey(currentIndex)
        guard !isAtEnd else {
            throw BinaryDecodingError(path: pathString(codingPath + [key]), problem: "is past the list's end")
        }
        defer { currentIndex += 1 }
        return TreeDecoder(elements[currentIndex], codingPath: codingPath + [key])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, elements[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws
        -> KeyedDecodingContainer<NestedKey>
    { try next().container(keyedBy: type) }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { try next() }
}
