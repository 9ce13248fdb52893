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

/// Tiny guests that enter through the same 64-bit Linux boot path as a vmlinux and check, from
/// inside the guest, what Swiftlet handed them: the zero page (RSI), its e820 map, command line
/// and initrd, and the MP table with every vCPU's APIC ID.
@Suite("KVM: Linux boot path", .enabled(if: TestSupport.hasKVM, TestSupport.noKVMReason), .serialized, .timeLimit(.minutes(2)))
struct LinuxBootKVMTests {
    static func fnv1a(_ bytes: [UInt8]) -> UInt32 {
        var hash: UInt32 = 0x811C_9DC5
        for byte in bytes { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return hash
    }

    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    static func run(_ configuration: MachineConfiguration) throws -> (GuestExit, String, Machine) {
        let console = BufferSerialOutput()
        var configuration = configuration
        configuration.console = .output(console)
        let machine = try Machine(configuration)
        machine.setDeadline(after: TestSupport.guestDeadline)
        try machine.start()
        let exit = machine.wait()
        return (exit, console.text, machine)
    }

    @Test(
        "the guest finds the zero page at RSI with the configured e820 map, command line and initrd",
        arguments: [(128 as UInt64) << 20, 256 << 20, 5 << 30])
    func zeroPageFromInside(memorySize: UInt64) throws {
        let initrd = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        let initrdPath = try TemporaryFile(contents: initrd)
        let commandLine = "console=ttyS0 swiftlet.test=zeropage quiet"
        let (exit, output, machine) = try Self.run(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("zeropage-report.elf"), memorySize: memorySize,
                commandLine: commandLine, initrdPath: initrdPath.path))
        #expect(exit == .reset)

        let e820 = E820Map.entries(memorySize: memorySize)
        let initrdAddress = try LinuxBoot.initrdAddress(size: 4096, memorySize: memorySize, kernel: machine.kernel)
        var expected = [
            "zeropage: rsi=0x7000",
            "header: boot_flag=0xaa55 magic=0x53726448 version=0x20f type_of_loader=0xff loadflags=0x81",
            "e820: count=\(e820.count)",
        ]
        expected += e820.map { "e820: addr=\(Self.hex($0.address)) size=\(Self.hex($0.size)) type=\($0.type.rawValue)" }
        expected += [
            "cmdline: ptr=0x20000 size=\(commandLine.utf8.count) text=\(commandLine)",
            "initrd: addr=\(Self.hex(initrdAddress.rawValue)) size=0x1000 fnv1a=\(String(Self.fnv1a(initrd), radix: 16))",
            "done",
        ]
        #expect(output.split(separator: "\n").map(String.init) == expected)
        // The initrd sits at the top of RAM below the MMIO gap and the kernel's initrd_addr_max.
        #expect(initrdAddress.rawValue == min(memorySize, 0xC000_0000, BzImage.defaultInitrdAddressMax + 1) - 4096)
    }

