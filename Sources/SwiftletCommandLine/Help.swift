#if canImport(Glibc)
    import Glibc
#endif

/// The commands `swiftlet` has, with their usage lines and help.
enum Command {
    case root, boot, run, restore, dumpDTB

    /// The command named `name` (`boot`, `dump-dtb`), if there is one.
    init?(named name: String) {
        switch name {
        case "boot": self = .boot
        case "run": self = .run
        case "dump-dtb": self = .dumpDTB
        case "restore": self = .restore
        default: return nil
        }
    }

    /// How the command is invoked, as `swiftlet boot --help` would write it.
    var invocation: String {
        switch self {
        case .root: "swiftlet"
        case .boot: "swiftlet boot"
        case .run: "swiftlet run"
        case .dumpDTB: "swiftlet dump-dtb"
        case .restore: "swiftlet restore"
        }
    }

    /// The usage line: shown by help and with every usage error.
    var usage: String {
        switch self {
        case .root: "swiftlet <command> [options]"
        case .boot: "swiftlet boot --kernel <file> [options]"
        case .run: "swiftlet run [--bundle <dir>] [options] [<ID>] [-- <command> [<arg>...]]"
        case .dumpDTB: "swiftlet dump-dtb --arch <arch> [options] <OUT>"
        case .restore: "swiftlet restore [options] <DIR>"
        }
    }

    var help: CommandHelp {
        switch self {
        case .root: rootHelp
        case .boot: Boot.help
        case .run: RunArguments.help
        case .dumpDTB: DumpDTB.help
        case .restore: Restore.help
        }
    }

    /// Prints this command's help on stdout.
    func printHelp() {
        writeAll(help.rendered(usage: usage), to: STDOUT_FILENO)
    }

    /// Prints `error` with this command's usage on stderr and exits with status 64 (EX_USAGE):
    /// `swiftlet: <message>`, the usage line and where to find the help.
    func fail(_ error: UsageError) -> Never {
        writeAll("swiftlet: \(error.message)\nUsage: \(usage)\nSee '\(invocation) --help'.\n", to: STDERR_FILENO)
        terminate(64)
    }
}

/// `swiftlet --help`.
private let rootHelp = CommandHelp(
    abstract: "Swiftlet: a KVM micro virtual machine monitor written in Swift.",
    commands: [
        HelpEntry("boot", help: Boot.help.abstract),
        HelpEntry("run", help: RunArguments.help.abstract),
        HelpEntry("dump-dtb", help: DumpDTB.help.abstract),
        HelpEntry("restore", help: Restore.help.abstract),
        HelpEntry("help [<command>]", help: "Show the help of swiftlet or of a command."),
    ],
    options: [],
    discussion: "See 'swiftlet help <command>' for a command's options and documentation."
)

/// One line of a help's COMMANDS, ARGUMENTS or OPTIONS list.
struct HelpEntry {
    /// What the user types: `--memory <size>`, `--rng`, `<OUT>`, `boot`.
    let name: String
    let help: String
    /// The value an option has when it is not given, shown after its help.
    var defaultValue: String?

    init(_ name: String, help: String, default defaultValue: String? = nil) {
        self.name = name
        self.help = help
        self.defaultValue = defaultValue
    }
}

/// A command's help text: abstract, usage, the lists, then the discussion (its user documentation).
struct CommandHelp {
    let abstract: String
    var commands: [HelpEntry] = []
    var arguments: [HelpEntry] = []
    let options: [HelpEntry]
    /// Preformatted text printed as it is (its own line breaks and indentation).
    var discussion: String?

    /// The options every command has.
    static let standardOptions = [
        HelpEntry("--version", help: "Show the version."),
        HelpEntry("-h, --help", help: "Show help information."),
    ]

    /// The width help text is wrapped to, and the column where each entry's help starts.
    static let width = 80
    static let helpColumn = 26

    func rendered(usage: String) -> String {
        var text = wrap(abstract, width: Self.width) + "\n\nUSAGE: \(usage)\n"
        for (title, entries) in [("COMMANDS", commands), ("ARGUMENTS", arguments), ("OPTIONS", options + Self.standardOptions)]
        where !entries.isEmpty {
            text += "\n\(title):\n"
            for entry in entries { text += Self.render(entry) }
        }
        if let discussion { text += "\n" + discussion + "\n" }
        return text
    }

    /// `  --name <value>          Help text wrapped at the width,` with continuation lines
    /// indented to the help column; a name too long for its column puts the help on the next line.
    private static func render(_ entry: HelpEntry) -> String {
        let indent = String(repeating: " ", count: helpColumn)
        // "(default: 128M)" is kept whole on one line.
        let words = entry.help.split(separator: " ").map(String.init) + (entry.defaultValue.map { ["(default: \($0))"] } ?? [])
        let lines = wrap(words: words, width: width - helpColumn)
        var head = "  " + entry.name
        if head.count + 2 > helpColumn {
            head += "\n" + indent
        } else {
            head += String(repeating: " ", count: helpColumn - head.count)
        }
        return head + lines.joined(separator: "\n" + indent) + "\n"
    }
}

/// `text` reflowed into lines of at most `width` characters (a longer word gets a line of its own).
func wrap(_ text: String, width: Int) -> String {
    wrap(words: text.split(separator: " ").map(String.init), width: width).joined(separator: "\n")
}

/// `words` joined by spaces into lines of at most `width` characters.
func wrap(words: [String], width: Int) -> [String] {
    var lines: [String] = []
    var line = ""
    for word in words {
        if !line.isEmpty, line.count + 1 + word.count > width {
            lines.append(line)
            line = ""
        }
        line += line.isEmpty ? word : " " + word
    }
    if !line.isEmpty { lines.append(line) }
    return lines
}

/// Writes all of `text` to `fd` (retrying short writes), unbuffered.
func writeAll(_ text: String, to fd: Int32) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}
