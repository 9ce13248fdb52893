import Glibc
import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private typealias Flag = Virtqueue.DescriptorFlag
private typealias RequestType = VirtioBlock.RequestType
private typealias Status = VirtioBlock.Status

/// virtio-blk request handling against a temporary image file (and an in-memory image),
/// driven through the transport as a guest driver would.
@Suite("Virtio: block device")
struct VirtioBlockTests {
    /// A block device over `backend` behind a transport, with queue 0 set up and live.
    struct Fixture {
        let memory: GuestMemory
        let transport: VirtioMMIOTransport<VirtioBlock>
        var ring: RingDriver
        var driver: MMIODriver<VirtioBlock> { MMIODriver(transport: transport) }
        // Request layout in guest memory.
        static let header: UInt64 = 0x10000
        static let status: UInt64 = 0x10100
        static let data: UInt64 = 0x10_0000

        init(backend: any BlockBackend, readOnly: Bool = false, identifier: String = "test-disk", features: UInt64 = 0) throws {
            memory = try virtioTestMemory(size: 8 << 20)
            transport = VirtioMMIOTransport(
                device: VirtioBlock(backend: backend, readOnly: readOnly, identifier: identifier), memory: memory,
                notifiers: [CountingSignal()], interrupt: CountingSignal())
            ring = RingDriver(memory: memory, size: 16)
            #expect(driver.negotiate(VirtioFeature.version1 | features) & VirtioDeviceStatus.featuresOK != 0)
            driver.setUpQueue(0, ring)
            driver.driverOK()
        }

        /// Sends one request: header, then `readable` data buffers, `writable` data buffers and
        /// the status byte, as separate descriptors. Returns (status byte, used length).
        mutating func request(
            type: UInt32, sector: UInt64, readable: [(UInt64, UInt32)] = [], writable: [(UInt64, UInt32)] = [],
            headerLength: UInt32 = 16, withStatus: Bool = true
        ) throws -> (status: UInt8, length: UInt32) {
            try memory.write(type.littleEndian, at: GuestAddress(Self.header))
            try memory.write(UInt32(0), at: GuestAddress(Self.header + 4))
            try memory.write(sector.littleEndian, at: GuestAddress(Self.header + 8))
            try memory.write(UInt8(0xEE), at: GuestAddress(Self.status))
            var descriptors: [(UInt64, UInt32, UInt16)] = [(Self.header, headerLength, 0)]
            descriptors += readable.map { ($0.0, $0.1, 0) }
            descriptors += writable.map { ($0.0, $0.1, Flag.write) }
            if withStatus { descriptors.append((Self.status, 1, Flag.write)) }
            for (i, (address, length, flags)) in descriptors.enumerated() {
                let last = i == descriptors.count - 1
                try ring.setDescriptor(
                    i, address: address, length: length, flags: flags | (last ? 0 : Flag.next), next: UInt16(i + 1))
            }
            let before = try ring.usedIndex()
            try ring.publish(0)
            transport.processQueue(0)
            #expect(try ring.usedIndex() == before &+ 1)
            let element = try ring.usedElement(before)
            #expect(element.id == 0)
            return (try memory.read(UInt8.self, at: GuestAddress(Self.status)), element.length)
        }
    }

