import Testing

@testable import Swiftlet
@testable import SwiftletBackends
@testable import SwiftletCommandLine
@testable import SwiftletDeviceTree
@testable import SwiftletDevices
@testable import SwiftletHost
@testable import SwiftletKVM
@testable import SwiftletMemory
@testable import SwiftletTestSupport

private let validSizeCases: [(String, UInt64)] = [
    ("128M", 128 << 20),
    ("128m", 128 << 20),
    ("1G", 1 << 30),
    ("1g", 1 << 30),
    ("3G", 3 << 30),
    ("512k", 512 << 10),
    ("512K", 512 << 10),
    ("4096", 4096),
    ("0", 0),
    ("0M", 0),
    ("0016M", 16 << 20),
    ("17179869183G", 17_179_869_183 << 30),  // the largest G value that fits
    ("18446744073709551615", .max),
]

private let validConfigurationCases: [(UInt64, Int)] = [(2 << 20, 1), (128 << 20, 254), (4 << 30, 2), ((2 << 20) + 4096, 8)]

@Suite("Configuration")
struct ConfigurationTests {
    // MARK: byte sizes (--memory, and size keys of device options)

    @Test("valid sizes", arguments: validSizeCases)
    func validSizes(text: String, expected: UInt64) {
        #expect(ValueSyntax.byteSize(text) == expected)
    }

    @Test(
        "invalid sizes",
        arguments: [
            "", "M", "G", "k", "12X", "12MB", "12MiB", "M12", "1.5G", "-1", "-1M", " 128M", "128 M", "128M ",
            "99999999999G",  // overflows when scaled
            "17179869184G",  // 2^64 exactly
            "18446744073709551616",  // overflows UInt64 itself
            "99999999999999999999999999M",
            "١٢٨M",  // Arabic-Indic digits
            "１２８M",  // full-width digits
            "12８",  // mixed
            "0x100",
        ])
    func invalidSizes(text: String) {
        #expect(ValueSyntax.byteSize(text) == nil)
    }

    // MARK: validate

    private func configuration(memory: UInt64 = 128 << 20, vcpus: Int = 1, kernel: String = "/boot/vmlinux")
        -> MachineConfiguration
    {
        MachineConfiguration(kernelPath: kernel, memorySize: memory, vcpuCount: vcpus, console: .none)
    }

    @Test("defaults")
    func defaults() throws {
        let config = MachineConfiguration(kernelPath: "/boot/vmlinux")
        #expect(config.memorySize == 128 << 20)
        #expect(config.vcpuCount == 1)
        #expect(config.kernelFormat == .automatic)
        try config.validate()
    }

    @Test("valid configurations pass", arguments: validConfigurationCases)
    func validConfigurations(memory: UInt64, vcpus: Int) throws {
        try configuration(memory: memory, vcpus: vcpus).validate()
    }

    @Test("too little memory is refused", arguments: [0, 4096, (2 << 20) - 4096, 1 << 20] as [UInt64])
    func tooSmall(memory: UInt64) {
        #expect(throws: ConfigurationError.memoryTooSmall(memory)) { try configuration(memory: memory).validate() }
    }

    @Test(
        "memory that is not a whole number of pages is refused",
        arguments: [(128 << 20) + 1, (3 << 20) + 512, (64 << 20) - 2048] as [UInt64])
    func notPageAligned(memory: UInt64) {
        #expect(throws: ConfigurationError.memoryNotPageAligned(memory)) { try configuration(memory: memory).validate() }
    }

    @Test("vCPU counts outside 1...254 are refused", arguments: [0, -1, 255, 1000, Int.min])
    func vcpuCount(count: Int) {
        #expect(throws: ConfigurationError.vcpuCount(count)) { try configuration(vcpus: count).validate() }
    }

    @Test("an empty kernel path is refused")
    func missingKernel() {
        #expect(throws: ConfigurationError.missingKernel) { try configuration(kernel: "").validate() }
    }

    @Test("every configuration error is described on one line")
    func descriptions() {
        let cases: [(ConfigurationError, [String])] = [
            (.memoryTooSmall(4096), ["4096", "2 MiB"]),
            (.memoryNotPageAligned(12345), ["12345", "4 KiB"]),
            (.vcpuCount(255), ["255", "254"]),
            (.missingKernel, ["kernel"]),
        ]
        for (error, words) in cases {
            let text = error.description
            #expect(!text.isEmpty)
            #expect(!text.contains("\n"), "\(text)")
            for word in words { #expect(text.contains(word), "\(text) should mention \(word)") }
        }
    }
}
