/// Why a bundle cannot run: each case says what failed and why, in one line (`description`).
/// `swiftlet run` exits with status 1 for these (Docs/RUN.md).
public enum BundleError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The bundle has no config.json (the path looked at).
    case noConfig(String)
    /// config.json cannot be read (path, errno text).
    case unreadableConfig(String, String)
    /// config.json is not valid JSON, or a field has the wrong type (what the parser said).
    case invalidJSON(String)
    /// `ociVersion` is missing or not 1.x.
    case unsupportedVersion(String?)
    /// A required field is missing (its path).
    case missingField(String)
    /// A field Swiftlet cannot honour (its path, why).
    case unsupportedField(String, String)
    /// `process.args` is empty and no command was given.
    case emptyArgs
    /// A uid or gid that is not a whole number (the field's path).
    case notANumber(String)
    /// The root directory does not exist or is not a directory (the path).
    case missingRoot(String)
    /// `root.path` resolves outside the bundle directory (the resolved path).
    case rootOutsideBundle(String)
    /// A mount of a type Swiftlet cannot give (the field's path, the type).
    case unsupportedMountType(String, String)
    /// A mount option Swiftlet cannot apply (the field's path, the option).
    case unsupportedMountOption(String, String)
    /// A field whose value cannot be used (its path, why).
    case badValue(String, String)

    /// One line, naming the field or path at fault.
    public var description: String {
        switch self {
        case .noConfig(let path): "no config.json in the bundle (\(path) does not exist)"
        case .unreadableConfig(let path, let why): "cannot read \(path): \(why)"
        case .invalidJSON(let why): "config.json is not valid: \(why)"
        case .unsupportedVersion(let version):
            version.map { "ociVersion '\($0)' is not supported (1.x is)" } ?? "config.json has no ociVersion"
        case .missingField(let field): "config.json: \(field) is missing"
        case .unsupportedField(let field, let why): "config.json: \(field) is not supported: \(why)"
        case .emptyArgs: "config.json: process.args is empty and no command was given after --"
        case .notANumber(let field): "config.json: \(field) is not a number (only numeric ids are supported)"
        case .missingRoot(let path): "the root filesystem \(path) does not exist or is not a directory"
        case .rootOutsideBundle(let path): "config.json: root.path \(path) is outside the bundle"
        case .unsupportedMountType(let field, let type):
            "config.json: \(field).type '\(type)' is not supported (proc, sysfs, tmpfs and devtmpfs are)"
        case .unsupportedMountOption(let field, let option): "config.json: \(field).options '\(option)' is not supported"
        case .badValue(let field, let why): "config.json: \(field): \(why)"
        }
    }
}
