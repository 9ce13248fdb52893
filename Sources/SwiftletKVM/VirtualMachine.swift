import CHost
import CKVM
import Glibc
import SwiftletHost
import SwiftletMemory

/// A KVM virtual machine file descriptor: memory slots, the in-kernel irqchip and PIT,
/// irqfd/ioeventfd registration, and vCPU creation.
package final class VirtualMachine: Sendable {
    let fd: OwnedFileDescriptor
    /// The `/dev/kvm` this VM was created from (kept alive for the vCPU mmap size).
    package let kvm: KVM

    init(fd: OwnedFileDescriptor, kvm: KVM) {
        self.fd = fd
        self.kvm = kvm
    }

    /// `KVM_SET_USER_MEMORY_REGION`: maps `size` bytes of host memory at `host` into the guest
    /// at `guest` in memory slot `slot`.
    package func setUserMemoryRegion(
        slot: UInt32, guest: GuestAddress, size: UInt64, host: UnsafeMutableRawPointer, readOnly: Bool = false
    ) throws(SystemError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? UInt32(KVM_MEM_READONLY) : 0,
            guest_phys_addr: guest.rawValue, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        try check("KVM_SET_USER_MEMORY_REGION slot \(slot)") {
            swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_USER_MEMORY_REGION, &region)
        }
    }

    /// `KVM_SET_TSS_ADDR`: three pages the x86 VMX backend needs below 4 GiB.
    package func setTSSAddress(_ address: GuestAddress) throws(SystemError) {
        try check("KVM_SET_TSS_ADDR") { swl_ioctl_value(fd.rawValue, SWL_KVM_SET_TSS_ADDR, UInt(address.rawValue)) }
    }

    /// `KVM_SET_IDENTITY_MAP_ADDR`: one page for the real-mode identity map on VMX hosts.
    package func setIdentityMapAddress(_ address: GuestAddress) throws(SystemError) {
        var value = address.rawValue
        try check("KVM_SET_IDENTITY_MAP_ADDR") {
            swl_ioctl_pointer(fd.rawValue, SWL_KVM_SET_IDENTITY_MAP_ADDR, &value)
        }
    }

    /// `KVM_CREATE_IRQCHIP`: the in-kernel PIC pair, IOAPIC and per-vCPU local APICs.
    package func createIRQChip() throws(SystemError) {
        try check("KVM_CREATE_IRQCHIP") { swl_ioctl_none(fd.rawValue, SWL_KVM_CREATE_IRQCHIP) }
    }

    /// `KVM_CREATE_PIT2`: the in-kernel i8254 timer (with the speaker port left to userspace).
    package func createPIT2() throws(SystemError) {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try check("KVM_CREATE_PIT2") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_CREATE_PIT2, &config) }
    }

    /// `KVM_IRQ_LINE`: drives interrupt line `gsi` of the in-kernel irqchip high or low.
    package func setIRQLine(_ gsi: UInt32, high: Bool) throws(SystemError) {
        var level = kvm_irq_level()
        level.irq = gsi
        level.level = high ? 1 : 0
        try check("KVM_IRQ_LINE \(gsi)") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_IRQ_LINE, &level) }
    }

    /// `KVM_IRQFD`: signalling `eventfd` raises (edge) interrupt `gsi` without a VM exit.
    package func registerIRQFD(_ eventfd: EventFD, gsi: UInt32) throws(SystemError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: eventfd.fd.rawValue)
        irqfd.gsi = gsi
        try check("KVM_IRQFD gsi \(gsi)") { swl_ioctl_pointer(fd.rawValue, SWL_KVM_IRQFD, &irqfd) }
    }

    /// The address space an ioeventfd watches.
    package enum IOEventSpace: Sendable { case pio, mmio }

    /// `KVM_IOEVENTFD`: a guest write of `length` bytes to `address` signals `eventfd` inside
    /// the kernel instead of exiting to userspace. With `matching`, only that value triggers it.
    package func registerIOEventFD(
        _ eventfd: EventFD, space: IOEventSpace, address: UInt64, length: UInt32, matching value: UInt64? = nil
    ) throws(SystemError) {
        var request = kvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = eventfd.fd.rawValue
        var flags: UInt32 = 0
        if space == .pio { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if let value {
            flags |= UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
            request.datamatch = value
        }
        request.flags = flags
        try check("KVM_IOEVENTFD \(space) 0x\(String(address, radix: 16))") {
            swl_ioctl_pointer(fd.rawValue, SWL_KVM_IOEVENTFD, &request)
        }
    }

    /// `KVM_CREATE_VCPU` plus the mmap of its `kvm_run` page.
    package func createVCPU(id: UInt32) throws(SystemError) -> VCPU {
        let cpufd = try retryingOnInterrupt("KVM_CREATE_VCPU \(id)") {
            swl_ioctl_value(fd.rawValue, SWL_KVM_CREATE_VCPU, UInt(id))
        }
        let owned = OwnedFileDescriptor(taking: cpufd)
        return try VCPU(id: id, fd: owned, mmapSize: kvm.vcpuMmapSize)
    }

    @inline(__always)
    func check(_ operation: @autoclosure () -> String, _ body: () -> Int32) throws(SystemError) {
        _ = try retryingOnInterrupt(operation(), body)
    }
}
