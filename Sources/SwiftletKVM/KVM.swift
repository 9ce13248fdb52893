import CHost
import CKVM
import Glibc
import SwiftletHost
import SwiftletMemory

/// The host's `/dev/kvm`: API version, capabilities, supported CPUID, and VM creation.
package final class KVM: Sendable {
    /// The only KVM API version that exists; anything else is refused.
    package static let requiredAPIVersion: Int32 = 12

    let fd: OwnedFileDescriptor
    /// Size of the per-vCPU `kvm_run` mapping (`KVM_GET_VCPU_MMAP_SIZE`).
    package let vcpuMmapSize: Int

    /// Opens `path` (normally `/dev/kvm`) and checks the API version.
    package init(path: String = "/dev/kvm") throws {
        fd = try OwnedFileDescriptor(opening: path, flags: O_RDWR)
        let version = swl_ioctl_none(fd.rawValue, SWL_KVM_GET_API_VERSION)
        if version < 0 { throw SystemError.current("KVM_GET_API_VERSION") }
        guard version == KVM.requiredAPIVersion else {
            throw KVMUnsupportedError(
                requirement: "API version \(KVM.requiredAPIVersion)", detail: "it reports version \(version)")
        }
        let size = swl_ioctl_none(fd.rawValue, SWL_KVM_GET_VCPU_MMAP_SIZE)
        if size < 0 { throw SystemError.current("KVM_GET_VCPU_MMAP_SIZE") }
        vcpuMmapSize = Int(size)
    }

    /// `KVM_CHECK_EXTENSION`: 0 when the capability is absent, otherwise its value.
    package func capability(_ cap: Int32) -> Int32 {
        max(0, swl_ioctl_value(fd.rawValue, SWL_KVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// Throws unless the host has every capability in `caps` (names are for the message).
    package func require(_ caps: [(Int32, String)]) throws(KVMUnsupportedError) {
        for (cap, name) in caps where capability(cap) == 0 {
            throw KVMUnsupportedError(requirement: name, detail: "KVM_CHECK_EXTENSION returned 0")
        }
    }

    /// `KVM_GET_SUPPORTED_CPUID`: the CPUID entries this host can expose to a guest.
    package func supportedCPUID() throws(SystemError) -> [kvm_cpuid_entry2] {
        var capacity = 64
        while true {
            let table = CPUIDTable(capacity: capacity)
            let result = swl_ioctl_pointer(fd.rawValue, SWL_KVM_GET_SUPPORTED_CPUID, table.raw)
            if result == 0 { return table.entries }
            if Glibc.errno == E2BIG && capacity < 4096 {
                capacity *= 2
                continue
            }
            throw SystemError.current("KVM_GET_SUPPORTED_CPUID")
        }
    }

    /// `KVM_CREATE_VM`: a new, empty virtual machine.
    package func createVirtualMachine() throws(SystemError) -> VirtualMachine {
        let vmfd = try retryingOnInterrupt("KVM_CREATE_VM") { swl_ioctl_value(fd.rawValue, SWL_KVM_CREATE_VM, 0) }
        return VirtualMachine(fd: OwnedFileDescriptor(taking: vmfd), kvm: self)
    }
}

/// A heap-allocated `struct kvm_cpuid2` with room for `capacity` entries.
final class CPUIDTable {
    let raw: UnsafeMutableRawPointer
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        let bytes = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(capacity)
    }

    convenience init(entries: [kvm_cpuid_entry2]) {
        self.init(capacity: entries.count)
        for (i, entry) in entries.enumerated() { entryPointer[i] = entry }
    }

    deinit { raw.deallocate() }

    var entryPointer: UnsafeMutablePointer<kvm_cpuid_entry2> {
        (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
    }

    var entries: [kvm_cpuid_entry2] {
        let count = Int(raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent)
        return Array(UnsafeBufferPointer(start: entryPointer, count: min(count, capacity)))
    }
}
