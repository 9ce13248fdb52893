import Glibc
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Swiftlet
import SwiftletAPI

/// libFuzzer target for the API's request handling: an input is the bytes a client sends on one
/// connection. They go through NIO's HTTP/1.1 decoder, `APIHTTPHandler` (payload limit), the
/// router, the strict JSON models and the VMM state machine, over a machine that is never built
/// (`FuzzFactory`) and a log that opens no files, so the fuzzer's paths touch nothing. What is
/// checked: nothing traps, and every answer has one of the statuses the API gives.
enum APIFuzz {
    final class FuzzMicroVM: MicroVM {
        func pause() {}
        func resume() {}
        func snapshot(to directory: String) throws { throw APIDecodingError("no snapshots while fuzzing") }
    }

    struct FuzzFactory: MicroVMFactory {
        func boot(_ configuration: MachineConfiguration) throws -> any MicroVM { FuzzMicroVM() }
        func restore(directory: String, resume: Bool) throws -> any MicroVM {
            throw APIDecodingError("no restores while fuzzing")
        }
    }

    static let statuses: Set<UInt> = [200, 204, 400, 404, 405]

    static func run(_ input: UnsafeRawBufferPointer) {
        let controller = VMMController(instanceID: "fuzz", factory: FuzzFactory(), log: APILog(opensFiles: false))
        let channel = EmbeddedChannel()
        do {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(APIHTTPHandler(controller: controller, maximumPayloadSize: 4096))
            var buffer = channel.allocator.buffer(capacity: input.count)
            buffer.writeBytes(input)
            _ = try? channel.writeInbound(buffer)
            // Every response head has a status the API uses.
            var output = ByteBuffer()
            while var part = try channel.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&part) }
            let text = String(decoding: output.readableBytesView, as: UTF8.self)
            for line in text.split(separator: "\r\n") where line.hasPrefix("HTTP/1.") {
                let fields = line.split(separator: " ")
                precondition(fields.count >= 2, "response line \(line)")
                guard let status = UInt(fields[1]) else { preconditionFailure("status in \(line)") }
                precondition(statuses.contains(status), "unexpected status \(status)")
            }
            // Close as a client going away would, so the decoder drops what it buffered.
            channel.pipeline.fireChannelInactive()
            channel.close(promise: nil)
            channel.embeddedEventLoop.run()
            _ = try? channel.finish(acceptAlreadyClosed: true)
        } catch {
            preconditionFailure("pipeline set-up failed: \(error)")
        }
    }
}

#if SWIFTLET_FUZZ
    /// libFuzzer calls this once per input.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzAPI(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        APIFuzz.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
        return 0
    }

    /// libFuzzer's driver, run from this target's own entry point (as in SwiftletFuzz).
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(runFuzzerDriver(&argc, &argv, fuzzAPI))
#else
    // A plain build: run the seed requests once each, as a smoke test.
    for seed in [
        "GET / HTTP/1.1\r\n\r\n",
        "PUT /machine-config HTTP/1.1\r\nContent-Length: 36\r\n\r\n{\"vcpu_count\":1,\"mem_size_mib\":64}",
        "PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "\u{01} nonsense\r\n\r\n",
    ] {
        Array(seed.utf8).withUnsafeBytes { APIFuzz.run($0) }
    }
    print("SwiftletAPIFuzz: built without the fuzzer; run `make fuzz FUZZ_TARGET=api`. The seeds ran.")
#endif
