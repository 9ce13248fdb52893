import Swiftlet
import SwiftletCommandLine

/// `swiftlet`: the executable. Everything it does is in SwiftletCommandLine (option parsing, help,
/// the commands) and the library; this only starts the clock and hands over the arguments.
@main
struct SwiftletMain {
    static func main() {
        // The boot timer measures from here: as close to process start as Swift code gets.
        ProcessClock.markStart()
        SwiftletCommand.run(Array(CommandLine.arguments.dropFirst()))
    }
}
