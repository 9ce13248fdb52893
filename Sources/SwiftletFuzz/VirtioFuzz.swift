import Glibc
import SwiftletDevices
import SwiftletMemory
import SwiftletTestSupport

/// libFuzzer target for the split-virtqueue walker and the virtio-mmio transport (with a
/// virtio-blk device over an in-memory image). `make fuzz` builds it with `-sanitize=fuzzer`
/// and `-DSWIFTLET_FUZZ`; a plain `swift build` gets a stub that says so.
///
/// An input is an operation script followed by guest memory:
///
///     [script length: u16 LE] [script: 8-byte operations] [guest RAM image, up to 64 KiB]
///
/// Operations drive the guest's side: 32-bit and odd-width register reads and writes, whole
/// driver set-ups (features, queue 0 with fuzzed size and ring addresses, DRIVER_OK), stores
/// into guest RAM between notifications (moving the available index, rewriting descriptors),
/// queue processing, and the walker on its own. What is checked: nothing traps (overflow,
/// bounds, preconditions), every buffer of a well-formed chain lies in guest RAM, the used ring
/// advances by exactly the chains taken, and the device never asks for more than it is given.
enum VirtioFuzz {
    /// Guest RAM: 64 KiB at 0 and 4 KiB at 1 MiB, with a hole between (buffers across it or in
    /// it must be refused).
    static let lowSize = 64 << 10
    static let highBase: UInt64 = 1 << 20
    static let highSize = 4 << 10

    static let memory: GuestMemory = {
        do {
            return try GuestMemory(regions: [(GuestAddress(0), UInt64(lowSize)), (GuestAddress(highBase), UInt64(highSize))])
        } catch {
            fatalError("fuzz set-up: \(error)")
        }
    }()

    struct NoSignal: VirtioSignal { func signal() {} }

    static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let scriptLength = min(Int(input[0]) | Int(input[1]) << 8, input.count - 2)
        let script = UnsafeRawBufferPointer(rebasing: input[2..<(2 + scriptLength)])
        let image = UnsafeRawBufferPointer(rebasing: input[(2 + scriptLength)...])

        // Fresh guest RAM: zeros, then the image.
        let low = try! memory.hostPointer(GuestAddress(0), count: lowSize)
        low.initializeMemory(as: UInt8.self, repeating: 0, count: lowSize)
        let high = try! memory.hostPointer(GuestAddress(highBase), count: highSize)
        high.initializeMemory(as: UInt8.self, repeating: 0, count: highSize)
        if let base = image.baseAddress { low.copyMemory(from: base, byteCount: min(image.count, lowSize)) }

