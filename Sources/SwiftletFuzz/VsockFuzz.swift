import SwiftletDevices

/// libFuzzer target for the virtio-vsock packet path (`make fuzz FUZZ_TARGET=vsock`): header
/// parsing and validation, and the connection state machine (`VsockConnections`) driven from both
/// sides at once, as the device and `VsockUnixHost` drive it.
///
/// An input is an operation script followed by a byte stream:
///
///     [script length: u16 LE] [script: 8-byte operations] [stream: raw headers and payloads]
///
/// Operations: a raw 44-byte header (and payload) from the stream, parsed and validated as the
/// device does with a tx chain; a well-formed packet with fuzzed operation, ports, length and
/// credit fields; the host connecting, accepting, sending within the credit, consuming guest
/// data, shutting down, resetting; time passing (connect timeouts); and the device draining the
/// packets for the guest into rx buffers of fuzzed sizes. What is checked after every operation:
/// nothing traps, no more than `maximumConnections` exist, every connection's credit for the host
/// lies in 0...bufferBytes, guest data waiting for the host never exceeds bufferBytes, and no
/// packet for the guest carries more payload than its rx buffer or `maximumPayload`.
enum VsockFuzz {
    static let guestCID: UInt64 = 3

    static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let scriptLength = min(Int(input[0]) | Int(input[1]) << 8, input.count - 2)
        let script = UnsafeRawBufferPointer(rebasing: input[2..<(2 + scriptLength)])
        var stream = UnsafeRawBufferPointer(rebasing: input[(2 + scriptLength)...])[...]

        var connections = VsockConnections(guestCID: guestCID)
        var keys: [VsockConnections.Key] = []
        var now: UInt64 = 1_000_000
        var position = 0
        while position + 8 <= script.count {
            let op = script[position]
            let small = script[position + 1]
            let port = UInt32(script[position + 2] % 8)
            let value = script.loadUnaligned(fromByteOffset: position + 4, as: UInt32.self)
            position += 8
            let key = keys.isEmpty ? nil : keys[Int(small) % keys.count]
            switch op % 10 {
            case 0:
                // Whatever bytes the guest put in a tx chain.
                let header = Array(stream.prefix(VsockPacketHeader.size))
                stream = stream.dropFirst(header.count)
                let payload = Array(stream.prefix(Int(value % 4096)))
                stream = stream.dropFirst(payload.count)
                fromGuest(header, payload: payload, into: &connections, keys: &keys)
            case 1:
                // A well-formed packet with fuzzed fields, on ports that collide with open connections.
                let operation = VsockPacketHeader.Operation(rawValue: UInt16(small % 8)) ?? .readWrite
                let length = operation == .readWrite ? value % 8192 : 0
                let header = VsockPacketHeader(
                    sourceCID: guestCID, destinationCID: VsockConnections.hostCID,
                    sourcePort: key?.guestPort ?? 1000 + port, destinationPort: key?.hostPort ?? 2000 + port,
                    operation: operation, length: length, flags: value >> 30,
                    bufferAllocation: value << 8, forwardCount: value >> 4)
                fromGuest(header.bytes, payload: [UInt8](repeating: small, count: Int(length)), into: &connections, keys: &keys)
            case 2:
                if let opened = connections.hostConnect(guestPort: 5000 + port, now: now) { keys.append(opened) }
            case 3:
                if let key { connections.hostAccepted(key) }
            case 4:
                if let key {
                    let credit = connections.credit(for: key)
                    let taken = connections.sendToGuest(key, repeatElement(small, count: Int(value % 70_000)))
                    precondition(taken >= 0 && taken <= max(credit, 0), "the host sent beyond the guest's credit")
                }
            case 5:
                if let key {
                    let pending = connections.pendingForHost(key, maximum: Int(value % 300_000))
                    connections.hostConsumed(key, count: pending.isEmpty ? 0 : Int(value) % (pending.count + 1))
                }
            case 6:
                if let key { connections.hostShutdown(key) }
            case 7:
                if let key { connections.hostReset(key) }
            case 8:
                now &+= UInt64(value) * 2_000
                _ = connections.expire(now: now)
            default:
                // The device fills rx buffers of a fuzzed size.
                let room = Int(value % 70_000)
                var packets = 0
                while packets < 64, connections.hasPacketForGuest,
                    let (header, payload) = connections.nextPacketForGuest(maximumPayload: room)
                {
                    packets += 1
                    precondition(payload.count == Int(header.length), "a packet's length is not its payload")
                    precondition(payload.count <= min(room, Int(VsockConnections.maximumPayload)), "payload beyond the rx buffer")
                    precondition(header.sourceCID == VsockConnections.hostCID && header.destinationCID == guestCID)
                }
            }
            for event in connections.takeEvents() {
                if case .guestConnects(let opened) = event { keys.append(opened) }
            }
            if keys.count > 64 { keys.removeFirst(keys.count - 64) }
            check(connections, keys: keys)
        }
    }

    /// The device's handling of one tx chain: parse, validate, then the state machine or a refusal.
    static func fromGuest(
        _ bytes: [UInt8], payload: [UInt8], into connections: inout VsockConnections, keys: inout [VsockConnections.Key]
    ) {
        guard connections.acceptsGuestPackets else { return }
        let header: VsockPacketHeader
        do { header = try VsockPacketHeader(bytes: bytes) } catch {
            connections.refuse(nil)
            return
        }
        do {
            _ = try header.validate(
                guestCID: guestCID, payloadBytes: UInt64(payload.count), maximumPayload: VsockConnections.maximumPayload)
        } catch {
            connections.refuse(header)
            return
        }
        connections.receive(header, payload: Array(payload.prefix(Int(header.length))))
        keys.append(VsockConnections.Key(guestPort: header.sourcePort, hostPort: header.destinationPort))
    }

    static func check(_ connections: VsockConnections, keys: [VsockConnections.Key]) {
        precondition(connections.count <= VsockConnections.maximumConnections, "more connections than the limit")
        for key in keys where connections.contains(key) {
            let credit = connections.credit(for: key)
            precondition(credit >= 0 && credit <= Int(VsockConnections.bufferBytes), "credit \(credit) out of range")
            let waiting = connections.pendingForHost(key, maximum: Int.max).count
            precondition(waiting <= Int(VsockConnections.bufferBytes), "\(waiting) bytes buffered for the host")
        }
    }
}