    @Test("a CPUID mask is added to the command line as clearcpuid=")
    func cpuidMaskOnCommandLine() throws {
        let (exit, output, _) = try Self.run(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("zeropage-report.elf"), commandLine: "console=ttyS0",
                cpuidMask: try CPUIDFeature.parseMask("popcnt,cx16")))
        #expect(exit == .reset)
        #expect(output.contains("text=console=ttyS0 clearcpuid=popcnt,cx16\n"))
    }

    @Test(
        "every vCPU reports its APIC ID after the guest starts the APs with INIT/SIPI",
        arguments: [1, 2, 4])
    func smpAPICIDs(cpus: Int) throws {
        let (exit, output, machine) = try Self.run(
            MachineConfiguration(kernelPath: try TestSupport.guest("smp-report.elf"), vcpuCount: cpus))
        #expect(exit == .reset)
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.first == "mptable: cpus=\(cpus) bsp=0")
        // Application processors report in whatever order they run.
        let reported = Set(lines.filter { $0.hasPrefix("cpu: ") })
        var expected: Set<String> = ["cpu: apic-id=0 (bsp)"]
        for id in 1..<max(cpus, 1) { expected.insert("cpu: apic-id=\(id)") }
        #expect(reported == expected)
        #expect(lines.last == "smp: all \(cpus) cpus reported")
        // The CPUID table KVM holds for each vCPU carries its APIC ID (read back with
        // KVM_GET_CPUID2: on some hosts the guest's cpuid instruction does not see it).
        for vcpu in machine.vcpus {
            let leaf1 = try #require(try vcpu.cpuid().first { $0.function == 1 })
            #expect(leaf1.ebx >> 24 == vcpu.id)
            #expect(leaf1.ecx & X86CPUID.hypervisorPresentBit != 0)
        }
    }

    @Test("boot MSRs, LAPIC LINT0/LINT1 and the entry registers reach KVM; KVM accepts the CPUID tables")
    func vcpuStateReadBack() throws {
        let machine = try Machine(
            MachineConfiguration(
                kernelPath: try TestSupport.guest("longmode-hello.elf"), vcpuCount: 2, console: .none,
                cpuidMask: try CPUIDFeature.parseMask("popcnt,avx2")))
        for vcpu in machine.vcpus {
            let lapic = try vcpu.localAPIC()
            #expect(LocalAPICSetup.register(LocalAPICSetup.lint0Register, of: lapic) & 0x1_0700 == 0x700)
            #expect(LocalAPICSetup.register(LocalAPICSetup.lint1Register, of: lapic) & 0x1_0700 == 0x400)
            let msrs = try vcpu.msrs([BootMSRs.miscEnable, BootMSRs.mtrrDefType])
            #expect(msrs[0] & 1 == 1)
            #expect(msrs[1] == (1 << 11) | 6)
            // The masked table was accepted by KVM_SET_CPUID2 (building would have failed
            // otherwise). Its contents are checked in X86CPUIDTests and CPUIDKVMTests
            // (KVM_GET_CPUID2 returns the table that was set; on the development host the
            // guest's cpuid instruction ORs in some host feature bits, popcnt and avx2 among them).
            #expect(try !vcpu.cpuid().isEmpty)
        }
        let sregs = try machine.vcpus[0].specialRegisters()
        #expect(sregs.cr0 == X86ControlBits.longModeCR0)
        #expect(sregs.efer & (X86ControlBits.eferLME | X86ControlBits.eferLMA) != 0)
        #expect(try machine.vcpus[0].registers().rsi == X86Layout.zeroPageAddress.rawValue)
    }

    @Test("the boot timer records the guest's write of 123 to port 0x440")
    func bootTimer() throws {
        // A flat real-mode guest that writes 123 to port 0x440, then resets.
        let code: [UInt8] = [
            0xBA, 0x40, 0x04,  // mov dx, 0x440
            0xB0, 0x7B,  // mov al, 123
            0xEE,  // out dx, al
            0xB0, 0xFE,  // mov al, 0xfe
            0xE6, 0x64,  // out 0x64, al
            0xF4, 0xEB, 0xFD,  // hlt; jmp $-3
        ]
        let image = try TemporaryFile(contents: code)
        var configuration = MachineConfiguration(kernelPath: image.path, kernelFormat: .flatRealMode)
        configuration.bootTimer = true
        let (exit, _, machine) = try Self.run(configuration)
        #expect(exit == .reset)
        let nanoseconds = try #require(machine.bootTime)
        #expect(nanoseconds > 0)
        #expect(machine.devices.map(\.kind).contains(.bootTimer))
        // Off by default (as in Firecracker): the port is not claimed and nothing is recorded.
        let (plainExit, _, plain) = try Self.run(MachineConfiguration(kernelPath: image.path, kernelFormat: .flatRealMode))
        #expect(plainExit == .reset)
        #expect(plain.bootTimer == nil && plain.bootTime == nil)
        #expect(!plain.devices.map(\.kind).contains(.bootTimer))
    }
}
