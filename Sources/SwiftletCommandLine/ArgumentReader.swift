/// A command line that cannot be run: an unknown option, a missing or malformed value, a missing
/// required option, a stray argument, or a value the library's validation refuses. `swiftlet`
/// prints it as `swiftlet: <message>` with the command's usage on stderr and exits with status
/// 64 (EX_USAGE) before it builds anything.
struct UsageError: Error, Equatable, CustomStringConvertible {
    let message: String

    init(_ message: String) { self.message = message }

    var description: String { message }
}

/// Reads a command's arguments one at a time: options (`--name value`, `--name=value`, flags
/// such as `--rng`, and `-h`) and positional arguments (anything that does not start with `-`,
/// a lone `-`, and everything after `--`). `CommandSyntax.parse` drives it from a command's
/// option declarations:
///
///     var reader = ArgumentReader(arguments)
///     while let argument = reader.next() {
///         switch argument {
///         case .option("--memory"): memory = try reader.value()
///         case .option("--rng"): try reader.flag(); rng = true
///         case .option(let name): throw ArgumentReader.unknownOption(name)
///         case .positional(let text): ...
///         }
///     }
///
/// A value given as the next argument must not look like an option (`--cmdline -x` is a missing
/// value); `--cmdline=-x` passes one that does. An option given twice keeps its last value.
struct ArgumentReader {
    enum Argument: Equatable {
        /// An option by name (`--memory`, `-h`), without any `=value` part.
        case option(String)
        /// A positional argument.
        case positional(String)
    }

    private let arguments: [String]
    private var index = 0
    /// The option `next()` returned last, and the text after its `=` if it had one.
    private var option = ""
    private var inlineValue: String?
    /// Set by `--`: every argument after it is positional.
    private var optionsEnded = false

    init(_ arguments: some Sequence<String>) {
        self.arguments = Array(arguments)
    }

    /// The next option or positional argument, or nil at the end.
    mutating func next() -> Argument? {
        inlineValue = nil
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if optionsEnded || !Self.looksLikeOption(argument) { return .positional(argument) }
            if argument == "--" {
                optionsEnded = true
                continue
            }
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                option = String(argument[..<equals])
                inlineValue = String(argument[argument.index(after: equals)...])
            } else {
                option = argument
            }
            return .option(option)
        }
        return nil
    }

    /// The value of the option just read: the text after its `=`, or else the next argument.
    mutating func value() throws(UsageError) -> String {
        if let inlineValue {
            guard !inlineValue.isEmpty else { throw UsageError("missing value for '\(option)'") }
            return inlineValue
        }
        guard index < arguments.count, !Self.looksLikeOption(arguments[index]) else {
            throw UsageError("missing value for '\(option)'")
        }
        index += 1
        return arguments[index - 1]
    }

    /// Checks that the flag just read was not given a value (`--rng=on`).
    func flag() throws(UsageError) {
        if inlineValue != nil { throw UsageError("'\(option)' takes no value") }
    }

    static func unknownOption(_ name: String) -> UsageError {
        UsageError("unknown option '\(name)'")
    }

    static func unexpectedArgument(_ text: String) -> UsageError {
        UsageError("unexpected argument '\(text)'")
    }

    /// Whether `arguments` hold one of `names` as an option (before any `--`). Help and version
    /// requests are looked for first, so `boot --bogus --help` shows help rather than an error.
    static func contains(_ names: String..., in arguments: some Sequence<String>) -> Bool {
        for argument in arguments {
            if argument == "--" { return false }
            if names.contains(argument) { return true }
        }
        return false
    }

    private static func looksLikeOption(_ argument: String) -> Bool {
        argument.hasPrefix("-") && argument != "-"
    }
}
