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

/// Boots Guests/build/virtio-blk-test.elf, a polling virtio-blk driver, against a disk image
/// the test creates: the guest reads 16 MiB, writes them back 16 MiB further on, reads the
/// copy back (48 MiB through the device), and reports sample checksums over serial.
@Suite("KVM: virtio-blk", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(2)))
struct VirtioBlockKVMTests {
    static let mebibyte = 1 << 20
    static let transfer = 16 << 20
    /// Source region [0, 16 MiB) random, copy region [16, 32 MiB) zero, then 1 MiB more.
    static let imageSize = 33 << 20

    static func makeImage() throws -> TemporaryFile {
        var bytes = [UInt8](repeating: 0, count: imageSize)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<(transfer / 8) {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                words[i] = state
            }
        }
        return try TemporaryFile(contents: bytes)
    }

    static func fileBytes(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open \(path): errno \(errno)") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: imageSize)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, imageSize, 0) }
        guard count == imageSize else { throw TestFailure("read \(count) of \(imageSize) bytes of \(path)") }
        return bytes
    }

    static func regionsEqual(_ bytes: [UInt8], _ a: Int, _ b: Int, count: Int) -> Bool {
        bytes.withUnsafeBytes { memcmp($0.baseAddress! + a, $0.baseAddress! + b, count) == 0 }
    }

    static func sameBytes(_ a: [UInt8], _ b: [UInt8], count: Int) -> Bool {
        a.withUnsafeBytes { a in b.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, count) == 0 } }
    }

    static func fnv1a(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var hash: UInt32 = 0x811C_9DC5
        for byte in bytes { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return hash
    }

    /// What the guest prints for an image whose first 16 MiB are `source`.
    static func expectedOutput(_ image: [UInt8], readOnly: Bool, id: String) -> [String] {
        let samples = (0..<16).map { fnv1a(image[($0 * mebibyte)..<($0 * mebibyte + 512)]) }
        let capacity = imageSize / 512
        return [
            "virtio-blk-test: magic=74726976 version=2 device=2",
            "features: ro=\(readOnly ? 1 : 0) indirect=1 event_idx=1 flush=1",
            "config: capacity=\(capacity) size_max=4194304 seg_max=254 blk_size=512 queue_max=256",
            "read: segments=4 status=0 len=\(transfer + 1)",
            "isr=1 after_ack=0",
        ] + samples.enumerated().map { "sample \($0.offset) fnv=\(String($0.element, radix: 16).leftPadded(to: 8))" } + [
            "write: status=\(readOnly ? 1 : 0) len=1",
            "reread: status=0 len=\(transfer + 1) mismatches=\(readOnly ? 16 : 0)",
            "getid: status=0 len=21 id=\(id)",
            "flush: status=0 past_end: status=1 unknown: status=2",
            "avail_event=7 used=7 device_status=15",
            "done",
        ]
    }

    static func run(_ disk: DiskConfiguration) throws -> (GuestExit, [String], Machine, Double) {
        let console = BufferSerialOutput()
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("virtio-blk-test.elf"), memorySize: 128 << 20,
                console: .output(console), disks: [disk]))
        let started = monotonicNanoseconds()
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        let exit = machine.wait()
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        return (exit, console.text.split(separator: "\n").map(String.init), machine, seconds)
    }

    @Test("the guest driver copies 16 MiB on the disk and the host sees the copy", arguments: [false, true])
    func copy(directIO: Bool) throws {
        let image = try Self.makeImage()
        let before = try Self.fileBytes(image.path)
        let (exit, output, machine, seconds) = try Self.run(
            DiskConfiguration(path: image.path, id: "swiftlet-test", directIO: directIO))
        #expect(exit == .reset)
        #expect(output == Self.expectedOutput(before, readOnly: false, id: "swiftlet-test"))
        let after = try Self.fileBytes(image.path)
        #expect(Self.regionsEqual(after, Self.transfer, 0, count: Self.transfer), "the copy landed in the file")
        #expect(Self.sameBytes(after, before, count: Self.transfer), "the source is unchanged")
        #expect(after[(2 * Self.transfer)...].allSatisfy { $0 == 0 }, "nothing was written past the copy")

        let statistics = machine.disks[0].statistics
        #expect(statistics.requests == 7 && statistics.failedChains == 0)
        #expect(machine.disks[0].registerState.status == 0xF)
        #expect(seconds < TestSupport.guestDeadline, "48 MiB moved in \(seconds) s")
    }

    @Test("on a read-only disk the guest's write fails with IOERR and the image is unchanged")
    func readOnly() throws {
        let image = try Self.makeImage()
        let before = try Self.fileBytes(image.path)
        let (exit, output, _, _) = try Self.run(DiskConfiguration(path: image.path, readOnly: true))
        #expect(exit == .reset)
        #expect(output == Self.expectedOutput(before, readOnly: true, id: "disk0"))
        #expect(Self.sameBytes(try Self.fileBytes(image.path), before, count: Self.imageSize))
    }

    @Test("a missing image fails the build with the disk and the reason")
    func missingImage() {
        do {
            _ = try Machine(
                MachineConfiguration(
                    kernelPath: try TestSupport.guest("virtio-blk-test.elf"), console: .none,
                    disks: [DiskConfiguration(path: "/nonexistent/disk.img")]))
            Issue.record("a missing disk image was accepted")
        } catch let error as MachineError {
            #expect(error.step == .createDevices)
            #expect(
                "\(error)"
                    == "cannot create the devices: disk 0: cannot open disk image: open /nonexistent/disk.img failed: No such file or directory (errno 2)"
            )
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
