import Swiftlet

/// One key of a device option's `key=value` list (`readonly` of `--disk path=FILE,readonly=on`),
/// declared once: the parser, its errors and the option's help all come from it.
struct OptionKey: Sendable {
    /// What the value must be; the parser checks it, so a bad one is an error naming the key.
    enum Kind: Sendable {
        /// Any non-empty text (a path, a name, an address the device option reads itself).
        case text
        /// `on` or `off`, nothing else.
        case toggle
        /// A byte count: digits with an optional binary unit `K`, `M` or `G` (`ValueSyntax.byteSize`).
        case byteSize
        /// A token bucket, `SIZE/REFILL_MS[/BURST]`: the size and burst are byte sizes when
        /// `bytes` (`4M/1000`), plain counts otherwise (`100/1000/500`); the refill time is whole
        /// milliseconds.
        case tokenBucket(bytes: Bool)
    }

    /// The name `KeyValues` knows the key by, and the one help and errors show.
    let name: String
    /// Other names accepted for it (`ro` for `readonly`); giving two of them is a repeated key.
    let aliases: [String]
    let kind: Kind
    /// What help shows after `=`: `FILE`, `NAME`, or for a toggle the state that is not the default.
    let placeholder: String
    /// The option cannot do without it (`path` of `--disk`).
    let required: Bool
    /// Shown in the grammar's one-line `synopsis`; the others (the rate limits) are listed apart
    /// (`otherKeys`), so the synopsis fits the help's column.
    let inSynopsis: Bool

    init(
        _ name: String, aliases: [String] = [], _ kind: Kind, placeholder: String, required: Bool = false,
        inSynopsis: Bool = true
    ) {
        self.name = name
        self.aliases = aliases
        self.kind = kind
        self.placeholder = placeholder
        self.required = required
        self.inSynopsis = inSynopsis
    }
}

/// The grammar of a device option's value, shared by `--disk`, `--net` and every later device
/// option: items separated by commas, each `key=value` with a declared key, no key twice, every
/// required key present, toggles `on`/`off`, sizes such as `512K` or `1G`. An item without `=`
/// is the value of `bareKey` (`--disk FILE` is `--disk path=FILE`). The text after the first `=`
/// is the value, so a value may contain `=` but not `,`.
struct KeyValueGrammar: Sendable {
    /// The command-line option this grammar reads (`--disk`): errors name it.
    let option: String
    let keys: [OptionKey]
    /// The key an item without `=` is taken as, if any.
    let bareKey: String?

    init(option: String, bareKey: String? = nil, keys: [OptionKey]) {
        self.option = option
        self.bareKey = bareKey
        self.keys = keys
    }

    /// The form help shows: required keys first as `key=PLACEHOLDER`, the others in brackets,
    /// e.g. `path=FILE[,readonly=on][,id=NAME][,direct=on]`.
    var synopsis: String {
        let required = keys.filter(\.required).map { "\($0.name)=\($0.placeholder)" }.joined(separator: ",")
        let optional = keys.filter { !$0.required && $0.inSynopsis }.map { "[,\($0.name)=\($0.placeholder)]" }.joined()
        return required + optional
    }

    /// The optional keys the synopsis leaves out, as `key=PLACEHOLDER` separated by `, `
    /// (`bw=SIZE/MS[/BURST], ops=N/MS[/BURST]`); empty when there are none.
    var otherKeys: String {
        keys.filter { !$0.inSynopsis }.map { "\($0.name)=\($0.placeholder)" }.joined(separator: ", ")
    }

    /// Reads `text`, checking every value against its key's kind.
    func parse(_ text: String) throws(KeyValueError) -> KeyValues {
        func error(_ problem: KeyValueError.Problem) -> KeyValueError { self.error(problem, in: text) }
        var values: [String: KeyValues.Value] = [:]
        for item in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard !item.isEmpty else { throw error(.emptyItem) }
            let written: String
            let value: String
            if let equals = item.firstIndex(of: "=") {
                written = String(item[..<equals])
                value = String(item[item.index(after: equals)...])
            } else {
                guard let bareKey, values[bareKey] == nil else { throw error(.notKeyValue(item)) }
                written = bareKey
                value = item
            }
            guard let key = keys.first(where: { $0.name == written || $0.aliases.contains(written) }) else {
                throw error(.unknownKey(written, known: keys.map(\.name)))
            }
            guard values[key.name] == nil else { throw error(.repeatedKey(written)) }
            guard !value.isEmpty else { throw error(.emptyValue(key: written)) }
            switch key.kind {
            case .text:
                values[key.name] = .text(value)
            case .toggle:
                guard let on = ValueSyntax.toggle(value) else { throw error(.badToggle(key: written, value: value)) }
                values[key.name] = .toggle(on)
            case .byteSize:
                guard let size = ValueSyntax.byteSize(value) else { throw error(.badByteSize(key: written, value: value)) }
                values[key.name] = .byteSize(size)
            case .tokenBucket(let bytes):
                guard let bucket = Self.tokenBucket(value, bytes: bytes) else {
                    throw error(.badTokenBucket(key: written, value: value, bytes: bytes))
                }
                values[key.name] = .tokenBucket(bucket)
            }
        }
        for key in keys where key.required && values[key.name] == nil {
            throw error(.missingKey(key.name, placeholder: key.placeholder))
        }
        return KeyValues(values: values)
    }

    /// `SIZE/REFILL_MS[/BURST]` as a bucket (sizes with units when `bytes`), or nil. Zero values
    /// are read here and refused by the configuration's validation.
    static func tokenBucket(_ text: String, bytes: Bool) -> TokenBucketLimit? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3 else { return nil }
        func count(_ part: String) -> UInt64? {
            guard !part.isEmpty, part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return UInt64(part)
        }
        let amount: (String) -> UInt64? = bytes ? { ValueSyntax.byteSize($0) } : count
        guard let size = amount(parts[0]), let refill = count(parts[1]) else { return nil }
        var burst: UInt64 = 0
        if parts.count == 3 {
            guard let given = amount(parts[2]) else { return nil }
            burst = given
        }
        return TokenBucketLimit(size: size, refillTimeMilliseconds: refill, oneTimeBurst: burst)
    }

    /// An error about `text` (the whole value) for this grammar's option; device options use it
    /// for their own checks of a key's text (`KeyValueError.Problem.badValue`).
    func error(_ problem: KeyValueError.Problem, in text: String) -> KeyValueError {
        KeyValueError(option: option, text: text, problem: problem)
    }
}

