/// Swiftlet's version, as `swiftlet --version` prints it.
public enum SwiftletVersion {
    public static let string = "0.1.0"
}
