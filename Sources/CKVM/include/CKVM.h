// CKVM: the small C layer under Swiftlet.
//
// Swift cannot call the variadic ioctl(2) or expand the _IO/_IOR/_IOW/_IOWR macros that build
// KVM's and tun's request numbers, so this header does exactly two things:
//   1. exports every KVM and tun/tap request number Swiftlet uses as a
//      `static const unsigned long`, and
//   2. declares fixed-signature wrappers for ioctl(2), eventfd(2), the one ioctl whose argument
//      is a `struct ifreq` (TUNSETIFF), setns(2) and the pseudo-terminal calls (not exported by
//      Swift's Glibc module; the pty ones serve the terminal tests).
// The kernel structs (struct kvm_regs, struct kvm_run, ...) and the KVM_EXIT_* / KVM_CAP_*,
// IFF_* and TUN_F_* constants come straight from <linux/kvm.h> and <linux/if_tun.h>. Nothing
// else lives in C.
#ifndef SWIFTLET_CKVM_H
#define SWIFTLET_CKVM_H

#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <stdint.h>
// Re-exported for Swift: Glibc's module map does not cover these headers.
#include <sys/epoll.h>
#include <sys/random.h>  // getrandom(2), for virtio-rng

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

// ---- tun/tap requests (on a /dev/net/tun descriptor) ----
/// Attach to (or create) an interface; the argument is a struct ifreq: use swl_tun_set_iff.
static const unsigned long SWL_TUNSETIFF = TUNSETIFF;
/// The IFF_* flags this kernel's tun driver supports (argument: unsigned int *).
static const unsigned long SWL_TUNGETFEATURES = TUNGETFEATURES;
/// Which offloads (TUN_F_*) the reader accepts in frames it reads (argument: the flags).
static const unsigned long SWL_TUNSETOFFLOAD = TUNSETOFFLOAD;
/// Size of the virtio-net header before every frame with IFF_VNET_HDR (argument: int *).
static const unsigned long SWL_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;

// ---- struct kvm_run offsets ----
// Swift reaches the members of kvm_run's anonymous union only through computed accessors that
// copy; the MMIO data bytes are read and written in place through this offset instead.
static const unsigned long SWL_KVM_RUN_MMIO_DATA_OFFSET = __builtin_offsetof(struct kvm_run, mmio.data);

// ---- ioctl wrappers ----
// Each returns what ioctl(2) returns; on -1 the caller reads errno. None retries on EINTR:
// for KVM_RUN an EINTR is meaningful (the vCPU was kicked), and the others never block.

/// ioctl(fd, request) with no argument.
int swl_ioctl_none(int fd, unsigned long request);
/// ioctl(fd, request, value) with an integer argument (KVM_CREATE_VCPU, KVM_SET_TSS_ADDR, ...).
int swl_ioctl_value(int fd, unsigned long request, unsigned long value);
/// ioctl(fd, request, pointer) with a pointer to a kernel struct.
int swl_ioctl_pointer(int fd, unsigned long request, void *argument);

// ---- eventfd helpers ----
/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK when nonblocking != 0). Returns the fd or -1.
int swl_eventfd_create(int nonblocking);
/// Adds 1 to the eventfd counter. Returns 0 or -1 (errno set).
int swl_eventfd_signal(int fd);
/// Reads and clears the counter into *value. Returns 0, or -1 (errno set; EAGAIN when empty).
int swl_eventfd_consume(int fd, uint64_t *value);

// ---- tun/tap and namespaces ----
/// TUNSETIFF on a /dev/net/tun descriptor: attaches it to the interface `name` (at most 15
/// bytes; the kernel creates a non-persistent interface if none has that name) with `flags`
/// (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, ...). On success copies the interface's name, NUL
/// terminated, into `actual_name` (16 bytes). Returns 0, or -1 (errno set).
int swl_tun_set_iff(int fd, const char *name, int flags, char *actual_name);
/// setns(2): moves the calling thread into the namespace `fd` refers to (`nstype` e.g.
/// CLONE_NEWNET = 0x40000000). The network-namespace tests open taps and packet sockets inside
/// a namespace of their own this way. Returns 0, or -1 (errno set).
int swl_setns(int fd, int nstype);

/// Opens a new pseudo-terminal: posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), grantpt, unlockpt,
/// and the slave's path into `path` (ptsname_r). Returns the master descriptor, or -1 (errno set).
/// Used by the tests that run swiftlet on a terminal.
int swl_open_pty(char *path, unsigned long length);

/// pidfd_open(2) (Linux 5.3+; glibc's wrapper is not visible to Swift): a descriptor for the
/// process `pid` that poll(2) reports readable once it has exited. Returns it, or -1 (errno
/// set). Used by the tests to wait for a child with a deadline instead of polling waitpid.
int swl_pidfd_open(int pid);

/// POSIX_SPAWN_SETSID (glibc 2.26+): the spawned child calls setsid(2) first, so opening a
/// terminal makes it the child's controlling terminal.
extern const short SWL_POSIX_SPAWN_SETSID;

#endif
