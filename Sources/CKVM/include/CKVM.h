// CKVM: the KVM part of the small C layer under Swiftlet.
//
// Swift cannot expand the _IO/_IOR/_IOW/_IOWR macros that build KVM's request numbers, so this
// header exports every KVM request number Swiftlet uses as a `static const unsigned long`,
// and the offset of kvm_run's MMIO data. The kernel structs (struct kvm_regs, struct kvm_run,
// ...) and the KVM_EXIT_* / KVM_CAP_* constants come straight from <linux/kvm.h>. The ioctl
// wrappers themselves are in CHost (Sources/CHost), which this module builds on.
#ifndef SWIFTLET_CKVM_H
#define SWIFTLET_CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
// The ioctl wrappers (swl_ioctl_*) are CHost's.
#include "CHost.h"

// ---- /dev/kvm (system) requests ----
static const unsigned long SWL_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long SWL_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long SWL_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long SWL_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long SWL_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long SWL_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// ---- VM requests ----
static const unsigned long SWL_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long SWL_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long SWL_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long SWL_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long SWL_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long SWL_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long SWL_KVM_IRQFD = KVM_IRQFD;
static const unsigned long SWL_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long SWL_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long SWL_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long SWL_KVM_GET_CLOCK = KVM_GET_CLOCK;
// Snapshots: the VM-wide state (irqchip, PIT, kvmclock) is read and written back.
static const unsigned long SWL_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long SWL_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long SWL_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long SWL_KVM_SET_PIT2 = KVM_SET_PIT2;

// ---- vCPU requests ----
static const unsigned long SWL_KVM_RUN = KVM_RUN;
static const unsigned long SWL_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long SWL_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long SWL_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long SWL_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long SWL_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long SWL_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long SWL_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long SWL_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long SWL_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long SWL_KVM_GET_CPUID2 = KVM_GET_CPUID2;
static const unsigned long SWL_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long SWL_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long SWL_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long SWL_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
// Snapshots: the rest of a vCPU's state.
static const unsigned long SWL_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long SWL_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long SWL_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long SWL_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long SWL_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long SWL_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long SWL_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long SWL_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long SWL_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long SWL_KVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;

// ---- struct kvm_run offsets ----
// Swift reaches the members of kvm_run's anonymous union only through computed accessors that
// copy; the MMIO data bytes are read and written in place through this offset instead.
static const unsigned long SWL_KVM_RUN_MMIO_DATA_OFFSET = __builtin_offsetof(struct kvm_run, mmio.data);

#endif
