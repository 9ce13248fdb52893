import Swiftlet

#if canImport(Glibc)
    import Glibc
#endif

/// The guest kernel and initramfs a bundle boots with, and what the host needs added to the
/// kernel command line. Found in Swiftlet's cache (`make guest-kernel guest-initramfs`) unless
/// given: `<cache>/kernel-current/vmlinux` and `<cache>/initramfs.cpio`.
public struct GuestKernel: Equatable, Sendable {
    /// The kernel image.
    public var kernelPath: String
    /// The initramfs with Swiftlet's init (its bundle mode runs the process).
    public var initrdPath: String
    /// Words the kernel needs on this host (`boot.conf`'s `cmdline`), e.g. those of a KVM that
    /// emulates guest kernel code.
    public var extraCommandLine: String
    /// CPUID features to hide (`boot.conf`'s `cpuid-mask`).
    public var cpuidMask: [CPUIDFeature]

    /// A kernel given explicitly, with no host extras.
    public init(kernelPath: String, initrdPath: String, extraCommandLine: String = "", cpuidMask: [CPUIDFeature] = []) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.extraCommandLine = extraCommandLine
        self.cpuidMask = cpuidMask
    }

    /// The cache directory: `$SWIFTLET_CACHE`, else /var/cache/swiftlet.
    public static var cacheDirectory: String {
        if let value = getenv("SWIFTLET_CACHE"), value.pointee != 0 { return String(cString: value) }
        return "/var/cache/swiftlet"
    }

    /// The kernel (`kernel`, else the cache's `kernel-current/vmlinux`) and initramfs (`initrd`,
    /// else the cache's `initramfs.cpio`), checked to exist, with the `boot.conf` found beside
    /// the kernel: lines `cmdline: WORDS` and `cpuid-mask: LIST` (`#` starts a comment).
    public static func find(kernel: String? = nil, initrd: String? = nil, cacheDirectory: String = cacheDirectory)
        throws(GuestKernelError) -> GuestKernel
    {
        let kernelPath = kernel ?? cacheDirectory + "/kernel-current/vmlinux"
        let initrdPath = initrd ?? cacheDirectory + "/initramfs.cpio"
        guard access(kernelPath, R_OK) == 0 else {
            throw kernel == nil ? .notBuilt(kernelPath) : .missing("--kernel", kernelPath)
        }
        guard access(initrdPath, R_OK) == 0 else {
            throw initrd == nil ? .notBuilt(initrdPath) : .missing("--initrd", initrdPath)
        }
        var found = GuestKernel(kernelPath: kernelPath, initrdPath: initrdPath)
        let directory = kernelPath.contains("/") ? String(kernelPath[..<kernelPath.lastIndex(of: "/")!]) : "."
        let confPath = directory + "/boot.conf"
        if let text = readSmallFile(confPath) { try found.apply(bootConf: text, path: confPath) }
        return found
    }

    /// Reads `boot.conf`'s lines into this kernel's extras.
    mutating func apply(bootConf text: String, path: String) throws(GuestKernelError) {
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            guard let colon = line.firstIndex(of: ":") else {
                if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
                throw .badBootConf(path, number + 1, "expected 'cmdline: WORDS' or 'cpuid-mask: LIST'")
            }
            let key = line[..<colon].trimmingSpaces
            let value = line[line.index(after: colon)...].trimmingSpaces
            switch key {
            case "cmdline": extraCommandLine = extraCommandLine.isEmpty ? value : extraCommandLine + " " + value
            case "cpuid-mask":
                if value.isEmpty { continue }
                do { cpuidMask = try CPUIDFeature.parseMask(value) } catch { throw .badBootConf(path, number + 1, "\(error)") }
            default: throw .badBootConf(path, number + 1, "unknown key '\(key)'")
            }
        }
    }

    private static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return count >= 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(
            drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed())
    }
}

/// Why the guest kernel or initramfs cannot be used.
public enum GuestKernelError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Nothing in the cache at this path.
    case notBuilt(String)
    /// A path given with the option does not exist or cannot be read.
    case missing(String, String)
    /// `boot.conf` (path, line number) has a line that cannot be read.
    case badBootConf(String, Int, String)

    /// One line; for a missing cache entry, the command that builds it.
    public var description: String {
        switch self {
        case .notBuilt(let path):
            "no guest kernel or initramfs at \(path): build them with 'make guest-kernel guest-initramfs' (or give --kernel and --initrd)"
        case .missing(let option, let path): "\(option) \(path): no such readable file"
        case .badBootConf(let path, let line, let why): "\(path):\(line): \(why)"
        }
    }
}
