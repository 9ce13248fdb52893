import CHost

#if canImport(Glibc)
    import Glibc
#endif

/// Why a root disk or spec disk could not be made.
public struct ImageError: Error, Equatable, CustomStringConvertible, Sendable {
    /// One line: what failed and why.
    public let description: String

    init(_ description: String) { self.description = description }

    static func system(_ what: String, _ path: String, _ code: Int32 = errno) -> ImageError {
        ImageError("\(what) \(path): \(String(cString: strerror(code)))")
    }
}

/// The root disk of a bundle: an ext4 image built from the root directory with e2fsprogs
/// (`mkfs.ext4 -d`), cached by content in `<cache>/rootfs/<key>.ext4`. The key is a SHA-256 over
/// every entry's path, type, mode, owner, size, device number, symlink target and file
/// contents (and this recipe's revision), so an unchanged tree is never rebuilt and any change
/// gives a new image. An image is built into a temporary file and renamed into place: a failed
/// or interrupted build never leaves a cache entry.
public enum RootFilesystemImage {
    /// lseek(2)'s whence values for data and holes (Linux; Glibc exports them only with _GNU_SOURCE).
    private static let seekData: Int32 = 3
    private static let seekHole: Int32 = 4

    /// Bump when the way images are built changes.
    static let recipe = "swiftlet-rootfs 1: mkfs.ext4 -q -F -O ^has_journal -N inodes -d"

    /// What a tree walk found: its key and what the image must hold.
    package struct TreeSummary {
        /// The cache key: 32 hex digits of the tree's SHA-256.
        package var key: String
        /// Files, directories, links and nodes, the root included.
        package var entries: Int
        /// Their size rounded up to 4 KiB blocks, plus a block each.
        package var bytes: UInt64
    }

    /// The cached image for `root`, built first if there is none; returns its path.
    public static func image(for root: String, cacheDirectory: String) throws(ImageError) -> String {
        let tree = try summarize(root)
        let directory = cacheDirectory + "/rootfs"
        try makeDirectory(cacheDirectory)
        try makeDirectory(directory)
        let path = "\(directory)/\(tree.key).ext4"
        if access(path, R_OK) == 0 { return path }
        // Room for every file's blocks, inode tables and ext4's own metadata, plus a margin the
        // guest may write into when the root is writable.
        let size = max(32 << 20, (tree.bytes + tree.bytes / 4 + (16 << 20)) / (1 << 20) * (1 << 20))
        let temporary = "\(directory)/.build-\(tree.key)-\(getpid()).ext4"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .system("cannot create", temporary) }
        let truncated = ftruncate(fd, off_t(size))
        close(fd)
        guard truncated == 0 else {
            unlink(temporary)
            throw .system("cannot size", temporary)
        }
        do {
            try runTool(
                "mkfs.ext4",
                [
                    "-q", "-F", "-O", "^has_journal", "-N", String(tree.entries + 256), "-L", "swiftlet-root", "-d", root,
                    temporary,
                ],
                missing: "mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs)")
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw .system("cannot rename the image to", path, code)
        }
        return path
    }

    /// The cache key, entry count and bytes of the tree at `root`.
    package static func summarize(_ root: String) throws(ImageError) -> TreeSummary {
        var hash = SHA256()
        hash.update(recipe + "\n")
        var summary = TreeSummary(key: "", entries: 0, bytes: 0)
        try walk(root, relative: "", hash: &hash, summary: &summary)
        summary.key = String(hash.finish().prefix(32))
        return summary
    }

    private static func walk(_ root: String, relative: String, hash: inout SHA256, summary: inout TreeSummary) throws(ImageError)
    {
        let path = relative.isEmpty ? root : root + "/" + relative
        var info = stat()
        guard lstat(path, &info) == 0 else { throw .system("cannot read", path) }
        summary.entries += 1
        summary.bytes += (UInt64(info.st_size) + 4095) / 4096 * 4096 + 4096
        let type = info.st_mode & S_IFMT
        hash.update("\(relative)\0\(info.st_mode)\0\(info.st_uid)\0\(info.st_gid)\0\(info.st_size)\0\(info.st_rdev)\0")
        switch type {
        case S_IFDIR:
            for name in try listDirectory(path) {
                try walk(root, relative: relative.isEmpty ? name : relative + "/" + name, hash: &hash, summary: &summary)
            }
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: 4097)
            let count = readlink(path, &target, 4096)
            guard count >= 0 else { throw .system("cannot read the link", path) }
            hash.update(target[..<count].map { UInt8(bitPattern: $0) })
        case S_IFREG:
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .system("cannot read", path) }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count >= 0 else { throw .system("cannot read", path) }
                if count == 0 { break }
                hash.update(buffer[..<count])
            }
        default:
            break  // devices, FIFOs, sockets: their mode and device number are in the key
        }
        hash.update("\n")
    }

    private static func listDirectory(_ path: String) throws(ImageError) -> [String] {
        guard let directory = opendir(path) else { throw .system("cannot list", path) }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    static func makeDirectory(_ path: String) throws(ImageError) {
        if mkdir(path, 0o755) != 0, errno != EEXIST { throw .system("cannot create the directory", path) }
    }

    /// Copies the image at `source` to a new file `destination`, copying only its data extents
    /// (the holes stay holes): the per-run root disk of a bundle whose root is writable, so the
    /// cached image never changes.
    public static func copySparse(_ source: String, to destination: String) throws(ImageError) {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw .system("cannot open", source) }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw .system("cannot create", destination) }
        defer { close(output) }
        let size = lseek(input, 0, SEEK_END)
        guard size >= 0, ftruncate(output, size) == 0 else { throw .system("cannot size", destination) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset = lseek(input, 0, seekData)
        while offset >= 0, offset < size {
            let hole = lseek(input, offset, seekHole)
            let end = hole < 0 ? size : hole
            while offset < end {
                let want = Int(min(end - offset, off_t(buffer.count)))
                let count = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, want, offset) }
                guard count > 0 else { throw .system("cannot read", source) }
                let written = buffer.withUnsafeBytes { pwrite(output, $0.baseAddress, count, offset) }
                guard written == count else { throw .system("cannot write", destination) }
                offset += off_t(count)
            }
            offset = lseek(input, offset, seekData)
        }
    }

    /// Writes `bytes` to a new file at `path`.
    public static func writeFile(_ bytes: [UInt8], to path: String) throws(ImageError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system("cannot create", path) }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw .system("cannot write", path) }
    }

    /// Runs `tool` (looked up in PATH) with `arguments` and waits; its stderr becomes the error.
    static func runTool(_ tool: String, _ arguments: [String], missing: String) throws(ImageError) {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw .system("cannot create a pipe for", tool) }
        _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        let argv = ([tool] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, tool, &actions, nil, argv, environ)
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        guard spawned == 0 else {
            if spawned == ENOENT { throw ImageError(missing) }
            throw .system("cannot run", tool, spawned)
        }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            if output.count < 4096 { output += chunk[..<count] }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        guard status == 0 else {
            let firstLine = String(decoding: output, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
            throw ImageError("\(tool) failed (wait status \(status))\(firstLine.isEmpty ? "" : ": " + firstLine)")
        }
    }
}
