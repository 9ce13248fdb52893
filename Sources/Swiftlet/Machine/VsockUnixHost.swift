import CHost
import Glibc
import SwiftletDevices
import SwiftletHost

/// The host side of the virtio-vsock device, Firecracker's hybrid vsock over Unix sockets
/// (Docs/VSOCK.md), run on the event-loop thread.
///
/// - Host-initiated: a program connects to the listening socket at `path` and writes
///   `CONNECT <port>\n`; the device sends the guest a REQUEST for that port from a fresh host
///   port, and once the guest responds the program reads `OK <host port>\n` and the stream
///   follows. A guest reset, a malformed line or a connect timeout (5 s) closes the socket.
/// - Guest-initiated: a guest connecting to CID 2 port P is connected to the Unix socket
///   `path_P`; the guest gets RESPONSE once that connect succeeds, RST when it fails.
///
/// Every socket is nonblocking. Data from a socket is read only up to the guest's free credit
/// (`VsockConnections.credit(for:)`), so a slow guest stops the reading, not the loop; data for a
/// socket stays in the connection's bounded buffer until the socket takes it, and the guest's
/// credit returns only as it does. Everything here runs on the loop thread (the listener's,
/// sockets' and timer's handlers and the device's queue service), except `shutdown()`, which runs
/// after the loop has stopped.
final class VsockUnixHost: @unchecked Sendable {
    /// The most sockets still writing their `CONNECT` line; a further client is closed at once.
    static let maximumPendingCommands = 64
    /// The longest `CONNECT <port>` line accepted, in bytes.
    static let maximumCommandBytes = 32

    private enum Role {
        /// Accepted, reading the `CONNECT <port>\n` line so far.
        case command([UInt8])
        /// `CONNECT` read; the guest has been sent a REQUEST and not answered yet.
        case awaitingGuest(VsockConnections.Key)
        /// Both sides open.
        case established(VsockConnections.Key)
    }

    private final class Socket {
        let descriptor: OwnedFileDescriptor
        var role: Role
        /// Bytes to write before any guest data (the `OK <port>\n` line).
        var prefix: [UInt8] = []
        /// The socket reached end of file (the host side shut down its writing).
        var readEOF = false
        /// The peer is gone (EPOLLHUP/EPOLLERR); the socket is no longer watched.
        var hungUp = false
        /// The guest will send no more: shut down writing once its data is written.
        var guestSendClosed = false
        var wroteShutdown = false
        /// The events the loop watches the socket for now.
        var interest: UInt32
        init(_ descriptor: OwnedFileDescriptor, role: Role, interest: UInt32) {
            self.descriptor = descriptor
            self.role = role
            self.interest = interest
        }
        var key: VsockConnections.Key? {
            switch role {
            case .command: nil
            case .awaitingGuest(let key), .established(let key): key
            }
        }
    }

    /// The listening socket's path (removed by `shutdown()`).
    let path: String
    private let listener: OwnedFileDescriptor
    private let timer: LoopTimer
    private let eventLoop: EventLoop
    private var transport: VirtioVsockTransport?
    private var sockets: [Int32: Socket] = [:]
    private var byKey: [VsockConnections.Key: Int32] = [:]
    private var pendingCommands = 0
    private var armedDeadline: UInt64?
    private var transmitDeferred = false
    private var isShutDown = false
    private var scratch = [UInt8](repeating: 0, count: Int(VsockConnections.maximumPayload))

