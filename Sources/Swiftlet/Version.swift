import CHost
import CKVM
import SwiftletBackends
import SwiftletDevices
import SwiftletHost
import SwiftletKVM
import SwiftletMemory

/// Swiftlet's version, as `swiftlet --version` prints it.
public enum SwiftletVersion {
    /// The version number, `major.minor.patch` (semantic versioning).
    public static let string = "0.1.0"
}
