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

// MARK: Building ELF images by hand

/// One program header of a hand-built ELF64 image.
private struct ProgramHeader {
    var type: UInt32 = 1  // PT_LOAD
    var offset: UInt64
    var physicalAddress: UInt64
    var fileSize: UInt64
    var memorySize: UInt64
}

/// A hand-built ELF64 image: the 64-byte header, the program header table at `programHeaderOffset`
/// and whatever bytes `contents` places at file offsets.
private struct ELFImage {
    var elfClass: UInt8 = 2  // ELFCLASS64
    var dataEncoding: UInt8 = 1  // ELFDATA2LSB
    var type: UInt16 = 2  // ET_EXEC
    var machine: UInt16 = 62  // EM_X86_64
    var entry: UInt64 = 0x10_0000
    var programHeaderOffset: UInt64 = 64
    var programHeaderCount: UInt16? = nil  // nil: segments.count
    var segments: [ProgramHeader] = []
    /// Payload bytes by file offset.
    var contents: [(offset: Int, bytes: [UInt8])] = []
    /// Total file size; nil: just large enough for everything.
    var fileSize: Int? = nil

    var bytes: [UInt8] {
        var file = [UInt8](repeating: 0, count: 64)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            if file.count < offset + MemoryLayout<T>.size {
                file += [UInt8](repeating: 0, count: offset + MemoryLayout<T>.size - file.count)
            }
            for i in 0..<MemoryLayout<T>.size { file[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        }
        file.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        file[4] = elfClass
        file[5] = dataEncoding
        file[6] = 1  // EV_CURRENT
        put(type, at: 16)
        put(machine, at: 18)
        put(UInt32(1), at: 20)
        put(entry, at: 24)
        put(programHeaderOffset, at: 32)
        put(UInt16(64), at: 52)  // e_ehsize
        put(UInt16(56), at: 54)  // e_phentsize
        put(programHeaderCount ?? UInt16(segments.count), at: 56)
        for (i, segment) in segments.enumerated() {
            let base = Int(programHeaderOffset) + i * 56
            put(segment.type, at: base)
            put(UInt32(7), at: base + 4)  // RWX
            put(segment.offset, at: base + 8)
            put(segment.physicalAddress, at: base + 16)  // p_vaddr
            put(segment.physicalAddress, at: base + 24)  // p_paddr
            put(segment.fileSize, at: base + 32)
            put(segment.memorySize, at: base + 40)
            put(UInt64(0x1000), at: base + 48)
        }
        for (offset, bytes) in contents {
            if file.count < offset + bytes.count { file += [UInt8](repeating: 0, count: offset + bytes.count - file.count) }
            file.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        }
        if let fileSize {
            if file.count < fileSize { file += [UInt8](repeating: 0, count: fileSize - file.count) }
            file.removeLast(file.count - fileSize)
        }
        return file
    }
}

private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) | 1 }  // never 0 and never 0xAA-only
}

/// A valid kernel: text at 1 MiB (0x100 bytes), data at 2 MiB (0x80 bytes) followed by 0xF80
/// bytes of bss, and a PT_NOTE at address 0 that must be ignored.
private let textBytes = pattern(0x100, seed: 3)
private let dataBytes = pattern(0x80, seed: 11)
private func validImage() -> ELFImage {
    ELFImage(
        entry: 0x10_0040,
        segments: [
            ProgramHeader(type: 4, offset: 0x1180, physicalAddress: 0, fileSize: 0x10, memorySize: 0x10),
            ProgramHeader(offset: 0x1000, physicalAddress: 0x10_0000, fileSize: 0x100, memorySize: 0x100),
            ProgramHeader(offset: 0x1100, physicalAddress: 0x20_0000, fileSize: 0x80, memorySize: 0x1000),
        ],
        contents: [(0x1000, textBytes), (0x1100, dataBytes), (0x1180, [UInt8](repeating: 0xCD, count: 0x10))])
}