/// The values of one parsed `key=value` list, by each key's `name` (not its alias), already
/// checked against the key's kind.
struct KeyValues: Equatable, Sendable {
    enum Value: Equatable, Sendable {
        case text(String)
        case toggle(Bool)
        case byteSize(UInt64)
        case tokenBucket(TokenBucketLimit)
    }

    let values: [String: Value]

    /// The text of a `.text` key, or nil if it was not given.
    func text(_ key: String) -> String? {
        if case .text(let text) = values[key] { text } else { nil }
    }

    /// The state of a `.toggle` key, or nil if it was not given.
    func toggle(_ key: String) -> Bool? {
        if case .toggle(let on) = values[key] { on } else { nil }
    }

    /// The byte count of a `.byteSize` key, or nil if it was not given.
    func byteSize(_ key: String) -> UInt64? {
        if case .byteSize(let size) = values[key] { size } else { nil }
    }

    /// The bucket of a `.tokenBucket` key, or nil if it was not given.
    func tokenBucket(_ key: String) -> TokenBucketLimit? {
        if case .tokenBucket(let bucket) = values[key] { bucket } else { nil }
    }
}

/// A device option's value that does not follow its grammar. The description names the option,
/// the value as given and the key at fault: `--disk 'path=/a,cache=none': unknown key 'cache';
/// use path, readonly, id or direct`.
struct KeyValueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What is wrong, with the key as the user wrote it.
    enum Problem: Equatable, Sendable, CustomStringConvertible {
        /// Two commas in a row, or one at the start or end (an empty value is one empty item).
        case emptyItem
        /// An item without `=` where no bare value is accepted (or a second one).
        case notKeyValue(String)
        /// A key the option does not have, with the keys it has.
        case unknownKey(String, known: [String])
        /// A key given twice (also under two of its names).
        case repeatedKey(String)
        /// A required key is absent; `placeholder` is what its value stands for.
        case missingKey(String, placeholder: String)
        /// `key=` with nothing after the `=`.
        case emptyValue(key: String)
        /// A toggle other than `on` or `off`.
        case badToggle(key: String, value: String)
        /// A size `ValueSyntax.byteSize` cannot read.
        case badByteSize(key: String, value: String)
        /// A token bucket that is not `SIZE/REFILL_MS[/BURST]` (sizes in bytes when `bytes`).
        case badTokenBucket(key: String, value: String, bytes: Bool)
        /// A text value the device option cannot read; `expected` says what it should be.
        case badValue(key: String, value: String, expected: String)

        var description: String {
            switch self {
            case .emptyItem: "an empty item; write key=value items separated by single commas"
            case .notKeyValue(let item): "'\(item)' is not key=value"
            case .unknownKey(let key, let known):
                "unknown key '\(key)'; use \(known.dropLast().joined(separator: ", "))\(known.count > 1 ? " or " : "")\(known.last ?? "")"
            case .repeatedKey(let key): "key '\(key)' given twice"
            case .missingKey(let key, let placeholder): "missing key '\(key)' (\(key)=\(placeholder))"
            case .emptyValue(let key): "key '\(key)' has no value"
            case .badToggle(let key, let value): "key '\(key)' is '\(value)'; use on or off"
            case .badByteSize(let key, let value): "key '\(key)' is '\(value)'; use a size such as 512K, 128M or 1G"
            case .badValue(let key, let value, let expected): "key '\(key)' is '\(value)'; \(expected)"
            case .badTokenBucket(let key, let value, let bytes):
                "key '\(key)' is '\(value)'; use "
                    + (bytes
                        ? "SIZE/REFILL_MS[/BURST], e.g. 4M/1000 (4 MiB per second)"
                        : "COUNT/REFILL_MS[/BURST], e.g. 100/1000 (100 per second)")
            }
        }
    }

    /// The command-line option (`--disk`).
    let option: String
    /// The option's whole value, as given.
    let text: String
    let problem: Problem

    var description: String { "\(option) '\(text)': \(problem)" }
}