        let disk = InMemoryDiskImage(bytes: [UInt8](repeating: 0x5A, count: 8192))
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(
                backend: disk, readOnly: script.first.map { $0 & 1 == 1 } ?? false, identifier: "fuzz", queueSizeMaximum: 64),
            memory: memory, notifiers: [NoSignal()], interrupt: NoSignal())

        var position = 0
        while position + 8 <= script.count {
            let op = script[position]
            let small = script[position + 1]
            let offset = UInt64(script[position + 2]) | UInt64(script[position + 3]) << 8
            let value = script.loadUnaligned(fromByteOffset: position + 4, as: UInt32.self)
            position += 8
            perform(op: op, small: small, offset: offset, value: value, transport: transport)
        }
        // Whatever the script did, the transport's state stays consistent.
        let registers = transport.registerState
        precondition(registers.queues.count == 1)
        precondition(registers.status & VirtioDeviceStatus.driverOK == 0 || registers.status & VirtioDeviceStatus.featuresOK != 0)
    }

    static func perform(op: UInt8, small: UInt8, offset: UInt64, value: UInt32, transport: VirtioMMIOTransport<VirtioBlock>) {
        switch op % 10 {
        case 0:
            // A 32-bit register write at any offset of the window (mostly registers).
            write(transport, offset: offset & 0xFFF, value: UInt64(value), width: 4)
        case 1:
            // A read of any width at any offset.
            var bytes: UInt64 = 0
            withUnsafeMutableBytes(of: &bytes) {
                transport.read(offset: offset & 0xFFF, data: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width(small)]))
            }
        case 2:
            // A write of any width.
            write(transport, offset: offset & 0xFFF, value: UInt64(value), width: width(small))
        case 3:
            // The event loop serves a queue (0 usually, sometimes one that does not exist).
            transport.processQueue(Int(small % 4) - 1)
        case 4:
            // A driver that does everything in order, with fuzzed features, size and rings.
            typealias O = VirtioMMIORegisters.Offset
            let size = UInt64(1) << UInt64(small % 10)  // 1...512, some above the maximum
            let ring = UInt64(offset) << 4
            for (register, data) in [
                (O.status, 0), (O.status, 1), (O.status, 3), (O.driverFeaturesSelect, 0), (O.driverFeatures, UInt64(value)),
                (O.driverFeaturesSelect, 1), (O.driverFeatures, 1), (O.status, 11), (O.queueSelect, 0), (O.queueSize, size),
                (O.queueDescriptorLow, ring & 0xFFFF_FFFF), (O.queueDescriptorHigh, ring >> 32),
                (O.queueDriverLow, (ring + 0x1000) & 0xFFFF_FFFF), (O.queueDriverHigh, 0),
                (O.queueDeviceLow, (ring + 0x2000) & 0xFFFF_FFFF), (O.queueDeviceHigh, UInt64(small >> 7)),
                (O.queueReady, 1), (O.status, 15),
            ] as [(UInt64, UInt64)] {
                write(transport, offset: register, value: data, width: 4)
            }
        case 5:
            // The guest stores a 16-bit value into its RAM (an index, a flag, a length...).
            let address = GuestAddress(offset & ~1)
            try? memory.write(UInt16(truncatingIfNeeded: value), at: address)
        case 6:
            // The guest stores a whole descriptor.
            let address = GuestAddress((offset & 0xFFF0) % UInt64(lowSize))
            let descriptor: (UInt64, UInt32, UInt16, UInt16) = (
                UInt64(value) | UInt64(small) << 56, value >> 8, UInt16(small & 7), UInt16(truncatingIfNeeded: value >> 16)
            )
            try? memory.write(descriptor.0, at: address)
            try? memory.write(descriptor.1, at: GuestAddress(address.rawValue + 8))
            try? memory.write(descriptor.2, at: GuestAddress(address.rawValue + 12))
            try? memory.write(descriptor.3, at: GuestAddress(address.rawValue + 14))
        case 7:
            publishBlockRequest(ring: offset << 4, head: UInt16(small & 7), value: value)
        case 8:
            walk(size: UInt16(1) << UInt16(small % 8), ring: offset << 4, features: UInt64(value) << 28)
        default:
            transport.processQueue(0)
        }
    }

    /// Writes a well-formed virtio-blk request (header at 0x8000, data at 0x9000, status at
    /// 0x8100) as descriptors `head`, `head + 1`, `head + 2` (mod 8) of the table at `ring`, and
    /// publishes it in the available ring at `ring + 0x1000`: type, sector and length come from
    /// `value`. Later operations may corrupt any part of it.
    static func publishBlockRequest(ring: UInt64, head: UInt16, value: UInt32) {
        let type = (value >> 28) % 10
        let sector = UInt64((value >> 8) & 0x1F)
        let length = (value & 0xF) * 512
        let dataFlags: UInt16 = type == 1 ? 0 : Virtqueue.DescriptorFlag.write
        try? memory.write(type.littleEndian, at: GuestAddress(0x8000))
        try? memory.write(sector.littleEndian, at: GuestAddress(0x8008))
        let chain: [(UInt64, UInt32, UInt16)] = [
            (0x8000, 16, 0), (0x9000, length, dataFlags), (0x8100, 1, Virtqueue.DescriptorFlag.write),
        ]
        for (i, (address, bufferLength, flags)) in chain.enumerated() {
            let index = (head + UInt16(i)) & 7
            let descriptor = ring + 16 * UInt64(index)
            try? memory.write(address.littleEndian, at: GuestAddress(descriptor))
            try? memory.write(bufferLength.littleEndian, at: GuestAddress(descriptor + 8))
            try? memory.write(
                (flags | (i < 2 ? Virtqueue.DescriptorFlag.next : 0)).littleEndian, at: GuestAddress(descriptor + 12))
            try? memory.write(((head + UInt16(i) + 1) & 7).littleEndian, at: GuestAddress(descriptor + 14))
        }
        let available = ring + 0x1000
        guard let index = try? memory.read(UInt16.self, at: GuestAddress(available + 2)) else { return }
        try? memory.write(head.littleEndian, at: GuestAddress(available + 4 + 2 * UInt64(index & 7)))
        try? memory.write((index &+ 1).littleEndian, at: GuestAddress(available + 2))
    }

    /// The walker on its own, over rings at `ring`: takes every chain, checks its buffers and
    /// returns it.
    static func walk(size: UInt16, ring: UInt64, features: UInt64) {
        guard
            var queue = try? Virtqueue(
                size: size, descriptorTable: ring, availableRing: ring + 0x1000, usedRing: ring + 0x2000,
                features: features, memory: memory)
        else { return }
        var chain = DescriptorChain()
        var taken = 0
        do throws(VirtqueueError) {
            while try queue.popAvailable(from: memory, into: &chain) {
                taken += 1
                precondition(taken <= Int(size), "more chains than the ring holds")
                if chain.error == nil {
                    var readable: UInt64 = 0
                    var writable: UInt64 = 0
                    for buffer in chain.buffers {
                        precondition(memory.contains(buffer.address, count: Int(buffer.length)), "buffer outside guest RAM")
                        if buffer.isWritable { writable += UInt64(buffer.length) } else { readable += UInt64(buffer.length) }
                    }
                    precondition(readable == chain.readableLength && writable == chain.writableLength)
                    precondition(chain.buffers.count <= 2 * Int(size))
                }
                let usedBefore = queue.nextUsed
                try queue.addUsed(head: chain.head, length: 0, memory: memory)
                precondition(queue.nextUsed == usedBefore &+ 1)
            }
            _ = try queue.needsInterrupt(memory)
            _ = try queue.enableNotifications(memory)
        } catch {
            precondition(error.requiresReset, "a chain error escaped as a ring error: \(error)")
        }
    }

    static func width(_ small: UInt8) -> Int { [1, 2, 4, 8, 3][Int(small % 5)] }

    static func write(_ transport: VirtioMMIOTransport<VirtioBlock>, offset: UInt64, value: UInt64, width: Int) {
        var bytes = value
        withUnsafeBytes(of: &bytes) { transport.write(offset: offset, data: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }
}

#if SWIFTLET_FUZZ
    /// libFuzzer calls this once per input.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzVirtio(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        let input = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
        #if SWIFTLET_FUZZ_VSOCK
            VsockFuzz.run(input)  // make fuzz FUZZ_TARGET=vsock
        #else
            VirtioFuzz.run(input)
        #endif
        return 0
    }

    /// libFuzzer's driver (argument parsing, corpus, mutation), run from our own entry point:
    /// SwiftPM gives every executable target its own `main`, so libFuzzer's cannot be used.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runFuzzerDriver(
        _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    @main
    enum VirtioFuzzMain {
        static func main() {
            var argc = CommandLine.argc
            var argv = CommandLine.unsafeArgv
            exit(runFuzzerDriver(&argc, &argv, fuzzVirtio))
        }
    }
#else
    @main
    enum VirtioFuzzStub {
        static func main() {
            print(
                "SwiftletFuzz: built without the fuzzer; run `make fuzz` (swift build -Xswiftc -sanitize=fuzzer -Xswiftc -DSWIFTLET_FUZZ)."
            )
        }
    }
#endif
