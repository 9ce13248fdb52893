import CHost
import CKVM
import Glibc
import Testing

/// A pseudo-terminal the test owns: the master side to type into and read guest output from,
/// and a slave descriptor kept open so the terminal's mode can be read after the child exits.
final class PseudoTerminal {
    let master: Int32
    let slave: Int32
    let slavePath: String

    init() throws {
        var name = [CChar](repeating: 0, count: 128)
        master = swl_open_pty(&name, UInt(name.count))
        guard master >= 0 else {
            throw TestFailure("opening a pty (posix_openpt, grantpt, unlockpt, ptsname_r) failed: errno \(errno)")
        }
        slavePath = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        slave = open(slavePath, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard slave >= 0 else {
            close(master)
            throw TestFailure("open \(slavePath) failed: errno \(errno)")
        }
    }

    deinit {
        close(slave)
        close(master)
    }

    /// The slave's mode now (tcgetattr on the slave side).
    func mode() throws -> termios {
        var mode = termios()
        guard tcgetattr(slave, &mode) == 0 else { throw TestFailure("tcgetattr failed: errno \(errno)") }
        return mode
    }

    /// Sets a cooked mode that is easy to tell from both the default and raw mode: canonical
    /// input with echo and signals, output post-processing, and unusual control characters.
    @discardableResult
    func setRecognisableCookedMode() throws -> termios {
        var mode = try self.mode()
        mode.c_iflag = tcflag_t(ICRNL | IXON | IXANY | IMAXBEL | IUTF8)
        mode.c_oflag = tcflag_t(OPOST | ONLCR)
        mode.c_cflag = (mode.c_cflag & ~tcflag_t(CSIZE | PARENB)) | tcflag_t(CS7 | CREAD | HUPCL)
        mode.c_lflag = tcflag_t(ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | IEXTEN)
        withUnsafeMutableBytes(of: &mode.c_cc) { cc in
            cc[Int(VINTR)] = 0x07
            cc[Int(VERASE)] = 0x08
            cc[Int(VKILL)] = 0x0B
            cc[Int(VEOF)] = 0x0E
            cc[Int(VMIN)] = 7
            cc[Int(VTIME)] = 3
        }
        guard tcsetattr(slave, TCSANOW, &mode) == 0 else { throw TestFailure("tcsetattr failed: errno \(errno)") }
        return try self.mode()
    }

    /// Writes `bytes` to the master, as if typed.
    func type(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(master, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { throw TestFailure("writing to the pty failed: errno \(errno)") }
            offset += written
        }
    }

    /// Reads from the master until `done(everything read)` or `seconds` pass; returns what was read.
    func read(for seconds: Double, until done: ([UInt8]) -> Bool) -> [UInt8] {
        let deadline = Subprocess.monotonicNow() + seconds
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !done(received) {
            let left = deadline - Subprocess.monotonicNow()
            if left <= 0 { break }
            var descriptor = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(left * 1000) + 1)
            guard ready > 0 else { continue }
            let count = chunk.withUnsafeMutableBytes { Glibc.read(master, $0.baseAddress, $0.count) }
            if count > 0 {
                received += chunk[..<count]
            } else if count < 0, errno == EINTR || errno == EAGAIN {
                continue
            } else {
                break
            }
        }
        return received
    }
}

/// Whether two modes agree in every field raw mode changes: the four flag words and the control
/// characters.
func sameMode(_ a: termios, _ b: termios) -> Bool {
    var a = a, b = b
    let cc = withUnsafeBytes(of: &a.c_cc) { x in withUnsafeBytes(of: &b.c_cc) { y in x.elementsEqual(y) } }
    return a.c_iflag == b.c_iflag && a.c_oflag == b.c_oflag && a.c_cflag == b.c_cflag && a.c_lflag == b.c_lflag && cc
}

/// A program started in a new session (posix_spawn with POSIX_SPAWN_SETSID) whose standard
/// input and output are a pty slave (opening it as a session leader makes it the controlling
/// terminal, as TIOCSCTTY would) and whose standard error goes to a file, or whose output is
/// a pipe the test reads (or leaves unread) itself.
final class SpawnedProgram {
    let pid: pid_t
    private let errors: TemporaryFile
    private var status: Int32?

    /// Runs `path` with `arguments`; descriptors 0 and 1 per `stdinPath`/`stdoutPath` or the
    /// given pipe write end.
    init(
        _ path: String, _ arguments: [String], stdinPath: String, stdoutPath: String? = nil, stdoutDescriptor: Int32? = nil,
        newSession: Bool
    ) throws {
        errors = try TemporaryFile(contents: [])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdinPath, O_RDWR, 0)
        if let stdoutPath {
            posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_RDWR, 0)
        } else if let stdoutDescriptor {
            posix_spawn_file_actions_adddup2(&actions, stdoutDescriptor, 1)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 0, 1)
        }
        posix_spawn_file_actions_addopen(&actions, 2, errors.path, O_WRONLY | O_TRUNC, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default signal actions and nothing blocked, whatever the test runner has.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        let flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | (newSession ? Int32(SWL_POSIX_SPAWN_SETSID) : 0)
        posix_spawnattr_setflags(&attributes, Int16(flags))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        guard spawned == 0 else { throw TestFailure("posix_spawn \(path) failed: errno \(spawned)") }
        self.pid = pid
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            var ignored: Int32 = 0
            _ = waitpid(pid, &ignored, 0)
        }
    }

    /// The exit status once the program ends within `seconds` (-1 - N when signal N killed it);
    /// kills it and throws when it does not.
    func wait(within seconds: Double) throws -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        guard try Subprocess.waitForExit(pid, status: &raw, within: seconds) else {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &raw, 0)
            status = -1 - SIGKILL
            throw TestFailure("the program did not end within \(seconds) s (killed)")
        }
        let result = raw & 0x7F == 0 ? (raw >> 8) & 0xFF : -1 - (raw & 0x7F)
        status = result
        return result
    }

    /// What the program wrote on standard error so far.
    var stderr: String { (try? Subprocess.contents(of: errors.path)) ?? "" }
}
