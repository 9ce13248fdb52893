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

/// The machine builder's rollback and the device manager, on the host's /dev/kvm. The leak
/// tests build many failing machines and check that what each made is gone afterwards: its
/// guest mapping, its KVM, epoll and event descriptors, its disk images and its tap.
@Suite("KVM: machine builder and device manager", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized)
struct MachineBuilderTests {
    /// Failing builds per case: a leak of one part per build shows as at least this many.
    static let attempts = 20
    /// Guest RAM of the leak tests: large (MAP_NORESERVE, nothing is touched), so one leaked
    /// mapping stands out from whatever other suites map at the same time.
    static let memorySize: UInt64 = 2 << 30

    /// What the process holds of the kinds a machine makes.
    struct Holdings: CustomStringConvertible {
        /// Open descriptors by kind: `/dev/kvm`, `anon_inode:kvm-vm`, `anon_inode:kvm-vcpu:0`
        /// (the vCPU index dropped), `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, ...
        var descriptors: [String: Int] = [:]
        /// Descriptors open on one of `paths`.
        var onPaths = 0
        /// The process's virtual size in bytes (/proc/self/statm).
        var virtualSize: UInt64 = 0

        static let kinds = [
            "/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu", "anon_inode:[eventfd]", "anon_inode:[eventpoll]",
            "/dev/net/tun", "anon_inode:[timerfd]",
        ]

        init(paths: [String]) throws {
            guard let directory = opendir("/proc/self/fd") else { throw TestFailure("cannot list /proc/self/fd") }
            defer { closedir(directory) }
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard name.first?.isNumber == true else { continue }
                var buffer = [CChar](repeating: 0, count: 4096)
                let count = readlink("/proc/self/fd/\(name)", &buffer, buffer.count - 1)
                guard count > 0 else { continue }
                let target = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if paths.contains(target) { onPaths += 1 }
                if let kind = Self.kinds.first(where: { target.hasPrefix($0) }) { descriptors[kind, default: 0] += 1 }
            }
            let statm = try Subprocess.contents(of: "/proc/self/statm")
            virtualSize = (UInt64(statm.split(separator: " ").first ?? "0") ?? 0) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
        }