    /// Binds and listens on `path` (which must not exist). Nothing is watched until `attach`.
    init(path: String, eventLoop: EventLoop) throws(SystemError) {
        self.path = path
        self.eventLoop = eventLoop
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.current("socket(AF_UNIX)") }
        listener = OwnedFileDescriptor(taking: fd)
        var result = Self.withAddress(path) { bind(fd, $0, $1) }
        if result != 0 { throw SystemError.current("bind \(path)") }
        result = listen(fd, 128)
        if result != 0 {
            let error = SystemError.current("listen \(path)")
            unlink(path)
            throw error
        }
        do { timer = try LoopTimer() } catch {
            unlink(path)
            throw error
        }
    }

    /// Calls `body` with a `sockaddr_un` for `path` and its length (the path fits: checked by
    /// `VsockConfiguration.validate()`; a longer one is cut, and its connect or bind fails).
    private static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path) - 1
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.prefix(capacity).enumerated() { raw[i] = byte }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Watches the listener and the connect timer for `transport`'s device. The handlers are
    /// removed with the event loop's (`EventLoop.removeAllHandlers`).
    func attach(_ transport: VirtioVsockTransport) throws(SystemError) {
        self.transport = transport
        try eventLoop.add(listener.rawValue, events: EPOLLIN.rawValue) { [self] _ in acceptClients() }
        try eventLoop.add(timer.fileDescriptor, events: EPOLLIN.rawValue) { [self] _ in
            timer.consume()
            armedDeadline = nil
            let now = monotonicNanoseconds()
            _ = transport.updateDevice { $0.connections.expire(now: now) }
            pump()
        }
    }

    /// The device's queue service: serves `queue`, then acts on what the connections did and
    /// moves packets to the guest.
    func serve(_ transport: VirtioVsockTransport, queue: Int) -> VirtioQueueService {
        let service = transport.processQueue(queue)
        if queue == VirtioVsock.Queue.tx { transmitDeferred = service == .deferred }
        if queue != VirtioVsock.Queue.event { pump() }
        return service
    }

    // MARK: Sockets

    private func acceptClients() {
        while true {
            let fd = swl_accept_nonblocking(listener.rawValue)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // EAGAIN, or out of descriptors: the client waits in the backlog
            }
            let descriptor = OwnedFileDescriptor(taking: fd)
            guard pendingCommands < Self.maximumPendingCommands,
                sockets.count < VsockConnections.maximumConnections + Self.maximumPendingCommands
            else { continue }  // closed as `descriptor` goes
            let socket = Socket(descriptor, role: .command([]), interest: EPOLLIN.rawValue)
            guard watch(socket) else { continue }
            pendingCommands += 1
        }
    }

    private func watch(_ socket: Socket) -> Bool {
        let fd = socket.descriptor.rawValue
        do throws(SystemError) {
            try eventLoop.add(fd, events: socket.interest) { [self] events in socketReady(fd, events) }
        } catch {
            return false
        }
        sockets[fd] = socket
        return true
    }

    private func socketReady(_ fd: Int32, _ events: UInt32) {
        guard let socket = sockets[fd] else { return }
        let failed = events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0
        switch socket.role {
        case .command:
            readCommand(socket)
        case .awaitingGuest(let key):
            // Only an error or hang-up is watched for: the client went away before the guest answered.
            if failed { reset(key) }
        case .established(let key):
            if events & EPOLLOUT.rawValue != 0 { flush(socket, key) }
            if sockets[fd] != nil, events & EPOLLIN.rawValue != 0 || failed { readFromHost(socket, key) }
            if sockets[fd] != nil, failed, !socket.hungUp {
                // The peer is gone: what it sent was read (within the guest's credit), and
                // nothing more can be written. The guest gets SHUTDOWN and then closes.
                socket.hungUp = true
                eventLoop.remove(fd)
                if !socket.readEOF {
                    socket.readEOF = true
                    transport?.updateDevice { $0.connections.hostShutdown(key) }
                }
            }
        }
        pump()
    }

    /// Reads the `CONNECT <port>\n` line a byte at a time, so that stream data after it stays in
    /// the socket until the guest has accepted.
    private func readCommand(_ socket: Socket) {
        guard case .command(var line) = socket.role, let transport else { return }
        let fd = socket.descriptor.rawValue
        while true {
            var byte: UInt8 = 0
            let n = recv(fd, &byte, 1, 0)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                socket.role = .command(line)
                return
            }
            guard n == 1, line.count < Self.maximumCommandBytes else { return closeSocket(fd) }
            if byte != UInt8(ascii: "\n") {
                line.append(byte)
                continue
            }
            guard let port = Self.parseConnect(line) else { return closeSocket(fd) }
            let now = monotonicNanoseconds()
            guard let key = transport.updateDevice({ $0.connections.hostConnect(guestPort: port, now: now) }) else {
                return closeSocket(fd)
            }
            pendingCommands -= 1
            socket.role = .awaitingGuest(key)
            byKey[key] = fd
            return
        }
    }

    /// The port of `CONNECT <port>` (a trailing `\r` allowed), or nil.
    static func parseConnect(_ line: [UInt8]) -> UInt32? {
        var text = line
        if text.last == UInt8(ascii: "\r") { text.removeLast() }
        let prefix = Array("CONNECT ".utf8)
        guard text.count > prefix.count, text.count <= prefix.count + 10, Array(text.prefix(prefix.count)) == prefix else {
            return nil
        }
        var port: UInt64 = 0
        for digit in text.dropFirst(prefix.count) {
            guard digit >= 0x30, digit <= 0x39 else { return nil }
            port = port * 10 + UInt64(digit - 0x30)
        }
        return port <= UInt64(UInt32.max) ? UInt32(port) : nil
    }

    /// Host data for the guest, as much as its credit allows now.
    private func readFromHost(_ socket: Socket, _ key: VsockConnections.Key) {
        guard let transport, !socket.readEOF else { return }
        let fd = socket.descriptor.rawValue
        while true {
            let credit = transport.updateDevice { $0.connections.credit(for: key) }
            guard credit > 0 else { return }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min(credit, $0.count), 0) }
            if n > 0 {
                let taken = scratch.withUnsafeBufferPointer { buffer in
                    transport.updateDevice { $0.connections.sendToGuest(key, buffer.prefix(n)) }
                }
                if taken < n { return reset(key) }  // cannot happen: n was within the credit
                continue
            }
            if n == 0 {
                socket.readEOF = true
                transport.updateDevice { $0.connections.hostShutdown(key) }
                return
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return }
            return reset(key)
        }
    }

    /// Writes the `OK` line, then guest data, until the socket is full; shuts down writing once
    /// the guest has shut down sending and everything is written.
    private func flush(_ socket: Socket, _ key: VsockConnections.Key) {
        guard let transport, !socket.hungUp else { return }
        let fd = socket.descriptor.rawValue
        while !socket.prefix.isEmpty {
            let n = socket.prefix.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                socket.prefix.removeFirst(n)
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            return reset(key)
        }
        while true {
            let pending = transport.withDevice {
                $0.connections.pendingForHost(key, maximum: Int(VsockConnections.maximumPayload))
            }
            if pending.isEmpty { break }
            let n = pending.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                transport.updateDevice { $0.connections.hostConsumed(key, count: n) }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            return reset(key)
        }
        if socket.guestSendClosed && !socket.wroteShutdown {
            socket.wroteShutdown = true
            _ = Glibc.shutdown(fd, Int32(SHUT_WR))
        }
    }

    /// The guest connects to host port `key.hostPort`: connect to `path_<port>`.
    private func connectOut(_ key: VsockConnections.Key) {
        guard let transport else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return transport.updateDevice { $0.connections.hostReset(key) } }
        let descriptor = OwnedFileDescriptor(taking: fd)
        // A Unix stream connect completes at once or fails (EAGAIN: the listener's backlog is full).
        let result = Self.withAddress("\(path)_\(key.hostPort)") { connect(fd, $0, $1) }
        let socket = Socket(descriptor, role: .established(key), interest: EPOLLIN.rawValue)
        guard result == 0, watch(socket) else { return transport.updateDevice { $0.connections.hostReset(key) } }
        byKey[key] = fd
        transport.updateDevice { $0.connections.hostAccepted(key) }
    }

    /// The host side of `key` failed: the guest gets RST and the socket is closed.
    private func reset(_ key: VsockConnections.Key) {
        transport?.updateDevice { $0.connections.hostReset(key) }
        if let fd = byKey[key] { closeSocket(fd) }
    }

    private func closeSocket(_ fd: Int32) {
        guard let socket = sockets.removeValue(forKey: fd) else { return }
        if case .command = socket.role { pendingCommands -= 1 }
        if let key = socket.key, byKey[key] == fd { byKey[key] = nil }
        if !socket.hungUp { eventLoop.remove(fd) }
    }

    // MARK: The connections' events

    /// Acts on the connections' events, moves packets to the guest's rx queue (and tx packets
    /// the device had deferred), until nothing new happens; then sets what each socket is
    /// watched for and the connect timer.
    private func pump() {
        guard let transport, !isShutDown else { return }
        for _ in 0..<16 {
            let events = transport.updateDevice { $0.connections.takeEvents() }
            for event in events { handle(event) }
            transport.processQueue(VirtioVsock.Queue.rx)
            if transmitDeferred { transmitDeferred = transport.processQueue(VirtioVsock.Queue.tx) == .deferred }
            if events.isEmpty && !transport.withDevice({ $0.connections.hasPendingEvents }) { break }
        }
        refreshInterests()
    }

    private func handle(_ event: VsockConnections.HostEvent) {
        switch event {
        case .accepted(let key):
            guard let fd = byKey[key], let socket = sockets[fd] else { return }
            socket.role = .established(key)
            socket.prefix = Array("OK \(key.hostPort)\n".utf8)
            flush(socket, key)
        case .guestConnects(let key):
            connectOut(key)
        case .dataForHost(let key):
            if let fd = byKey[key], let socket = sockets[fd] { flush(socket, key) }
        case .guestShutdownSend(let key):
            guard let fd = byKey[key], let socket = sockets[fd] else { return }
            socket.guestSendClosed = true
            flush(socket, key)
        case .closed(let key):
            if let fd = byKey[key] { closeSocket(fd) }
        }
    }

    private func refreshInterests() {
        guard let transport else { return }
        transport.withDevice { device in
            for (fd, socket) in sockets where !socket.hungUp {
                var wanted: UInt32 = 0
                switch socket.role {
                case .command: wanted = EPOLLIN.rawValue
                case .awaitingGuest: wanted = 0
                case .established(let key):
                    if !socket.readEOF && device.connections.credit(for: key) > 0 { wanted |= EPOLLIN.rawValue }
                    if !socket.prefix.isEmpty || !device.connections.pendingForHost(key, maximum: 1).isEmpty {
                        wanted |= EPOLLOUT.rawValue
                    }
                }
                if wanted != socket.interest {
                    socket.interest = wanted
                    eventLoop.modify(fd, events: wanted)
                }
            }
        }
        let deadline = transport.withDevice { $0.connections.nextDeadline }
        if let deadline, deadline != armedDeadline {
            armedDeadline = deadline
            let now = monotonicNanoseconds()
            timer.arm(afterNanoseconds: deadline > now ? deadline - now : 1)
        }
    }

    // MARK: Teardown

    /// Closes every socket and the listener and removes the socket file (after the event loop
    /// has stopped, or before it ran). Runs once.
    func shutdown() {
        guard !isShutDown else { return }
        isShutDown = true
        sockets.removeAll()
        byKey.removeAll()
        transport = nil
        unlink(path)
    }
}
