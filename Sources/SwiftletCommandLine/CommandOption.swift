/// One option of a command, declared once: its name, value placeholder, default and help are
/// what the parser accepts and what `--help` prints, and `apply` is how its value reaches the
/// command's settings. Options both `boot` and `dump-dtb` take are declared once for both
/// (`MachineOptions.swift`).
struct CommandOption<Settings>: Sendable {
    /// `--memory`.
    let name: String
    /// The placeholder of its value (`size` in `--memory <size>`); nil for a flag such as `--rng`.
    let value: String?
    /// The value it has when it is not given, as a user would type it. The parser applies it
    /// before reading the arguments, so help shows what a command line without it gets.
    let defaultValue: String?
    let help: String
    /// A command line without it is a usage error.
    let required: Bool
    /// Stores the value (the empty string for a flag) in the settings, or explains in one line
    /// why it cannot be read; the parser adds the option's name and the value.
    let apply: @Sendable (inout Settings, String) throws(UsageError) -> Void

    /// An option that takes a value.
    init(
        _ name: String, value: String, default defaultValue: String? = nil, required: Bool = false, help: String,
        apply: @escaping @Sendable (inout Settings, String) throws(UsageError) -> Void
    ) {
        self.name = name
        self.value = value
        self.defaultValue = defaultValue
        self.required = required
        self.help = help
        self.apply = apply
    }

    /// A flag: it takes no value (`--rng=on` is a usage error).
    init(flag name: String, help: String, apply: @escaping @Sendable (inout Settings) -> Void) {
        self.name = name
        self.value = nil
        self.defaultValue = nil
        self.required = false
        self.help = help
        self.apply = { settings, _ in apply(&settings) }
    }

    /// How help and errors show it: `--memory <size>`, `--rng`.
    var synopsis: String { value.map { "\(name) <\($0)>" } ?? name }

    /// Its line in the command's help.
    var helpEntry: HelpEntry { HelpEntry(synopsis, help: help, default: defaultValue) }
}

/// A positional argument of a command (`<OUT>` of `dump-dtb`); each one declared is required.
struct CommandArgument<Settings>: Sendable {
    /// `<OUT>`.
    let name: String
    let help: String
    let apply: @Sendable (inout Settings, String) -> Void
    /// A command line may leave it out (`[<ID>]` of `run`).
    var optional = false

    /// Its line in the command's help.
    var helpEntry: HelpEntry { HelpEntry(optional ? "[\(name)]" : name, help: help) }
}

/// A command's whole syntax: its options and positional arguments, read into `Settings`.
struct CommandSyntax<Settings>: Sendable {
    let options: [CommandOption<Settings>]
    var arguments: [CommandArgument<Settings>] = []

    /// Reads `arguments` into `settings`: first every option's default, then the arguments in
    /// order (the last of an option given twice wins; every repeatable option's `apply` appends).
    /// Throws for an unknown option, a missing or unreadable value, a flag given a value, a stray
    /// or missing positional argument, or a missing required option.
    func parse(_ arguments: some Sequence<String>, into settings: inout Settings) throws(UsageError) {
        for option in options {
            if let value = option.defaultValue { try Self.apply(option, value, to: &settings) }
        }
        var given = Set<String>()
        var positional = 0
        var reader = ArgumentReader(arguments)
        while let argument = reader.next() {
            switch argument {
            case .option(let name):
                guard let option = options.first(where: { $0.name == name }) else { throw ArgumentReader.unknownOption(name) }
                if option.value == nil {
                    try reader.flag()
                    try Self.apply(option, "", to: &settings)
                } else {
                    try Self.apply(option, try reader.value(), to: &settings)
                }
                given.insert(name)
            case .positional(let text):
                guard positional < self.arguments.count else { throw ArgumentReader.unexpectedArgument(text) }
                self.arguments[positional].apply(&settings, text)
                positional += 1
            }
        }
        for option in options where option.required && !given.contains(option.name) {
            throw UsageError("missing required option '\(option.synopsis)'")
        }
        if positional < self.arguments.count, !self.arguments[positional].optional {
            throw UsageError("missing argument \(self.arguments[positional].name)")
        }
    }

    /// The help entries of the options, in declaration order.
    var optionHelp: [HelpEntry] { options.map(\.helpEntry) }
    /// The help entries of the positional arguments.
    var argumentHelp: [HelpEntry] { arguments.map(\.helpEntry) }

    private static func apply(_ option: CommandOption<Settings>, _ value: String, to settings: inout Settings) throws(UsageError)
    {
        do {
            try option.apply(&settings, value)
        } catch {
            throw UsageError(
                option.value == nil ? "\(option.name): \(error.message)" : "\(option.name) '\(value)': \(error.message)")
        }
    }
}

/// How option values are written: whole numbers, seconds, toggles, byte sizes. The key=value
/// grammar (`KeyValueGrammar`) and the top-level options read them the same way.
enum ValueSyntax {
    /// `on` is true, `off` false; anything else (`yes`, `1`, `ON`) is nil.
    static func toggle(_ text: String) -> Bool? {
        switch text {
        case "on": true
        case "off": false
        default: nil
        }
    }

    /// A byte count such as `128M`, `1G`, `512K` or `65536`: ASCII digits with an optional binary
    /// unit (`K`, `M`, `G`, either case). Nil for anything else or a count that does not fit 64 bits.
    static func byteSize(_ text: String) -> UInt64? {
        guard let last = text.last else { return nil }
        let shift: UInt64
        var digits = Substring(text)
        switch last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        default: shift = 0
        }
        if shift != 0 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }), let value = UInt64(digits) else { return nil }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : result
    }

    /// `size` as `byteSize` reads it, in the largest unit that divides it: `128M`, `1G`, `4097`.
    static func byteSizeText(_ size: UInt64) -> String {
        for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] as [(UInt64, String)] where size != 0 && size % (1 << shift) == 0 {
            return "\(size >> shift)\(unit)"
        }
        return "\(size)"
    }

    /// `text` as a byte size, or a usage error saying what a size looks like.
    static func byteSize(reading text: String) throws(UsageError) -> UInt64 {
        guard let size = byteSize(text) else { throw UsageError("not a size; use a size such as 128M or 1G (binary units)") }
        return size
    }

    /// `text` as a whole number, or a usage error.
    static func wholeNumber(reading text: String) throws(UsageError) -> Int {
        guard let number = Int(text) else { throw UsageError("not a whole number") }
        return number
    }

    /// `text` as a positive, finite number of seconds, or a usage error.
    static func seconds(reading text: String) throws(UsageError) -> Double {
        guard let seconds = Double(text), seconds > 0, seconds.isFinite else {
            throw UsageError("not a positive number of seconds")
        }
        return seconds
    }
}