        var description: String {
            "descriptors \(descriptors.sorted { $0.key < $1.key }), on the disk images \(onPaths), virtual size \(virtualSize >> 20) MiB"
        }
    }

    /// Builds `configuration` `attempts` times, each failing (at `failingAfter`, or for real),
    /// and checks that nothing of the builds is left. Returns the errors' descriptions.
    static func expectNoLeak(
        _ configuration: MachineConfiguration, failingAfter step: BuildStep?, paths: [String], expectedStep: BuildStep
    ) throws {
        let before = try Holdings(paths: paths)
        for _ in 0..<attempts {
            do {
                _ = try MachineBuilder.build(configuration, failingAfter: step)
                Issue.record("the build did not fail (step \(String(describing: step)))")
            } catch {
                #expect(error.step == expectedStep, "\(error)")
            }
        }
        let after = try Holdings(paths: paths)
        // Other suites may run machines meanwhile; a leak here grows by `attempts` per kind.
        for kind in Holdings.kinds {
            let grown = (after.descriptors[kind] ?? 0) - (before.descriptors[kind] ?? 0)
            #expect(
                grown < attempts,
                "failing after \(String(describing: step)): \(kind) descriptors grew by \(grown)\nbefore: \(before)\nafter: \(after)"
            )
        }
        #expect(after.onPaths == 0, "failing after \(String(describing: step)): disk images still open\n\(after)")
        let grown = after.virtualSize > before.virtualSize ? after.virtualSize - before.virtualSize : 0
        #expect(grown < 2 * memorySize, "failing after \(String(describing: step)): virtual size grew by \(grown >> 20) MiB")
    }

    @Test("a build that fails after any step tears down every part it made, 20 times per step", .timeLimit(.minutes(5)))
    func rollbackAfterEveryStep() throws {
        let first = try TemporaryFile(contents: [UInt8](repeating: 0xA5, count: 1 << 16))
        let second = try TemporaryFile(contents: [UInt8](repeating: 0x5A, count: 1 << 16))
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let kernel = try TestSupport.guest("virtio-net-test.elf")
        let (firstPath, secondPath) = (first.path, second.path)
        try namespace.run {
            // Rate limits on the first disk and both directions of the interface: their retry
            // timers (timerfds) must go with a failed build too.
            let limit = RateLimit(bandwidth: TokenBucketLimit(size: 1 << 20, refillTimeMilliseconds: 100))
            var configuration = MachineConfiguration(
                kernelPath: kernel, memorySize: Self.memorySize, vcpuCount: 2, console: .output(BufferSerialOutput()),
                disks: [
                    DiskConfiguration(path: firstPath, rateLimit: limit), DiskConfiguration(path: secondPath, readOnly: true),
                ],
                networks: [NetworkConfiguration(tap: "swl-leak0", receiveRateLimit: limit, transmitRateLimit: limit)], rng: true)
            configuration.bootTimer = true
            configuration.mmioTestDevice = true
            // Building runs every step but the restore-only ones (SnapshotTests covers those).
            for step in BuildStep.allCases
            where ![.startThreads, .readSnapshot, .restoreState, .dropPrivileges, .seccompFilters].contains(step) {
                try Self.expectNoLeak(configuration, failingAfter: step, paths: [firstPath, secondPath], expectedStep: step)
            }
        }
        // The tap went with the last build: the interface is gone from the namespace.
        let links = try Subprocess.run(NetworkTestSupport.ip, ["-n", namespace.name, "-o", "link", "show"])
        #expect(links.status == 0 && !links.stdout.contains("swl-leak0"), "\(links.stdout)")
    }

    @Test(
        "real failures roll back too: a second tap that cannot be opened, a missing disk, a missing initrd",
        .timeLimit(.minutes(5)))
    func rollbackOnRealFailures() throws {
        let disk = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 16))
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let kernel = try TestSupport.guest("virtio-net-test.elf")
        let diskPath = disk.path
        try namespace.run {
            let base = MachineConfiguration(
                kernelPath: kernel, memorySize: Self.memorySize, console: .output(BufferSerialOutput()),
                disks: [DiskConfiguration(path: diskPath)], rng: true)
            var secondTap = base
            // The first tap is made; the second names the loopback interface, which is no tap.
            secondTap.networks = [NetworkConfiguration(tap: "swl-leak1"), NetworkConfiguration(tap: "lo")]
            try Self.expectNoLeak(secondTap, failingAfter: nil, paths: [diskPath], expectedStep: .createDevices)
            var missingDisk = base
            missingDisk.disks.append(DiskConfiguration(path: "/nonexistent/swiftlet-disk.img"))
            try Self.expectNoLeak(missingDisk, failingAfter: nil, paths: [diskPath], expectedStep: .createDevices)
            var missingInitrd = base
            missingInitrd.initrdPath = "/nonexistent/swiftlet-initrd.img"
            try Self.expectNoLeak(missingInitrd, failingAfter: nil, paths: [diskPath], expectedStep: .writeBootStructures)
        }
        let links = try Subprocess.run(NetworkTestSupport.ip, ["-n", namespace.name, "-o", "link", "show"])
        #expect(links.status == 0 && !links.stdout.contains("swl-leak1"), "\(links.stdout)")
    }

    @Test("the device manager places devices in one slot sequence and the command line comes from what it attached")
    func inventoryAndCommandLine() throws {
        let first = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 16))
        let second = try TemporaryFile(contents: [UInt8](repeating: 0, count: 1 << 16))
        let namespace = try TestNetworkNamespace()
        defer { namespace.delete() }
        let kernel = try TestSupport.guest("virtio-net-test.elf")
        let (firstPath, secondPath) = (first.path, second.path)
        let (devices, commandLine) = try namespace.run { () -> ([AttachedDevice], String) in
            let machine = try Machine(
                MachineConfiguration(
                    kernelPath: kernel, console: .none, commandLine: "console=ttyS0 -- /init",
                    disks: [DiskConfiguration(path: firstPath), DiskConfiguration(path: secondPath)],
                    networks: [NetworkConfiguration(tap: "swl-dm0")], rng: true))
            let bytes = try machine.memory.readBytes(at: X86Layout.commandLineAddress, count: 512)
            return (machine.devices, String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))
        }
        #expect(devices.map(\.kind) == [.serial, .i8042, .exitStatus, .virtioBlock, .virtioBlock, .virtioNet, .virtioRNG])
        #expect(devices.first?.window == .ports(base: 0x3F8, count: 8) && devices.first?.gsi == 4)
        let virtio = devices.filter { $0.commandLineWord != nil }
        #expect(virtio.map(\.gsi) == [5, 6, 7, 8])
        #expect(
            virtio.map(\.window) == (0..<4).map { .mmio(base: GuestAddress(0xD000_0000 + UInt64($0) * 0x1000), length: 0x1000) })
        #expect(virtio[0].name == "virtio-blk 0 (\(first.path))" && virtio[2].name == "virtio-net 0 (swl-dm0)")
        #expect(
            commandLine
                == "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 "
                + "virtio_mmio.device=4K@0xd0002000:7 virtio_mmio.device=4K@0xd0003000:8 -- /init")
    }

    @Test("production machines get neither the MMIO test device nor the boot timer unless asked")
    func noTestDevicesByDefault() throws {
        let kernel = try TestSupport.guest("longmode-hello.elf")
        let plain = try Machine(MachineConfiguration(kernelPath: kernel, console: .none))
        #expect(plain.devices.map(\.kind) == [.serial, .i8042, .exitStatus])
        #expect(plain.bootTimer == nil)
        var asked = MachineConfiguration(kernelPath: kernel, console: .none)
        asked.bootTimer = true
        asked.mmioTestDevice = true
        let withBoth = try Machine(asked)
        #expect(withBoth.devices.map(\.kind) == [.serial, .i8042, .bootTimer, .exitStatus, .mmioTestDevice])
        #expect(withBoth.bootTimer != nil)
    }
}
