// Installing seccomp filters and reporting refused calls (include/CHostSeccomp.h).
#define _GNU_SOURCE
#include "CHostSeccomp.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

const int SWL_SECCOMP_EXIT_STATUS = 128 + SIGSYS;

/// The installing thread's kind, for the handler's message.
static _Thread_local const char *thread_kind = 0;

/// The terminal to restore: written before filtered threads start, read in the handler.
static int terminal_fd = -1;
static struct termios terminal_mode;
static atomic_int terminal_set = 0;

int swl_seccomp_install(const struct sock_filter *program, unsigned short count, const char *kind) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    struct sock_fprog prog = {.len = count, .filter = (struct sock_filter *)program};
    thread_kind = kind;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
        thread_kind = 0;
        return -1;
    }
    return 0;
}

int swl_seccomp_check_available(void) {
    uint32_t action = SECCOMP_RET_TRAP;
    return (int)syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action);
}

void swl_seccomp_set_terminal(int fd, const struct termios *mode) {
    if (mode == 0) {
        atomic_store(&terminal_set, 0);
        return;
    }
    atomic_store(&terminal_set, 0);
    terminal_fd = fd;
    terminal_mode = *mode;
    atomic_store(&terminal_set, 1);
}

long swl_syscall0(long number) { return syscall(number); }

// ---- the handler: async-signal-safe (write, tcsetattr = one ioctl, exit_group) ----

static size_t append(char *buffer, size_t used, size_t size, const char *text) {
    while (*text && used < size) buffer[used++] = *text++;
    return used;
}

static size_t append_number(char *buffer, size_t used, size_t size, unsigned long value) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0 && used < size) buffer[used++] = digits[--count];
    return used;
}

static void on_sigsys(int signal, siginfo_t *info, void *context) {
    (void)signal;
    (void)context;
    char line[192];
    size_t used = 0;
    const char *kind = thread_kind ? thread_kind : "unfiltered";
    int number = info->si_syscall;
    const char *name = swl_syscall_name(number & ~(long)SWL_X32_SYSCALL_BIT);
    used = append(line, used, sizeof line, "swiftlet: seccomp: ");
    used = append(line, used, sizeof line, kind);
    used = append(line, used, sizeof line, " thread made a forbidden system call ");
    used = append_number(line, used, sizeof line, (unsigned long)(unsigned int)number);
    used = append(line, used, sizeof line, " (");
    if (number & SWL_X32_SYSCALL_BIT) used = append(line, used, sizeof line, "x32 ");
    used = append(line, used, sizeof line, name ? name : "unknown");
    used = append(line, used, sizeof line, ")\n");
    // The guest's output was raw: start the message on a line of its own.
    if (atomic_load(&terminal_set)) {
        tcsetattr(terminal_fd, TCSANOW, &terminal_mode);
        (void)!write(STDERR_FILENO, "\r\n", 2);
    }
    size_t offset = 0;
    while (offset < used) {
        ssize_t written = write(STDERR_FILENO, line + offset, used - offset);
        if (written <= 0) {
            if (written < 0 && errno == EINTR) continue;
            break;
        }
        offset += (size_t)written;
    }
    syscall(SYS_exit_group, SWL_SECCOMP_EXIT_STATUS);
    for (;;) {}
}

int swl_seccomp_install_trap_handler(void) {
    static atomic_int installed = 0;
    if (atomic_exchange(&installed, 1)) return 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsys;
    action.sa_flags = SA_SIGINFO;
    sigfillset(&action.sa_mask);
    if (sigaction(SIGSYS, &action, 0) != 0) {
        atomic_store(&installed, 0);
        return -1;
    }
    return 0;
}