/// (file offset, file size, memory size) of segments whose bytes are not all in the file.
private let segmentsOutsideFile: [(UInt64, UInt64, UInt64)] = [
    (0x1000, 0x10_0000, 0x10_0000),  // runs past the end
    (0x10_0000, 0x10, 0x10),  // starts past the end
    (.max - 4, 0x10, 0x10),  // offset + size wraps
    (0x1000, 0x100, 0x80),  // file size larger than memory size
]

/// (address, memory size) of segments that are not inside 32 MiB of RAM.
private let segmentsNotFitting: [(UInt64, UInt64)] = [
    (0x1FF_F000, 0x2000),  // straddles the end of the 32 MiB
    (0x200_0000, 0x10),  // just past the end
    (0xC000_0000, 0x1000),  // in the MMIO gap
    (0x10_0000, 0x200_0000),  // bss larger than RAM
    (0xFFFF_FFFF_FFFF_F000, 0x2000),  // address + size wraps
    (0x10_0000, .max),  // absurd size
]

// MARK: Files

/// Writes `bytes` to a new file in /tmp, runs `body` with its path, and removes the file.
private func withTemporaryFile<T>(_ bytes: [UInt8], _ body: (String) throws -> T) throws -> T {
    let file = try TemporaryFile(contents: bytes)
    return try body(file.path)
}

/// A fresh 32 MiB guest at address 0.
private func makeMemory() throws -> GuestMemory {
    try GuestMemory(regions: [(start: GuestAddress(0), size: 32 << 20)])
}

/// Loads `bytes` from a temporary file; returns the file's path and the outcome.
private func load(_ bytes: [UInt8], format: KernelFormat = .automatic, into memory: GuestMemory? = nil) throws
    -> (path: String, result: Result<LoadedKernel, KernelLoadError>)
{
    let memory = try memory ?? makeMemory()
    return try withTemporaryFile(bytes) { path in
        (path, Result { () throws(KernelLoadError) in try KernelLoader.load(path, format: format, into: memory) })
    }
}

/// Checks that `result` failed, with a one-line description naming `path`, and returns the error.
@discardableResult
private func expectFailure(
    _ outcome: (path: String, result: Result<LoadedKernel, KernelLoadError>),
    sourceLocation: SourceLocation = #_sourceLocation
) -> KernelLoadError? {
    switch outcome.result {
    case .success(let kernel):
        Issue.record("loaded unexpectedly: \(kernel)", sourceLocation: sourceLocation)
        return nil
    case .failure(let error):
        #expect(error.description.contains(outcome.path), "\(error)", sourceLocation: sourceLocation)
        #expect(!error.description.contains("\n"), "\(error)", sourceLocation: sourceLocation)
        return error
    }
}

/// The reason of a `.notLoadable` error for `path`, or nil for any other error.
private func notLoadableReason(_ error: KernelLoadError?, path: String) -> String? {
    guard case .notLoadable(let errorPath, let reason) = error, errorPath == path else { return nil }
    return reason
}

@Suite("KernelLoader")
struct KernelLoaderTests {
    // MARK: ELF

    @Test("a valid ELF loads its segments, zeroes bss and starts in long mode", arguments: [KernelFormat.automatic, .elf])
    func validELF(format: KernelFormat) throws {
        let memory = try makeMemory()
        try memory.fill(GuestAddress(0), count: 4 << 20, with: 0xAA)
        let (path, result) = try load(validImage().bytes, format: format, into: memory)
        let kernel = try result.get()
        #expect(kernel.format == .elf)
        #expect(kernel.entry == .longMode(entry: 0x10_0040, zeroPage: 0x7000))
        #expect(kernel.end == GuestAddress(0x20_1000))
        #expect(
            kernel
                == LoadedKernel(format: .elf, entry: .longMode(entry: 0x10_0040, zeroPage: 0x7000), end: GuestAddress(0x20_1000)))
        #expect(!path.isEmpty)

