import Glibc
import Swiftlet
import Synchronization

/// The `logger` and `metrics` outputs: an existing file or FIFO each, opened for appending
/// without blocking (a FIFO nobody reads drops lines instead of stalling the API thread).
public final class APILog: Sendable {
    private struct Outputs {
        var logFD: Int32 = -1
        var level = 3
        var showLevel = false
        var showOrigin = false
        var instanceID = "anonymous-instance"
        var metricsFD: Int32 = -1
        var requests: [String: UInt64] = [:]
        var failures: UInt64 = 0
    }

    private let outputs = Mutex(Outputs())
    /// Nanoseconds from process start to the socket accepting, and the CPU time then (µs).
    public let startup = Mutex<(wallMicroseconds: UInt64, cpuMicroseconds: UInt64)?>(nil)

    /// Whether `logger` and `metrics` may open files (false for the fuzzer, whose paths are random).
    public let opensFiles: Bool

    /// No outputs yet; with `opensFiles` false every logger or metrics request is refused.
    public init(opensFiles: Bool = true) { self.opensFiles = opensFiles }

    /// A logger configuration that cannot be applied.
    public struct ConfigurationError: Error, CustomStringConvertible {
        /// One line.
        public let description: String
    }

    static let levels = ["Off": 0, "Error": 1, "Warning": 2, "Info": 3, "Debug": 4, "Trace": 5]

    func openForAppending(_ path: String, what: String) throws(ConfigurationError) -> Int32 {
        guard opensFiles else { throw ConfigurationError(description: "this API log opens no files") }
        let fd = open(path, O_RDWR | O_APPEND | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            throw ConfigurationError(description: "Cannot open the \(what) file \(path): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Opens the log (PUT /logger); only once, as in Firecracker.
    public func configureLogger(_ model: LoggerModel, instanceID: String) throws(ConfigurationError) {
        let level = model.level.map { Self.levels[$0] ?? Self.levels[$0.capitalized] }
        if let level, level == nil { throw ConfigurationError(description: "Invalid log level \(model.level!)") }
        let already = outputs.withLock { $0.logFD >= 0 }
        if already { throw ConfigurationError(description: "Reinitialization of logger not allowed.") }
        let fd =
            try model.logPath.map { (path) throws(ConfigurationError) in try self.openForAppending(path, what: "log") }
            ?? STDERR_FILENO
        outputs.withLock {
            $0.logFD = fd
            if let level = level ?? nil { $0.level = level }
            $0.showLevel = model.showLevel ?? false
            $0.showOrigin = model.showLogOrigin ?? false
            $0.instanceID = instanceID
        }
        info("Running Swiftlet v\(SwiftletVersion.string)")
    }

    /// Opens the metrics output (PUT /metrics); only once.
    public func configureMetrics(_ model: MetricsModel) throws(ConfigurationError) {
        let already = outputs.withLock { $0.metricsFD >= 0 }
        if already { throw ConfigurationError(description: "Reinitialization of metrics not allowed.") }
        let fd = try openForAppending(model.metricsPath, what: "metrics")
        outputs.withLock { $0.metricsFD = fd }
    }

    /// Whether metrics are configured.
    public var hasMetrics: Bool { outputs.withLock { $0.metricsFD >= 0 } }

    /// Counts a request and logs it at Info (failures at Warning).
    func request(method: String, path: String, status: Int) {
        outputs.withLock {
            $0.requests[method.lowercased(), default: 0] += 1
            if status >= 400 { $0.failures += 1 }
        }
        write(
            level: status >= 400 ? 2 : 3, origin: "api", "The API server received a \(method) request on \"\(path)\": \(status).")
    }

    /// Logs `message` at Info.
    public func info(_ message: String) { write(level: 3, origin: "vmm", message) }

    private func write(level: Int, origin: String, _ message: String) {
        let (fd, show, showLevel, showOrigin, id) = outputs.withLock {
            ($0.logFD, level <= $0.level, $0.showLevel, $0.showOrigin, $0.instanceID)
        }
        guard fd >= 0, show else { return }
        let name = Self.levels.first { $0.value == level }?.key ?? "Info"
        var line = "\(Self.timestamp()) [\(id)"
        if showLevel { line += ":\(name.uppercased())" }
        if showOrigin { line += ":\(origin)" }
        line += "] \(message)\n"
        line.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// Writes one metrics line (JSON): request counts, start-up times, the state.
    public func writeMetrics(state: VMMState) {
        let (fd, requests, failures) = outputs.withLock { ($0.metricsFD, $0.requests, $0.failures) }
        guard fd >= 0 else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let milliseconds = UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
        let start = startup.withLock { $0 }
        var line = "{\"utc_timestamp_ms\":\(milliseconds),\"api_server\":{"
        if let start {
            line +=
                "\"process_startup_time_us\":\(start.wallMicroseconds),\"process_startup_time_cpu_us\":\(start.cpuMicroseconds),"
        }
        line += "\"sync_response_fails\":\(failures)},"
        line +=
            "\"get_api_requests\":{\"count\":\(requests["get"] ?? 0)},\"put_api_requests\":{\"count\":\(requests["put"] ?? 0)},"
        line += "\"patch_api_requests\":{\"count\":\(requests["patch"] ?? 0)},\"vmm\":{\"state\":\"\(state.rawValue)\"}}\n"
        line.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// Records the start-up figures (from process start to the socket accepting).
    public func recordStartup() {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu =
            UInt64(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000
            + UInt64(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        let wall = (nanoseconds - min(nanoseconds, ProcessClock.startNanoseconds)) / 1000
        startup.withLock { $0 = (wall, cpu) }
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let nanos = String(now.tv_nsec)
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):"
            + "\(two(parts.tm_sec)).\(String(repeating: "0", count: 9 - nanos.count) + nanos)"
    }
}
