// CHost's seccomp layer (Docs/SECCOMP.md): the constants a classic-BPF filter program is built
// from, installing a program on the calling thread, and the SIGSYS handler that reports a
// refused call. The programs themselves are generated in Swift (SwiftletHost/Seccomp.swift)
// from the allowlists in Swiftlet/Machine/SeccompAllowlists.swift.
#ifndef SWIFTLET_CHOST_SECCOMP_H
#define SWIFTLET_CHOST_SECCOMP_H

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>

// ---- what a filter reads and returns ----
/// The architecture the filters are written for (struct seccomp_data.arch): AUDIT_ARCH_X86_64.
static const uint32_t SWL_SECCOMP_AUDIT_ARCH = AUDIT_ARCH_X86_64;
/// Bit 30 of the system-call number marks the x32 ABI on x86_64; the filters refuse it.
static const uint32_t SWL_X32_SYSCALL_BIT = 0x40000000u;
/// Let the call run.
static const uint32_t SWL_SECCOMP_RET_ALLOW = SECCOMP_RET_ALLOW;
/// Do not run the call; send the thread SIGSYS (si_syscall = the number).
static const uint32_t SWL_SECCOMP_RET_TRAP = SECCOMP_RET_TRAP;
/// Do not run the call; kill the whole process as by SIGSYS.
static const uint32_t SWL_SECCOMP_RET_KILL_PROCESS = SECCOMP_RET_KILL_PROCESS;
/// Do not run the call; it fails with the errno in the low 16 bits.
static const uint32_t SWL_SECCOMP_RET_ERRNO = SECCOMP_RET_ERRNO;
/// BPF_MAXINSNS: the most instructions a classic BPF program may have.
static const unsigned int SWL_BPF_MAXINSNS = BPF_MAXINSNS;

// The instruction codes the Swift compiler emits (BPF_* of <linux/filter.h> combined).
/// A = 32-bit word at offset k of struct seccomp_data.
static const uint16_t SWL_BPF_LD_W_ABS = BPF_LD | BPF_W | BPF_ABS;
/// A &= k.
static const uint16_t SWL_BPF_ALU_AND_K = BPF_ALU | BPF_AND | BPF_K;
/// Jump by jt if A == k, else by jf.
static const uint16_t SWL_BPF_JMP_JEQ_K = BPF_JMP | BPF_JEQ | BPF_K;
/// Jump by jt if A >= k (unsigned), else by jf.
static const uint16_t SWL_BPF_JMP_JGE_K = BPF_JMP | BPF_JGE | BPF_K;
/// Jump by k unconditionally.
static const uint16_t SWL_BPF_JMP_JA = BPF_JMP | BPF_JA;
/// Return k (an action).
static const uint16_t SWL_BPF_RET_K = BPF_RET | BPF_K;

/// offsetof(struct seccomp_data, nr).
static const uint32_t SWL_SECCOMP_DATA_NR = 0;
/// offsetof(struct seccomp_data, arch).
static const uint32_t SWL_SECCOMP_DATA_ARCH = 4;
/// offsetof(struct seccomp_data, args): six 64-bit arguments, little-endian (low word first).
static const uint32_t SWL_SECCOMP_DATA_ARGS = 16;

// ---- argument values the allowlists name ----
/// tcsetattr(3)'s requests (TCSANOW, TCSADRAIN, TCSAFLUSH): the terminal mode restores.
static const uint32_t SWL_TCSETS = TCSETS;
/// See SWL_TCSETS.
static const uint32_t SWL_TCSETSW = TCSETSW;
/// See SWL_TCSETS.
static const uint32_t SWL_TCSETSF = TCSETSF;
/// TCGETS: glibc's tcsetattr reads the mode back after setting it.
static const uint32_t SWL_TCGETS = TCGETS;
/// PROT_EXEC: no filtered thread maps or makes memory executable.
static const uint64_t SWL_PROT_EXEC = PROT_EXEC;

// ---- installing ----
/// Sets no_new_privs on the calling thread (prctl PR_SET_NO_NEW_PRIVS), then installs
/// `program` (`count` instructions) as a seccomp filter of the calling thread only
/// (seccomp(SECCOMP_SET_MODE_FILTER, 0, ...)). `thread_kind` (a string that lives as long as
/// the process, e.g. a literal) is what the SIGSYS handler names when this thread makes a
/// refused call. Returns 0, or -1 (errno set).
int swl_seccomp_install(const struct sock_filter *program, unsigned short count, const char *thread_kind);

/// Whether this kernel can install filters whose default action is SECCOMP_RET_TRAP
/// (seccomp(SECCOMP_GET_ACTION_AVAIL)). Returns 0, or -1 (errno set: EINVAL without seccomp
/// filters, EOPNOTSUPP for an unknown action).
int swl_seccomp_check_available(void);

// ---- reporting a refused call ----
/// The process's exit status after a refused call: 128 + SIGSYS (159), as a shell reports a
/// process killed by SIGSYS.
extern const int SWL_SECCOMP_EXIT_STATUS;

/// Installs the SIGSYS handler (once per process; later calls do nothing). When a filter traps
/// a call, the handler writes, with write(2) only,
///   swiftlet: seccomp: <thread kind> thread made a forbidden system call <number> (<name>)
/// to stderr, restores the terminal mode registered with swl_seccomp_set_terminal (one
/// tcsetattr, which every filter allows for that descriptor), and ends the process with
/// SWL_SECCOMP_EXIT_STATUS (exit_group). Returns 0, or -1 (errno set).
int swl_seccomp_install_trap_handler(void);

/// Registers the terminal mode the SIGSYS handler restores on `fd` (a copy is kept), or, with
/// `mode` NULL, forgets it. Call it before the threads whose refused calls it covers start (raw
/// mode is entered before any filtered thread runs).
void swl_seccomp_set_terminal(int fd, const struct termios *mode);

/// The name of system call `number` on this architecture ("read"), or NULL if unknown.
const char *swl_syscall_name(long number);

/// Makes system call `number` with no arguments (syscall(2)): the tests' forbidden call.
long swl_syscall0(long number);

#endif