        #expect(try memory.readBytes(at: GuestAddress(0x10_0000), count: 0x100) == textBytes)
        #expect(try memory.readBytes(at: GuestAddress(0x20_0000), count: 0x80) == dataBytes)
        #expect(try memory.readBytes(at: GuestAddress(0x20_0080), count: 0xF80) == [UInt8](repeating: 0, count: 0xF80))
        // Nothing outside the segments was touched, and the PT_NOTE was not loaded at 0.
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x0F_FFFF)) == 0xAA)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x10_0100)) == 0xAA)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x1F_FFFF)) == 0xAA)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x20_1000)) == 0xAA)
        #expect(try memory.readBytes(at: GuestAddress(0), count: 0x10) == [UInt8](repeating: 0xAA, count: 0x10))
    }

    @Test("a segment at the very end of RAM fits")
    func segmentAtEndOfRAM() throws {
        var image = validImage()
        image.segments = [
            ProgramHeader(offset: 0x1000, physicalAddress: (32 << 20) - 0x1000, fileSize: 0x100, memorySize: 0x1000)
        ]
        image.entry = (32 << 20) - 0x1000
        let kernel = try load(image.bytes).result.get()
        #expect(kernel.end == GuestAddress(32 << 20))
    }

    @Test("a non-ELF file is refused in automatic and ELF format", arguments: [KernelFormat.automatic, .elf])
    func notELF(format: KernelFormat) throws {
        let outcome = try load(Array("MZ this is not an ELF kernel image at all, just text.".utf8), format: format)
        #expect(expectFailure(outcome) == .unrecognizedFormat(path: outcome.path))
        // Three bytes of the magic are not enough either.
        let short = try load([0x7F, 0x45, 0x4C], format: format)
        #expect(expectFailure(short) == .unrecognizedFormat(path: short.path))
    }

    @Test("a 32-bit ELF is refused")
    func elf32() throws {
        var image = validImage()
        image.elfClass = 1
        let outcome = try load(image.bytes)
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("64-bit") == true)
    }

    @Test("a big-endian ELF is refused")
    func bigEndian() throws {
        var image = validImage()
        image.dataEncoding = 2
        let outcome = try load(image.bytes)
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("little-endian") == true)
    }

    @Test("an ELF for another machine is refused", arguments: [UInt16(3), 40, 183, 0])
    func wrongMachine(machine: UInt16) throws {
        var image = validImage()
        image.machine = machine
        let outcome = try load(image.bytes)
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("x86-64") == true)
        #expect(reason?.contains("\(machine)") == true)
    }

    @Test("an ELF that is not ET_EXEC is refused", arguments: [UInt16(0), 1, 3, 4])
    func notExecutable(type: UInt16) throws {
        var image = validImage()
        image.type = type
        let outcome = try load(image.bytes)
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("executable") == true)
    }

    @Test("a truncated ELF header is refused", arguments: [4, 16, 40, 63])
    func truncatedHeader(length: Int) throws {
        let outcome = try load(Array(validImage().bytes.prefix(length)))
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("truncated") == true)
    }

    @Test("a program header table outside the file is refused")
    func programHeadersOutsideFile() throws {
        var beyond = validImage()
        beyond.programHeaderOffset = 0x10_0000
        beyond.segments = []
        beyond.programHeaderCount = 1
        let outcome = try load(beyond.bytes)
        #expect(notLoadableReason(expectFailure(outcome), path: outcome.path)?.contains("program header") == true)

        // A table that starts in the file but runs past its end.
        var overrun = validImage()
        overrun.programHeaderCount = 200
        let overrunOutcome = try load(overrun.bytes)
        #expect(notLoadableReason(expectFailure(overrunOutcome), path: overrunOutcome.path)?.contains("program header") == true)

        // An offset so large that offset + size would wrap.
        var huge = validImage()
        huge.programHeaderOffset = .max - 8
        huge.segments = []
        huge.programHeaderCount = 1
        let hugeOutcome = try load(huge.bytes)
        #expect(notLoadableReason(expectFailure(hugeOutcome), path: hugeOutcome.path)?.contains("program header") == true)
    }

    @Test("a segment whose bytes lie outside the file is refused", arguments: segmentsOutsideFile)
    func segmentOutsideFile(offset: UInt64, fileSize: UInt64, memorySize: UInt64) throws {
        var image = validImage()
        image.segments = [ProgramHeader(offset: offset, physicalAddress: 0x10_0000, fileSize: fileSize, memorySize: memorySize)]
        let outcome = try load(image.bytes)
        #expect(notLoadableReason(expectFailure(outcome), path: outcome.path)?.contains("segment 0") == true)
    }

    @Test("a segment below 1 MiB overlaps the boot area", arguments: [UInt64(0), 0x7000, 0xF_F000])
    func segmentBelowHighMemory(address: UInt64) throws {
        var image = validImage()
        image.segments = [ProgramHeader(offset: 0x1000, physicalAddress: address, fileSize: 0x100, memorySize: 0x2000)]
        let memory = try makeMemory()
        let outcome = try load(image.bytes, into: memory)
        #expect(expectFailure(outcome) == .overlapsReserved(path: outcome.path, address: GuestAddress(address), size: 0x2000))
        #expect(try memory.readBytes(at: GuestAddress(address), count: 4) == [0, 0, 0, 0])
    }

    @Test("a segment past the end of RAM does not fit", arguments: segmentsNotFitting)
    func segmentDoesNotFit(address: UInt64, memorySize: UInt64) throws {
        var image = validImage()
        image.segments = [
            ProgramHeader(offset: 0x1000, physicalAddress: address, fileSize: min(0x100, memorySize), memorySize: memorySize)
        ]
        let outcome = try load(image.bytes)
        #expect(expectFailure(outcome) == .doesNotFit(path: outcome.path, address: GuestAddress(address), size: memorySize))
    }

    @Test("the second segment not fitting is refused too")
    func secondSegmentDoesNotFit() throws {
        var image = validImage()
        image.segments[2].physicalAddress = 0x300_0000
        let outcome = try load(image.bytes)
        #expect(expectFailure(outcome) == .doesNotFit(path: outcome.path, address: GuestAddress(0x300_0000), size: 0x1000))
    }

    @Test("an ELF without PT_LOAD segments is refused")
    func noLoadSegment() throws {
        var image = validImage()
        image.segments = image.segments.map {
            var s = $0; s.type = 4; return s
        }
        let outcome = try load(image.bytes)
        #expect(notLoadableReason(expectFailure(outcome), path: outcome.path)?.contains("PT_LOAD") == true)

        // PT_LOAD segments of zero memory size do not count either.
        var empty = validImage()
        empty.segments = [ProgramHeader(offset: 0x1000, physicalAddress: 0x10_0000, fileSize: 0, memorySize: 0)]
        let emptyOutcome = try load(empty.bytes)
        #expect(notLoadableReason(expectFailure(emptyOutcome), path: emptyOutcome.path)?.contains("PT_LOAD") == true)

        var none = validImage()
        none.segments = []
        let noneOutcome = try load(none.bytes)
        #expect(notLoadableReason(expectFailure(noneOutcome), path: noneOutcome.path)?.contains("PT_LOAD") == true)
    }

    @Test("an empty file is refused in every format", arguments: KernelFormat.allCases)
    func emptyFile(format: KernelFormat) throws {
        let outcome = try load([], format: format)
        #expect(expectFailure(outcome) == .empty(path: outcome.path))
    }

    @Test("a missing file is unreadable with ENOENT")
    func missingFile() throws {
        let path = "/tmp/swiftlet-no-such-kernel-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let memory = try makeMemory()
        let result = Result { () throws(KernelLoadError) in try KernelLoader.load(path, format: .automatic, into: memory) }
        let error = expectFailure((path, result))
        guard case .unreadable(let system) = error else {
            Issue.record("expected unreadable, got \(String(describing: error))")
            return
        }
        #expect(system.errno == ENOENT)
    }

    @Test("a directory, a FIFO nobody writes, a socket and character devices are refused by kind, at once")
    func notARegularFile() throws {
        let files = try SpecialFiles()
        let cases: [(String, HostFileKind)] = [
            (files.subdirectory, .directory), (files.fifo, .fifo), (files.socket, .socket),
            ("/dev/null", .characterDevice), ("/dev/zero", .characterDevice),
        ]
        let memory = try makeMemory()
        for (path, kind) in cases {
            for format in KernelFormat.allCases {
                let result = Result { () throws(KernelLoadError) in try KernelLoader.load(path, format: format, into: memory) }
                #expect(expectFailure((path, result)) == .notARegularFile(path: path, kind: kind))
            }
        }
        #expect(
            KernelLoadError.notARegularFile(path: files.fifo, kind: .fifo).description
                == "kernel \(files.fifo) is a FIFO, not a regular file")
    }

    // MARK: Flat real mode

    @Test("a flat binary loads at 0x10000 and starts in real mode at 1000:0000")
    func flatRealMode() throws {
        let memory = try makeMemory()
        try memory.fill(GuestAddress(0), count: 0x40000, with: 0xAA)
        let code = pattern(512, seed: 5)
        let kernel = try load(code, format: .flatRealMode, into: memory).result.get()
        #expect(
            kernel
                == LoadedKernel(
                    format: .flatRealMode, entry: .realMode(segment: 0x1000, offset: 0, stackPointer: 0xFFF0),
                    end: GuestAddress(0x10200)))
        #expect(try memory.readBytes(at: GuestAddress(0x10000), count: 512) == code)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0xFFFF)) == 0xAA)
        #expect(try memory.read(UInt8.self, at: GuestAddress(0x10200)) == 0xAA)
    }

    @Test("a flat binary may be an ELF file too: it is loaded as bytes")
    func flatIgnoresELFMagic() throws {
        let memory = try makeMemory()
        let bytes = validImage().bytes
        let kernel = try load(bytes, format: .flatRealMode, into: memory).result.get()
        #expect(kernel.format == .flatRealMode)
        #expect(try memory.readBytes(at: GuestAddress(0x10000), count: bytes.count) == bytes)
    }

    @Test("a flat binary of exactly 64 KiB fits, one byte more does not")
    func flatSizeLimit() throws {
        let memory = try makeMemory()
        let full = try load(pattern(0x10000, seed: 1), format: .flatRealMode, into: memory).result.get()
        #expect(full.end == GuestAddress(0x20000))

        let outcome = try load(pattern(0x10001, seed: 1), format: .flatRealMode)
        let reason = notLoadableReason(expectFailure(outcome), path: outcome.path)
        #expect(reason?.contains("64 KiB") == true)
        #expect(reason?.contains("65537") == true)
    }

    @Test("a flat binary that does not fit in guest RAM is refused")
    func flatDoesNotFit() throws {
        let tiny = try GuestMemory(regions: [(start: GuestAddress(0), size: 0x10000)])
        let outcome = try load(pattern(16, seed: 1), format: .flatRealMode, into: tiny)
        #expect(expectFailure(outcome) == .doesNotFit(path: outcome.path, address: GuestAddress(0x10000), size: 16))
    }

    @Test("every load error is described on one line naming the path")
    func descriptions() {
        let path = "/images/bzImage-test"
        let errors: [KernelLoadError] = [
            .unreadable(SystemError("open \(path)", errno: ENOENT)),
            .unrecognizedFormat(path: path),
            .notLoadable(path: path, reason: "not little-endian"),
            .doesNotFit(path: path, address: GuestAddress(0x100_0000), size: 0x2000),
            .overlapsReserved(path: path, address: GuestAddress(0x7000), size: 0x10),
            .empty(path: path),
            .notARegularFile(path: path, kind: .characterDevice),
        ]
        for error in errors {
            #expect(error.description.contains(path), "\(error)")
            #expect(!error.description.contains("\n"), "\(error)")
        }
        #expect(errors[3].description.contains("0x1000000"))
        #expect(errors[4].description.contains("0x7000"))
        #expect(errors[4].description.contains("0x100000"))
    }
}
