// Fixed-signature wrappers declared in include/CHost.h.
#define _GNU_SOURCE  // setns(2), ptsname_r(3), POSIX_SPAWN_SETSID, accept4(2)
#include "CHost.h"

#include <errno.h>
#include <net/if.h>
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int swl_ioctl_none(int fd, unsigned long request) { return ioctl(fd, request, 0); }

int swl_ioctl_value(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}

int swl_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int swl_eventfd_create(int nonblocking) {
    return eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

int swl_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(fd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof one ? 0 : -1;
}

int swl_eventfd_consume(int fd, uint64_t *value) {
    ssize_t n;
    do {
        n = read(fd, value, sizeof *value);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof *value ? 0 : -1;
}

int swl_tun_set_iff(int fd, const char *name, int flags, char *actual_name) {
    struct ifreq request;
    memset(&request, 0, sizeof request);
    size_t length = strlen(name);
    if (length >= IFNAMSIZ) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(request.ifr_name, name, length);
    request.ifr_flags = (short)flags;
    if (ioctl(fd, TUNSETIFF, &request) != 0)
        return -1;
    memcpy(actual_name, request.ifr_name, IFNAMSIZ);
    actual_name[IFNAMSIZ - 1] = 0;
    return 0;
}

int swl_setns(int fd, int nstype) { return setns(fd, nstype); }

int swl_open_pty(char *path, unsigned long length) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    int error = 0;
    if (grantpt(master) != 0 || unlockpt(master) != 0) error = errno;
    else error = ptsname_r(master, path, length);
    if (error != 0) {
        close(master);
        errno = error;
        return -1;
    }
    return master;
}

int swl_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int swl_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

const short SWL_POSIX_SPAWN_SETSID = POSIX_SPAWN_SETSID;
