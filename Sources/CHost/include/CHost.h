// CHost: the small C layer under Swiftlet's host primitives (no KVM here).
//
// Swift cannot call the variadic ioctl(2) or expand the _IO/_IOR/_IOW/_IOWR macros that build
// request numbers, so this header exports the tun/tap request numbers Swiftlet uses as
// `static const unsigned long` and declares fixed-signature wrappers for ioctl(2), eventfd(2),
// the one ioctl whose argument is a `struct ifreq` (TUNSETIFF), setns(2) and the
// pseudo-terminal calls (not exported by Swift's Glibc module; the pty ones serve the terminal
// tests). The KVM request numbers are in CKVM, which builds on this module.
#ifndef SWIFTLET_CHOST_H
#define SWIFTLET_CHOST_H

#include <linux/if_tun.h>
#include <linux/ioctl.h>
#include <stdint.h>
// Re-exported for Swift: Glibc's module map does not cover these headers.
#include <sys/epoll.h>
#include <sys/random.h>  // getrandom(2), for virtio-rng
#include <sys/timerfd.h>  // timerfd_create(2), the event loop's retry timers (rate limits)

// Seccomp filters (Docs/SECCOMP.md): BPF constants, installing, the SIGSYS report, syscall numbers.
#include "CHostSeccomp.h"
#include "CHostSyscalls.h"

// ---- tun/tap requests (on a /dev/net/tun descriptor) ----
/// Attach to (or create) an interface; the argument is a struct ifreq: use swl_tun_set_iff.
static const unsigned long SWL_TUNSETIFF = TUNSETIFF;
/// The IFF_* flags this kernel's tun driver supports (argument: unsigned int *).
static const unsigned long SWL_TUNGETFEATURES = TUNGETFEATURES;
/// Which offloads (TUN_F_*) the reader accepts in frames it reads (argument: the flags).
static const unsigned long SWL_TUNSETOFFLOAD = TUNSETOFFLOAD;
/// Size of the virtio-net header before every frame with IFF_VNET_HDR (argument: int *).
static const unsigned long SWL_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;

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

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC and no peer address (glibc declares accept4
/// only with _GNU_SOURCE): the vsock host side's listener. Returns the descriptor, or -1 (errno set).
int swl_accept_nonblocking(int fd);

/// POSIX_SPAWN_SETSID (glibc 2.26+): the spawned child calls setsid(2) first, so opening a
/// terminal makes it the child's controlling terminal.
extern const short SWL_POSIX_SPAWN_SETSID;

#endif