    static func pattern(_ count: Int, seed: UInt32 = 1) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 1_103_515_245 &+ 12345
            return UInt8(truncatingIfNeeded: state >> 16)
        }
    }

    static func fileBytes(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let size = Int(lseek(fd, 0, SEEK_END))
        var bytes = [UInt8](repeating: 0, count: size)
        _ = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) }
        return bytes
    }

    @Test("the configuration space holds capacity, size_max, seg_max and blk_size; features match")
    func configuration() throws {
        let image = InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 1 << 20))
        let f = try Fixture(backend: image)
        let base = VirtioMMIORegisters.configurationOffset
        #expect(f.driver.read(base, width: 8) == 2048)
        #expect(f.driver.read(base + 8) == 4 << 20)
        #expect(f.driver.read(base + 12) == 254)
        #expect(f.driver.read(base + 20) == 512)
        #expect(f.driver.read(base + 34, width: 2) == 1)
        #expect(f.driver.read(VirtioMMIORegisters.Offset.deviceID) == 2)
        let features = f.transport.registerState.offeredFeatures
        #expect(features & VirtioBlock.Feature.readOnly == 0)
        #expect(features & VirtioBlock.Feature.flush != 0)
        let readOnly = VirtioBlock(backend: image, readOnly: true, identifier: "")
        #expect(readOnly.offeredFeatures & VirtioBlock.Feature.readOnly != 0)
    }

    @Test("IN reads sectors from the image file into guest buffers")
    func read() throws {
        let contents = Self.pattern(64 << 10)
        let file = try TemporaryFile(contents: contents)
        var f = try Fixture(backend: try RawDiskImage(path: file.path))
        let result = try f.request(
            type: RequestType.read, sector: 3, writable: [(Fixture.data, 512), (Fixture.data + 0x10000, 1024)])
        #expect(result == (Status.ok, 1537))
        #expect(try f.memory.readBytes(at: GuestAddress(Fixture.data), count: 512) == Array(contents[1536..<2048]))
        #expect(try f.memory.readBytes(at: GuestAddress(Fixture.data + 0x10000), count: 1024) == Array(contents[2048..<3072]))
    }

    @Test("OUT writes guest buffers to the image file before completing")
    func write() throws {
        let file = try TemporaryFile(contents: [UInt8](repeating: 0, count: 64 << 10))
        var f = try Fixture(backend: try RawDiskImage(path: file.path))
        let data = Self.pattern(1536, seed: 7)
        try f.memory.write(Array(data[0..<1024]), at: GuestAddress(Fixture.data))
        try f.memory.write(Array(data[1024...]), at: GuestAddress(Fixture.data + 0x8000))
        let result = try f.request(
            type: RequestType.write, sector: 10, readable: [(Fixture.data, 1024), (Fixture.data + 0x8000, 512)])
        #expect(result == (Status.ok, 1))
        let bytes = Self.fileBytes(file.path)
        #expect(Array(bytes[5120..<6656]) == data)
        #expect(bytes[5119] == 0 && bytes[6656] == 0)
    }

    @Test("a header split over descriptors and data in the header's buffer work")
    func oddLayouts() throws {
        let contents = Self.pattern(8192)
        let image = InMemoryDiskImage(bytes: contents)
        let f = try Fixture(backend: image)
        // Header in two pieces (3 + 13 bytes), data and status in one writable buffer.
        let header = Fixture.header
        try f.memory.write(RequestType.read.littleEndian, at: GuestAddress(header))
        try f.memory.write(UInt64(2).littleEndian, at: GuestAddress(header + 8))
        var ring = f.ring
        try ring.setDescriptor(0, address: header, length: 3, flags: Flag.next, next: 1)
        try ring.setDescriptor(1, address: header + 3, length: 13, flags: Flag.next, next: 2)
        try ring.setDescriptor(2, address: Fixture.data, length: 513, flags: Flag.write)
        try ring.publish(0)
        f.transport.processQueue(0)
        #expect(try ring.usedElement(0) == (0, 513))
        #expect(try f.memory.readBytes(at: GuestAddress(Fixture.data), count: 512) == Array(contents[1024..<1536]))
        #expect(try f.memory.read(UInt8.self, at: GuestAddress(Fixture.data + 512)) == Status.ok)
    }

    @Test("an indirect request works when negotiated")
    func indirectRequest() throws {
        let contents = Self.pattern(8192)
        let f = try Fixture(backend: InMemoryDiskImage(bytes: contents), features: VirtioFeature.ringIndirectDescriptors)
        try f.memory.write(RequestType.read.littleEndian, at: GuestAddress(Fixture.header))
        try f.memory.write(UInt64(1).littleEndian, at: GuestAddress(Fixture.header + 8))
        var ring = f.ring
        let table: UInt64 = 0x20000
        try ring.setDescriptor(0, address: Fixture.header, length: 16, flags: Flag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: Fixture.data, length: 1024, flags: Flag.write | Flag.next, next: 2, table: table)
        try ring.setDescriptor(2, address: Fixture.status, length: 1, flags: Flag.write, table: table)
        try ring.setDescriptor(5, address: table, length: 48, flags: Flag.indirect)
        try ring.publish(5)
        f.transport.processQueue(0)
        #expect(try ring.usedElement(0) == (5, 1025))
        #expect(try f.memory.read(UInt8.self, at: GuestAddress(Fixture.status)) == Status.ok)
        #expect(try f.memory.readBytes(at: GuestAddress(Fixture.data), count: 1024) == Array(contents[512..<1536]))
    }

    @Test("FLUSH calls the backend's flush; GET_ID returns the padded id")
    func flushAndIdentify() throws {
        let image = InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 4096))
        var f = try Fixture(backend: image, identifier: "disk-0")
        #expect(try f.request(type: RequestType.flush, sector: 0) == (Status.ok, 1))
        #expect(image.flushCount == 1)
        try f.memory.fill(GuestAddress(Fixture.data), count: 20, with: 0xAA)
        #expect(try f.request(type: RequestType.getID, sector: 0, writable: [(Fixture.data, 20)]) == (Status.ok, 21))
        #expect(
            try f.memory.readBytes(at: GuestAddress(Fixture.data), count: 20) == Array("disk-0".utf8)
                + [UInt8](repeating: 0, count: 14))
        // A long id is cut to 20 bytes; a short buffer gets what fits.
        var long = try Fixture(backend: image, identifier: "an-identifier-longer-than-twenty")
        #expect(try long.request(type: RequestType.getID, sector: 0, writable: [(Fixture.data, 8)]) == (Status.ok, 9))
        #expect(try long.memory.readBytes(at: GuestAddress(Fixture.data), count: 8) == Array("an-ident".utf8))
    }

    @Test("FLUSH on an image file succeeds")
    func flushFile() throws {
        let file = try TemporaryFile(contents: [UInt8](repeating: 0, count: 4096))
        var f = try Fixture(backend: try RawDiskImage(path: file.path))
        #expect(try f.request(type: RequestType.flush, sector: 0) == (Status.ok, 1))
    }

    @Test("a read-only disk refuses writes with IOERR and leaves the file alone")
    func readOnly() throws {
        let contents = Self.pattern(8192)
        let file = try TemporaryFile(contents: contents)
        chmod(file.path, 0o444)
        let image = try RawDiskImage(path: file.path, readOnly: true)
        var f = try Fixture(backend: image, readOnly: true, features: VirtioBlock.Feature.readOnly)
        try f.memory.fill(GuestAddress(Fixture.data), count: 512, with: 0x55)
        #expect(try f.request(type: RequestType.write, sector: 0, readable: [(Fixture.data, 512)]) == (Status.ioError, 1))
        #expect(Self.fileBytes(file.path) == contents)
        #expect(try f.request(type: RequestType.read, sector: 0, writable: [(Fixture.data, 512)]) == (Status.ok, 513))
        #expect(try f.request(type: RequestType.flush, sector: 0) == (Status.ok, 1))
        // The backend refuses too, whatever the device thinks.
        #expect(throws: SystemError.self) {
            var vectors = [iovec(iov_base: UnsafeMutableRawPointer(bitPattern: 0x1000), iov_len: 0)]
            try vectors.withUnsafeMutableBufferPointer { (vectors) throws(SystemError) in try image.write(vectors, at: 0) }
        }
    }

    @Test("requests outside the disk, of partial sectors or with overflowing sectors fail with IOERR")
    func badRanges() throws {
        let image = InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 8192))  // 16 sectors
        var f = try Fixture(backend: image)
        #expect(try f.request(type: RequestType.read, sector: 16, writable: [(Fixture.data, 512)]).status == Status.ioError)
        #expect(try f.request(type: RequestType.read, sector: 15, writable: [(Fixture.data, 1024)]).status == Status.ioError)
        #expect(try f.request(type: RequestType.read, sector: 15, writable: [(Fixture.data, 512)]).status == Status.ok)
        #expect(try f.request(type: RequestType.read, sector: .max, writable: [(Fixture.data, 512)]).status == Status.ioError)
        #expect(
            try f.request(type: RequestType.write, sector: .max / 512, readable: [(Fixture.data, 512)]).status == Status.ioError)
        #expect(try f.request(type: RequestType.read, sector: 0, writable: [(Fixture.data, 100)]).status == Status.ioError)
        #expect(try f.request(type: RequestType.write, sector: 0, readable: [(Fixture.data, 513)]).status == Status.ioError)
        // A zero-length read or write is a no-op that succeeds.
        #expect(try f.request(type: RequestType.read, sector: 16) == (Status.ok, 1))
        #expect(image.bytes.allSatisfy { $0 == 0 })
    }

    @Test("unknown request types answer UNSUPP; a short header answers IOERR")
    func unknownType() throws {
        var f = try Fixture(backend: InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 4096)))
        #expect(try f.request(type: 99, sector: 0) == (Status.unsupported, 1))
        #expect(try f.request(type: 11, sector: 0) == (Status.unsupported, 1))  // WRITE_ZEROES: not offered
        #expect(try f.request(type: RequestType.read, sector: 0, headerLength: 8).status == Status.ioError)
    }

    @Test("a request without a status byte is returned with length 0")
    func noStatusByte() throws {
        var f = try Fixture(backend: InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 4096)))
        let result = try f.request(type: RequestType.flush, sector: 0, withStatus: false)
        #expect(result == (0xEE, 0))
    }

    @Test("segments larger than size_max or more than seg_max fail with IOERR")
    func segmentLimits() throws {
        let image = InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 16 << 20))
        let memory = try virtioTestMemory(size: 16 << 20)
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(backend: image, readOnly: false, identifier: "", queueSizeMaximum: 8), memory: memory,
            notifiers: [CountingSignal()], interrupt: CountingSignal())
        let driver = MMIODriver(transport: transport)
        driver.negotiate(VirtioFeature.version1)
        var ring = RingDriver(memory: memory, size: 8)
        driver.setUpQueue(0, ring)
        driver.driverOK()
        #expect(driver.read(VirtioMMIORegisters.configurationOffset + 12) == 6)

        /// A request with `readable` data buffers (after the header, or with `inlineData` bytes
        /// inside the header's buffer) or `writable` ones.
        func send(_ type: UInt32, readable: [(UInt64, UInt32)] = [], writable: [(UInt64, UInt32)] = [], inlineData: UInt32 = 0)
            throws -> UInt8
        {
            try memory.write(type.littleEndian, at: GuestAddress(0x10000))
            try memory.write(UInt64(0), at: GuestAddress(0x10008))
            var all = [(UInt64(0x10000), UInt32(16) + inlineData, UInt16(0))]
            all += readable.map { ($0.0, $0.1, UInt16(0)) }
            all += writable.map { ($0.0, $0.1, Flag.write) }
            all.append((0x20_0000, 1, Flag.write))
            for (i, (address, length, flags)) in all.enumerated() {
                try ring.setDescriptor(
                    i, address: address, length: length, flags: flags | (i < all.count - 1 ? Flag.next : 0), next: UInt16(i + 1))
            }
            try memory.write(UInt8(0xEE), at: GuestAddress(0x20_0000))
            try ring.publish(0)
            transport.processQueue(0)
            return try memory.read(UInt8.self, at: GuestAddress(0x20_0000))
        }
        #expect(try send(RequestType.read, writable: [(0x40_0000, 4 << 20)]) == Status.ok)
        #expect(try send(RequestType.read, writable: [(0x40_0000, (4 << 20) + 512)]) == Status.ioError)
        #expect(try send(RequestType.write, readable: Array(repeating: (0x30_0000, 512), count: 6)) == Status.ok)
        // Data in the header's buffer as well makes seven data segments: one too many.
        #expect(
            try send(RequestType.write, readable: Array(repeating: (0x30_0000, 512), count: 6), inlineData: 512) == Status.ioError
        )
        #expect(try send(RequestType.write, readable: Array(repeating: (0x30_0000, 512), count: 5), inlineData: 512) == Status.ok)
        // Seven separate data segments plus header and status are longer than the queue: the
        // chain itself is refused (returned with length 0, the status byte untouched).
        #expect(try send(RequestType.write, readable: Array(repeating: (0x30_0000, 512), count: 7)) == 0xEE)
        #expect(transport.statistics.failedChains == 1)
    }

    @Test("direct I/O goes through aligned bounce buffers for unaligned requests")
    func directIO() throws {
        let contents = Self.pattern(4 << 20, seed: 3)
        let file = try TemporaryFile(contents: contents)
        var expected = contents
        var f = try Fixture(backend: try RawDiskImage(path: file.path, directIO: true))
        // A read that straddles the bounce buffer size, into unaligned guest buffers.
        let length = (1 << 20) + 1536
        let result = try f.request(
            type: RequestType.read, sector: 7,
            writable: [(Fixture.data + 3, 512), (Fixture.data + 0x1000 + 1, UInt32(length - 512))])
        #expect(result == (Status.ok, UInt32(length + 1)))
        #expect(try f.memory.readBytes(at: GuestAddress(Fixture.data + 3), count: 512) == Array(contents[3584..<4096]))
        #expect(
            try f.memory.readBytes(at: GuestAddress(Fixture.data + 0x1001), count: length - 512)
                == Array(contents[4096..<(3584 + length)]))
        // An unaligned write (sector 9, 3 sectors) keeps the neighbouring bytes of its blocks.
        let data = Self.pattern(1536, seed: 9)
        try f.memory.write(data, at: GuestAddress(Fixture.data + 5))
        #expect(try f.request(type: RequestType.write, sector: 9, readable: [(Fixture.data + 5, 1536)]) == (Status.ok, 1))
        expected.replaceSubrange(4608..<6144, with: data)
        // A write larger than the bounce buffer, aligned.
        let big = Self.pattern(3 << 19, seed: 11)
        try f.memory.write(big, at: GuestAddress(0x20_0000))
        #expect(
            try f.request(type: RequestType.write, sector: 2048, readable: [(0x20_0000, UInt32(big.count))]) == (Status.ok, 1))
        expected.replaceSubrange((1 << 20)..<((1 << 20) + big.count), with: big)
        #expect(try f.request(type: RequestType.flush, sector: 0) == (Status.ok, 1))
        #expect(Self.fileBytes(file.path) == expected)
    }

    @Test("image files that cannot be used are refused with the reason")
    func badImages() throws {
        #expect(
            throws: DiskImageError.cannotOpen(
                path: "/nonexistent/disk.img", SystemError("open /nonexistent/disk.img", errno: ENOENT))
        ) {
            try RawDiskImage(path: "/nonexistent/disk.img")
        }
        #expect(throws: DiskImageError.notAFileOrBlockDevice(path: "/tmp", kind: .directory)) {
            try RawDiskImage(path: "/tmp", readOnly: true)
        }
        let tiny = try TemporaryFile(contents: [1, 2, 3])
        #expect(throws: DiskImageError.tooSmall(path: tiny.path, size: 3)) { try RawDiskImage(path: tiny.path) }
        let odd = try TemporaryFile(contents: [UInt8](repeating: 0, count: 5120))
        #expect(throws: DiskImageError.directIOSize(path: odd.path, size: 5120, alignment: 4096)) {
            try RawDiskImage(path: odd.path, directIO: true)
        }
        let image = try RawDiskImage(path: odd.path)
        #expect(image.size == 5120)
        #expect(VirtioBlock(backend: image, readOnly: false, identifier: "").settings.capacity == 10)
    }

    @Test(
        "a FIFO nobody writes, a socket, a directory and character devices are refused by kind, without blocking",
        arguments: [false, true])
    func specialFiles(readOnly: Bool) throws {
        let files = try SpecialFiles()
        let cases: [(String, HostFileKind)] = [
            (files.fifo, .fifo), (files.socket, .socket), (files.subdirectory, .directory),
            ("/dev/null", .characterDevice), ("/dev/zero", .characterDevice),
        ]
        for (path, kind) in cases {
            for directIO in [false, true] {
                #expect(throws: DiskImageError.notAFileOrBlockDevice(path: path, kind: kind)) {
                    try RawDiskImage(path: path, readOnly: readOnly, directIO: directIO)
                }
            }
        }
        #expect(
            DiskImageError.notAFileOrBlockDevice(path: "/dev/null", kind: .characterDevice).description
                == "disk image /dev/null is a character device, not a regular file or a block device")
    }

    @Test(
        "a block device is not refused for its kind (an unattached loop device may be too small)",
        .enabled(if: SpecialFiles.blockDevice != nil, "no /dev/loopN block device on this host"))
    func blockDevice() throws {
        let device = try #require(SpecialFiles.blockDevice)
        do {
            _ = try RawDiskImage(path: device, readOnly: true)
        } catch {
            if case .notAFileOrBlockDevice = error { Issue.record("\(device) refused: \(error)") }
        }
    }

    @Test("a backend error answers IOERR")
    func backendError() throws {
        let image = InMemoryDiskImage(bytes: [UInt8](repeating: 0, count: 4096))
        image.failure = EIO
        var f = try Fixture(backend: image)
        #expect(try f.request(type: RequestType.read, sector: 0, writable: [(Fixture.data, 512)]) == (Status.ioError, 1))
        #expect(try f.request(type: RequestType.write, sector: 0, readable: [(Fixture.data, 512)]) == (Status.ioError, 1))
    }
}
