import NIOCore
import NIOHTTP1
import NIOPosix

/// Firecracker's default limit on a request body (`--http-api-max-payload-size`): 51200 bytes.
public let defaultMaximumPayloadSize = 51200

/// One HTTP/1.1 connection of the API: aggregates a request (head and body up to the payload
/// limit), hands it to the controller and writes its answer. Runs on NIO's event-loop thread.
/// A body over the limit is answered 400 and the connection closed; a client that goes away
/// mid-request leaves nothing behind.
public final class APIHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    /// NIO's decoded request parts.
    public typealias InboundIn = HTTPServerRequestPart
    /// Response parts for NIO's encoder.
    public typealias OutboundOut = HTTPServerResponsePart

    private let controller: VMMController
    private let maximumPayloadSize: Int
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var refused = false

    /// A handler answering through `controller`, refusing bodies over `maximumPayloadSize`.
    public init(controller: VMMController, maximumPayloadSize: Int = defaultMaximumPayloadSize) {
        self.controller = controller
        self.maximumPayloadSize = maximumPayloadSize
    }

    /// Takes one part of a request.
    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
            body = []
            refused = false
            if let length = request.headers.first(name: "content-length").flatMap(Int.init), length > maximumPayloadSize {
                refuse(context: context, size: length)
            }
        case .body(var buffer):
            guard !refused else { return }
            if body.count + buffer.readableBytes > maximumPayloadSize {
                refuse(context: context, size: body.count + buffer.readableBytes)
                return
            }
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard !refused, let request = head else { return }
            head = nil
            let response = controller.handle(method: request.method.rawValue, path: request.uri, body: body)
            body = []
            write(response, keepAlive: request.isKeepAlive, version: request.version, context: context)
        }
    }

    private func refuse(context: ChannelHandlerContext, size: Int) {
        refused = true
        let response = APIResponse.badRequest(
            "Request payload with size \(size) is larger than the limit of \(maximumPayloadSize) allowed by server.")
        write(response, keepAlive: false, version: head?.version ?? .http1_1, context: context)
    }

    private func write(_ response: APIResponse, keepAlive: Bool, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Server", value: "Swiftlet API")
        headers.add(name: "Content-Length", value: "\(response.body?.count ?? 0)")
        if response.body != nil { headers.add(name: "Content-Type", value: "application/json") }
        if !response.allowedMethods.isEmpty { headers.add(name: "Allow", value: response.allowedMethods.joined(separator: ", ")) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let bytes = response.body {
            var buffer = context.channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.whenComplete { _ in context.close(promise: nil) } }
    }

    /// A connection error (reset by the peer, a malformed request NIO could not answer): close.
    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The API server: HTTP/1.1 on a Unix socket, one NIO event-loop thread.
public final class APIServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// The socket's path.
    public let path: String

    /// Binds `path` (which must not exist, as in Firecracker) and starts accepting.
    public init(path: String, controller: VMMController, maximumPayloadSize: Int = defaultMaximumPayloadSize) throws {
        self.path = path
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        APIHTTPHandler(controller: controller, maximumPayloadSize: maximumPayloadSize))
                }
            }
        do {
            // The start-up figures are taken on the event-loop thread as soon as the socket listens,
            // before that thread can serve a first request.
            channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).map { channel in
                controller.log.recordStartup()
                return channel
            }.wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    /// Stops accepting and ends the event-loop thread.
    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}
