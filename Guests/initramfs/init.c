/*
 * Swiftlet guest init: /init of the guest initramfs (PID 1).
 *
 * Built statically by Guests/initramfs/build-initramfs.sh, by default against
 * musl (~50 KB; glibc works too, ~690 KB):
 *   musl-gcc -static -Os -s -Wall -Wextra -o init init.c
 *
 * What it does, in this order:
 *  1. Boot timer: ioperm(0x440) + outb(123, 0x440).  Swiftlet's boot-timer
 *     device records the time since the VMM started when it sees this write,
 *     i.e. "the guest reached user space".  Done before anything else.
 *  2. Makes sure fds 0/1/2 are the console (the kernel normally opens
 *     /dev/console for us; the initramfs ships that node).
 *  3. Mounts proc on /proc, sysfs on /sys and devtmpfs on /dev, reads the
 *     kernel command line and (outside bundle mode, below) prints the
 *     banner line "Swiftlet guest init: ready".
 *  4. Runs the workload (see "Command selection") as a child in its own
 *     session with the console as controlling terminal, and reaps every
 *     orphan that gets re-parented to PID 1 while waiting for it.
 *  5. When the workload exits: prints its exit status, terminates what is
 *     left (SIGTERM, then SIGKILL), syncs, reports the status to the VMM and
 *     ends the VM (see "Exit status" and "Ending the VM").
 *
 * Command selection (first match wins):
 *  a. Words after "--" on the kernel command line.  The kernel passes them to
 *     init as argv[1..]; init runs them directly (execvp, PATH lookup), e.g.
 *         console=ttyS0 ... -- /bin/echo hello world
 *     Words before "--" that the kernel does not recognise (and that contain
 *     no '.' or '=') are also put into argv by the kernel, in front of these;
 *     init ignores them: it takes only as many trailing argv entries as there
 *     are words after "--" in /proc/cmdline.
 *  b. swiftlet.cmd=<shell command>, run as `/bin/sh -c '<shell command>'`.
 *     The kernel keeps double-quoted text together, so spaces work:
 *         swiftlet.cmd="mount /dev/vda /mnt && ls /mnt"
 *     (Inside the value use single quotes only; double quotes just group.)
 *  c. Otherwise an interactive /bin/sh on the console.
 *
 * Bundle mode (`swiftlet run`, Docs/RUN.md): the word swiftlet.bundle=1 on
 * the kernel command line replaces the command selection above.  Init then
 *  - reads the process spec from the second disk, /dev/vdb (format below),
 *  - mounts the root disk, /dev/vda (ext4), on /newroot, read-only when the
 *    spec says so, and the spec's mounts (proc, sysfs, tmpfs, devtmpfs) under
 *    it; a tmpfs on /dev gets the default device nodes a container runtime
 *    creates (null, zero, full, random, urandom, tty, console, ptmx link),
 *  - sets the hostname, chroots into /newroot,
 *  - starts the process: its own session (the console as its controlling
 *    terminal when the spec's terminal is 1; otherwise the console's output
 *    processing is turned off so the bytes reach the host unchanged), the
 *    rlimits, the capability bounding set, no_new_privs, gid then uid, cwd,
 *    and execs args with exactly the spec's environment (args[0] is looked
 *    up in that environment's PATH),
 *  - reports its status through the exit-status port as below and ends the
 *    VM.  Nothing is printed unless something fails ("swiftlet-init: ...",
 *    then status 1 is reported).
 *
 * The process spec (written by SwiftletBundle's ProcessSpec, one file per
 * run): the ASCII header "swiftlet-spec 1\n", the body's length in bytes as
 * a decimal line, then the body: records KEY NUL VALUE NUL, in any order:
 *    arg       one per argument, in order (at least one)
 *    env       NAME=VALUE, one per variable
 *    cwd       absolute directory
 *    uid, gid  decimal
 *    hostname  (absent: unchanged)
 *    terminal  0 or 1
 *    rootro    0 or 1: mount the root read-only
 *    nonewprivs 0 or 1
 *    capbound  comma-separated capability numbers to keep in the bounding
 *              set (absent: unchanged); every other one is dropped
 *    rlimit    RESOURCE LF SOFT LF HARD (decimal; 18446744073709551615 is
 *              unlimited)
 *    mount     TYPE LF SOURCE LF DESTINATION LF FLAGS LF DATA (FLAGS: the
 *              decimal MS_* bits; DATA: the filesystem's own options),
 *              mounted in order
 * The rest of the disk after the body is padding.
 *
 * Exit status:
 *  Init writes the workload's status, one byte, to Swiftlet's exit-status
 *  port (0x441, X86Layout.exitStatusPort): the exit status for a command that
 *  exited, 128 + N for one killed by signal N (as a shell reports it), 127
 *  when it could not be executed, 1 when init could not start it at all.
 *  Swiftlet then exits with that status when the VM resets.  Other VMMs
 *  ignore the write (an unclaimed port).
 *
 * Ending the VM:
 *  With ACPI (/sys/firmware/acpi exists) init calls reboot(RB_POWER_OFF) and,
 *  should that return, reboot(RB_AUTOBOOT).  Without ACPI -- Swiftlet's
 *  kernel config has none -- Linux has no power-off method and
 *  RB_POWER_OFF degrades to a halt: the vCPU stops in `hlt` with interrupts
 *  off and the VMM never hears of it.  So init uses RB_AUTOBOOT directly;
 *  the kernel then resets the machine through the keyboard controller
 *  (outb 0xFE to port 0x64, the default, or `reboot=k`) or a triple fault
 *  (`reboot=t`), and the VMM treats that reset as "guest powered off".
 *
 * Every failure is reported on the console, prefixed "swiftlet-init:".
 *
 * Testing outside a VM: the port write happens only in PID 1 without
 * SWIFTLET_INIT_TEST=1 in the environment (so a test in a PID namespace does
 * not poke the host's ports).  When it is not PID 1, init also skips mounting
 * and, instead of ending the machine, exits with the workload's status.
 * In test mode SWIFTLET_INIT_CMDLINE, if set, replaces /proc/cmdline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_VALUE 123
#define EXIT_STATUS_PORT 0x441
#define BANNER "Swiftlet guest init: ready\n"
#define DEFAULT_PATH "/bin:/sbin:/usr/bin:/usr/sbin"

static int is_pid1;
/* Bundle mode prints nothing but failures: the output is the process's. */
static int quiet;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "swiftlet-init: ");
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    /* stderr may not be open yet; fall back to stdout. */
    if (write(STDERR_FILENO, buf, (size_t)n) < 0)
        (void)!write(STDOUT_FILENO, buf, (size_t)n);
}

static void write_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        s += w;
        len -= (size_t)w;
    }
}

/* mkdir that is happy when the directory already exists. */
static void ensure_dir(const char *path)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        say("mkdir %s failed: %s", path, strerror(errno));
}

static void mount_fs(const char *source, const char *target, const char *type,
                     unsigned long flags, const char *data)
{
    ensure_dir(target);
    if (mount(source, target, type, flags, data) < 0) {
        if (errno == EBUSY)
            return; /* already mounted (e.g. by the kernel) */
        say("mounting %s on %s failed: %s", type, target, strerror(errno));
    }
}

/* Make fds 0, 1 and 2 refer to the console if they are not open. */
static void ensure_console(void)
{
    if (fcntl(STDIN_FILENO, F_GETFD) >= 0 && fcntl(STDOUT_FILENO, F_GETFD) >= 0 &&
        fcntl(STDERR_FILENO, F_GETFD) >= 0)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0 && errno == ENOENT && is_pid1) {
        /* No node in the initramfs: get one from devtmpfs. */
        mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
        fd = open("/dev/console", O_RDWR | O_NOCTTY);
    }
    if (fd < 0)
        return; /* nothing we can print to; carry on regardless */
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

/* ------------------------------------------------------------------ */
/* Kernel command line                                                 */

/* Reads /proc/cmdline into a NUL-terminated heap buffer, or NULL. */
static char *read_cmdline(void)
{
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("cannot open /proc/cmdline: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (!buf) {
        say("out of memory reading /proc/cmdline");
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/*
 * Splits the command line into words the way the kernel does (whitespace
 * outside double quotes separates words).  Words are NUL-terminated in place;
 * quote characters are kept.  Returns the number of words stored.
 */
static int split_words(char *s, char **words, int max)
{
    int n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s || n == max)
            return n;
        words[n++] = s;
        int in_quote = 0;
        while (*s && (in_quote || !(*s == ' ' || *s == '\t' || *s == '\n'))) {
            if (*s == '"')
                in_quote = !in_quote;
            s++;
        }
        if (*s)
            *s++ = '\0';
    }
}

/* Removes every double quote from s in place (they only group words). */
static void strip_quotes(char *s)
{
    char *d = s;
    for (; *s; s++)
        if (*s != '"')
            *d++ = *s;
    *d = '\0';
}

#define MAX_WORDS 1024

/*
 * Chooses the command: fills cmd[] (NULL-terminated) and returns a short
 * description.  argv/argc are init's own arguments.
 */
static const char *choose_command(int argc, char **argv, char **cmd, char *cmdline)
{
    static char *words[MAX_WORDS];
    int nwords = cmdline ? split_words(cmdline, words, MAX_WORDS) : 0;
    int dashes = -1;
    char *shell_cmd = NULL;

    for (int i = 0; i < nwords; i++) {
        if (strcmp(words[i], "--") == 0) {
            dashes = i;
            break;
        }
        if (strncmp(words[i], "swiftlet.cmd=", 13) == 0) {
            shell_cmd = words[i] + 13;
            strip_quotes(shell_cmd);
        }
    }

    int after = dashes >= 0 ? nwords - dashes - 1 : 0;
    int have = argc - 1;
    if (!cmdline)
        after = have; /* no /proc: trust argv */
    if (after > have) {
        say("kernel command line has %d word(s) after \"--\" but init got %d argument(s);"
            " using the arguments", after, have);
        after = have;
    }
    if (have > after)
        say("ignoring %d unrecognised kernel parameter(s) passed to init, first: \"%s\""
            " (put the command after \"--\")", have - after, argv[1]);

    if (after > 0) {
        if (shell_cmd)
            say("both \"--\" arguments and swiftlet.cmd= given; running the \"--\" arguments");
        for (int i = 0; i < after; i++)
            cmd[i] = argv[argc - after + i];
        cmd[after] = NULL;
        return "kernel command line after \"--\"";
    }
    if (shell_cmd && *shell_cmd) {
        cmd[0] = "/bin/sh";
        cmd[1] = "-c";
        cmd[2] = shell_cmd;
        cmd[3] = NULL;
        return "swiftlet.cmd=";
    }
    cmd[0] = "/bin/sh";
    cmd[1] = NULL;
    return "interactive shell";
}

/* ------------------------------------------------------------------ */
/* Process handling                                                    */

static pid_t spawn(char **cmd)
{
    pid_t pid = fork();
    if (pid < 0) {
        say("fork failed: %s", strerror(errno));
        return -1;
    }
    if (pid > 0)
        return pid;

    /* Child: own session, console as controlling terminal (job control). */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    if (setsid() < 0)
        say("setsid failed: %s", strerror(errno));
    if (isatty(STDIN_FILENO) && ioctl(STDIN_FILENO, TIOCSCTTY, 0) < 0 && is_pid1)
        say("cannot make the console the controlling terminal: %s", strerror(errno));
    execvp(cmd[0], cmd);
    say("cannot execute %s: %s", cmd[0], strerror(errno));
    _exit(127);
}

static void describe_status(const char *what, int status)
{
    if (WIFEXITED(status))
        say("%s exited with status %d", what, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        say("%s killed by signal %d (%s)", what, WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        say("%s ended, wait status 0x%x", what, status);
}

/* Waits for pid, reaping any other child (orphans) meanwhile. */
static int wait_for(pid_t pid)
{
    for (;;) {
        int status;
        pid_t got = waitpid(-1, &status, 0);
        if (got == pid)
            return status;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            say("waitpid failed: %s", strerror(errno));
            return -1;
        }
        /* an orphan re-parented to init: reaped, nothing else to do */
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Reaps exited children for up to ms milliseconds; true when none are left. */
static int reap_all(long ms)
{
    for (long waited = 0;; waited += 10) {
        pid_t got;
        while ((got = waitpid(-1, NULL, WNOHANG)) > 0)
            ;
        if (got < 0 && errno == ECHILD)
            return 1;
        if (waited >= ms)
            return 0;
        sleep_ms(10);
    }
}

/* Stops everything that is still running (as PID 1, kill(-1) spares us). */
static void terminate_all(void)
{
    if (!is_pid1)
        return;
    if (kill(-1, SIGTERM) < 0 && errno != ESRCH)
        say("kill(-1, SIGTERM) failed: %s", strerror(errno));
    if (reap_all(1000))
        return;
    if (quiet)
        return (void)kill(-1, SIGKILL), (void)reap_all(1000);
    say("processes still running after SIGTERM; sending SIGKILL");
    kill(-1, SIGKILL);
    reap_all(1000);
}

static void end_vm(void)
{
    sync();
    if (access("/sys/firmware/acpi", F_OK) == 0) {
        say("powering off");
        reboot(RB_POWER_OFF);
        say("reboot(RB_POWER_OFF) failed: %s; trying a reset", strerror(errno));
    } else if (!quiet) {
        say("powering off (no ACPI: via machine reset)");
    }
    reboot(RB_AUTOBOOT);
    say("reboot(RB_AUTOBOOT) failed: %s; idling forever", strerror(errno));
    for (;;) {
        pause();
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}

/* ------------------------------------------------------------------ */
/* Bundle mode (swiftlet.bundle=1)                                     */

#define SPEC_DISK "/dev/vdb"
#define ROOT_DISK "/dev/vda"
#define NEW_ROOT "/newroot"
#define SPEC_MAGIC "swiftlet-spec 1\n"
#define SPEC_MAX (1 << 20)
#define MAX_ITEMS 4096

struct spec_mount {
    char *type, *source, *destination, *data;
    unsigned long flags;
};

struct spec_rlimit {
    int resource;
    struct rlimit limit;
};

struct spec {
    char *args[MAX_ITEMS + 1];
    int nargs;
    char *env[MAX_ITEMS + 1];
    int nenv;
    const char *cwd, *hostname, *capbound;
    uid_t uid;
    gid_t gid;
    int terminal, rootro, nonewprivs;
    struct spec_mount mounts[64];
    int nmounts;
    struct spec_rlimit rlimits[32];
    int nrlimits;
};

/* Reads all of fd into buf (at most len bytes); returns the count or -1. */
static ssize_t read_full(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* Splits s at the next '\n' (replaced by NUL); returns the rest or NULL. */
static char *next_line(char *s)
{
    char *nl = strchr(s, '\n');
    if (!nl)
        return NULL;
    *nl = '\0';
    return nl + 1;
}

static int parse_number(const char *text, unsigned long long *value)
{
    char *end;
    errno = 0;
    *value = strtoull(text, &end, 10);
    return errno == 0 && end != text && *end == '\0';
}

/* Reads and parses the spec disk; 0 on success (failures are reported). */
static int read_spec(struct spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->cwd = "/";
    int fd = open(SPEC_DISK, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("cannot open the process spec disk %s: %s", SPEC_DISK, strerror(errno));
        return -1;
    }
    char head[64];
    ssize_t n = read_full(fd, head, sizeof head - 1);
    if (n < 0) {
        say("cannot read %s: %s", SPEC_DISK, strerror(errno));
        close(fd);
        return -1;
    }
    head[n] = '\0';
    size_t magic = strlen(SPEC_MAGIC);
    char *lenline = head + magic, *end;
    unsigned long long body_len = 0;
    if ((size_t)n < magic || memcmp(head, SPEC_MAGIC, magic) != 0 ||
        !(end = strchr(lenline, '\n'))) {
        say("%s holds no process spec (no \"swiftlet-spec 1\" header)", SPEC_DISK);
        close(fd);
        return -1;
    }
    *end = '\0';
    if (!parse_number(lenline, &body_len) || body_len > SPEC_MAX) {
        say("%s: bad process spec length \"%s\"", SPEC_DISK, lenline);
        close(fd);
        return -1;
    }
    size_t offset = (size_t)(end + 1 - head);
    char *body = malloc((size_t)body_len + 1);
    if (!body || lseek(fd, (off_t)offset, SEEK_SET) < 0 ||
        read_full(fd, body, (size_t)body_len) != (ssize_t)body_len) {
        say("cannot read the process spec body (%llu bytes) from %s", body_len, SPEC_DISK);
        close(fd);
        return -1;
    }
    close(fd);
    body[body_len] = '\0';

    char *p = body, *limit = body + body_len;
    while (p < limit) {
        char *key = p;
        p += strlen(p) + 1;
        if (p >= limit) {
            say("process spec: key \"%s\" has no value", key);
            return -1;
        }
        char *value = p;
        p += strlen(p) + 1;
        unsigned long long number;
        if (strcmp(key, "arg") == 0 && spec->nargs < MAX_ITEMS) {
            spec->args[spec->nargs++] = value;
        } else if (strcmp(key, "env") == 0 && spec->nenv < MAX_ITEMS) {
            spec->env[spec->nenv++] = value;
        } else if (strcmp(key, "cwd") == 0) {
            spec->cwd = value;
        } else if (strcmp(key, "hostname") == 0) {
            spec->hostname = value;
        } else if (strcmp(key, "capbound") == 0) {
            spec->capbound = value;
        } else if (strcmp(key, "uid") == 0 && parse_number(value, &number)) {
            spec->uid = (uid_t)number;
        } else if (strcmp(key, "gid") == 0 && parse_number(value, &number)) {
            spec->gid = (gid_t)number;
        } else if (strcmp(key, "terminal") == 0) {
            spec->terminal = strcmp(value, "1") == 0;
        } else if (strcmp(key, "rootro") == 0) {
            spec->rootro = strcmp(value, "1") == 0;
        } else if (strcmp(key, "nonewprivs") == 0) {
            spec->nonewprivs = strcmp(value, "1") == 0;
        } else if (strcmp(key, "rlimit") == 0 && spec->nrlimits < 32) {
            struct spec_rlimit *r = &spec->rlimits[spec->nrlimits];
            char *soft = next_line(value), *hard = soft ? next_line(soft) : NULL;
            unsigned long long resource, s, h;
            if (!hard || !parse_number(value, &resource) || !parse_number(soft, &s) ||
                !parse_number(hard, &h)) {
                say("process spec: malformed rlimit record");
                return -1;
            }
            r->resource = (int)resource;
            r->limit.rlim_cur = (rlim_t)s;
            r->limit.rlim_max = (rlim_t)h;
            spec->nrlimits++;
        } else if (strcmp(key, "mount") == 0 && spec->nmounts < 64) {
            struct spec_mount *m = &spec->mounts[spec->nmounts];
            m->type = value;
            m->source = next_line(m->type);
            m->destination = m->source ? next_line(m->source) : NULL;
            char *flags = m->destination ? next_line(m->destination) : NULL;
            m->data = flags ? next_line(flags) : NULL;
            if (!m->data || !parse_number(flags, &number)) {
                say("process spec: malformed mount record");
                return -1;
            }
            m->flags = (unsigned long)number;
            spec->nmounts++;
        } else {
            say("process spec: unknown or malformed record \"%s\"", key);
            return -1;
        }
    }
    if (spec->nargs == 0) {
        say("process spec has no arguments");
        return -1;
    }
    return 0;
}

/* mkdir -p of path (absolute); 0 when it exists afterwards. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                return -1;
            *p = saved;
            if (saved == '\0')
                return 0;
        }
    }
}

/* The device nodes a container runtime puts in a tmpfs /dev. */
static void make_default_devices(void)
{
#define DEV NEW_ROOT "/dev"
    static const struct { const char *name; unsigned major, minor; mode_t mode; } nodes[] = {
        { "null", 1, 3, 0666 }, { "zero", 1, 5, 0666 }, { "full", 1, 7, 0666 },
        { "random", 1, 8, 0666 }, { "urandom", 1, 9, 0666 }, { "tty", 5, 0, 0666 },
        { "console", 5, 1, 0620 },
    };
    char path[64];
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        snprintf(path, sizeof path, DEV "/%s", nodes[i].name);
        if (mknod(path, S_IFCHR | nodes[i].mode, makedev(nodes[i].major, nodes[i].minor)) < 0 &&
            errno != EEXIST)
            say("mknod %s failed: %s", path, strerror(errno));
        else
            chmod(path, nodes[i].mode);
    }
    (void)!symlink("pts/ptmx", DEV "/ptmx");
    (void)!symlink("/proc/self/fd", DEV "/fd");
#undef DEV
}

/* Mounts the root disk and the spec's mounts and enters the new root. */
static int enter_root(const struct spec *spec)
{
    ensure_dir(NEW_ROOT);
    if (mount(ROOT_DISK, NEW_ROOT, "ext4", spec->rootro ? MS_RDONLY : 0, NULL) < 0) {
        say("cannot mount the root disk %s (ext4%s) on %s: %s", ROOT_DISK,
            spec->rootro ? ", read-only" : "", NEW_ROOT, strerror(errno));
        return -1;
    }
    char target[4096];
    for (int i = 0; i < spec->nmounts; i++) {
        const struct spec_mount *m = &spec->mounts[i];
        if (snprintf(target, sizeof target, "%s%s", NEW_ROOT, m->destination) >= (int)sizeof target)
            return say("mount destination too long: %s", m->destination), -1;
        if (make_dirs(target) < 0) {
            say("cannot create the mount point %s: %s", m->destination, strerror(errno));
            return -1;
        }
        if (mount(m->source, target, m->type, m->flags, *m->data ? m->data : NULL) < 0) {
            say("cannot mount %s (%s) on %s: %s", m->source, m->type, m->destination,
                strerror(errno));
            return -1;
        }
        if (strcmp(m->destination, "/dev") == 0 && strcmp(m->type, "tmpfs") == 0)
            make_default_devices();
    }
    if (spec->hostname && sethostname(spec->hostname, strlen(spec->hostname)) < 0) {
        say("sethostname %s failed: %s", spec->hostname, strerror(errno));
        return -1;
    }
    if (chdir(NEW_ROOT) < 0 || chroot(".") < 0 || chdir("/") < 0) {
        say("cannot enter the new root: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Keeps only the capabilities listed in spec->capbound in the bounding set. */
static int drop_capabilities(const char *keep)
{
    int last = 0;
    while (prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0)
        last++;
    for (int cap = 0; cap <= last; cap++) {
        int kept = 0;
        for (const char *p = keep; *p;) {
            char *end;
            long n = strtol(p, &end, 10);
            if (end == p)
                break;
            if (n == cap)
                kept = 1;
            p = *end == ',' ? end + 1 : end;
        }
        if (!kept && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            say("dropping capability %d failed: %s", cap, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* The child: process attributes, then exec.  Never returns. */
static void exec_process(const struct spec *spec)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    if (setsid() < 0)
        say("setsid failed: %s", strerror(errno));
    if (spec->terminal && ioctl(STDIN_FILENO, TIOCSCTTY, 0) < 0) {
        say("cannot make the console the controlling terminal: %s", strerror(errno));
        _exit(1);
    }
    for (int i = 0; i < spec->nrlimits; i++)
        if (setrlimit(spec->rlimits[i].resource, &spec->rlimits[i].limit) < 0) {
            say("setrlimit %d failed: %s", spec->rlimits[i].resource, strerror(errno));
            _exit(1);
        }
    if (spec->capbound && drop_capabilities(spec->capbound) < 0)
        _exit(1);
    if (setgroups(0, NULL) < 0 || setgid(spec->gid) < 0 || setuid(spec->uid) < 0) {
        say("cannot become uid %u gid %u: %s", (unsigned)spec->uid, (unsigned)spec->gid,
            strerror(errno));
        _exit(1);
    }
    if (spec->nonewprivs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        say("PR_SET_NO_NEW_PRIVS failed: %s", strerror(errno));
        _exit(1);
    }
    if (chdir(spec->cwd) < 0) {
        say("cannot change to the working directory %s: %s", spec->cwd, strerror(errno));
        _exit(1);
    }
    /* execvp looks args[0] up in the PATH of the environment it runs in. */
    clearenv();
    for (int i = 0; i < spec->nenv; i++)
        putenv(spec->env[i]);
    char **args = (char **)spec->args;
    execvp(args[0], args);
    say("cannot execute %s: %s", args[0], strerror(errno));
    _exit(127);
}

/* /proc/sys/kernel/printk of the initramfs's /proc, opened before the chroot. */
static int printk_fd = -1;

/* Keeps the kernel's "reboot: Restarting system" off the process's output. */
static void silence_console(void)
{
    if (printk_fd >= 0)
        (void)!write(printk_fd, "0\n", 2);
}

/* Runs the bundle's process; returns the status to report. */
static int run_bundle(void)
{
    static struct spec spec;
    printk_fd = open("/proc/sys/kernel/printk", O_WRONLY | O_CLOEXEC);
    if (read_spec(&spec) < 0 || enter_root(&spec) < 0)
        return 1;
    if (!spec.terminal && isatty(STDOUT_FILENO)) {
        /* No terminal asked for: the process's bytes go out as they are (no CR added). */
        struct termios t;
        if (tcgetattr(STDOUT_FILENO, &t) == 0) {
            t.c_oflag &= ~(tcflag_t)OPOST;
            t.c_lflag &= ~(tcflag_t)(ECHO | ICANON);
            tcsetattr(STDOUT_FILENO, TCSANOW, &t);
        }
    }
    pid_t pid = fork();
    if (pid < 0) {
        say("fork failed: %s", strerror(errno));
        return 1;
    }
    if (pid == 0)
        exec_process(&spec);
    int status = wait_for(pid);
    return status == -1 ? 1 : WIFEXITED(status) ? WEXITSTATUS(status)
         : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
}

/* Whether the command line holds the bundle-mode word. */
static int bundle_mode(const char *cmdline)
{
    static const char word[] = "swiftlet.bundle=1";
    for (const char *p = cmdline; p && (p = strstr(p, word)); p += sizeof word - 1) {
        int starts = p == cmdline || p[-1] == ' ';
        char after = p[sizeof word - 1];
        if (starts && (after == '\0' || after == ' ' || after == '\n'))
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    is_pid1 = getpid() == 1;
    const char *test = getenv("SWIFTLET_INIT_TEST");
    int test_mode = test && strcmp(test, "1") == 0;

    /* 1. Boot timer, first thing.  Errors are reported once we can print. */
    /* The boot-timer and exit-status ports are adjacent: one ioperm covers both. */
    int timer_errno = 0, ports = 0;
    if (is_pid1 && !test_mode) {
        if (ioperm(BOOT_TIMER_PORT, EXIT_STATUS_PORT - BOOT_TIMER_PORT + 1, 1) == 0) {
            ports = 1;
            outb(BOOT_TIMER_VALUE, BOOT_TIMER_PORT);
        } else {
            timer_errno = errno;
        }
    }

    /* 2. Console; 3. filesystems (the banner waits for the command line: bundle mode has none). */
    ensure_console();
    if (is_pid1) {
        mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    }
    char *cmdline;
    const char *fake = test_mode ? getenv("SWIFTLET_INIT_CMDLINE") : NULL;
    if (fake)
        cmdline = strdup(fake); /* test mode: pretend this is /proc/cmdline */
    else
        cmdline = read_cmdline();
    if (is_pid1 && bundle_mode(cmdline)) {
        quiet = 1;
        if (timer_errno)
            say("ioperm(0x%x) failed: %s", BOOT_TIMER_PORT, strerror(timer_errno));
        int code = run_bundle();
        terminate_all();
        sync();
        if (ports)
            outb((unsigned char)code, EXIT_STATUS_PORT);
        silence_console();
        end_vm();
    }
    write_all(STDOUT_FILENO, BANNER);
    if (timer_errno)
        say("ioperm(0x%x) failed, boot-timer port not written: %s", BOOT_TIMER_PORT,
            strerror(timer_errno));
    if (!is_pid1)
        say("not running as PID 1 (pid %d): no mounts, exit instead of power-off", (int)getpid());
    if (setenv("PATH", getenv("PATH") ? getenv("PATH") : DEFAULT_PATH, 1) < 0)
        say("setenv PATH failed: %s", strerror(errno));
    if (chdir("/") < 0)
        say("chdir / failed: %s", strerror(errno));

    /* 4. Workload. */
    char **cmd = calloc((size_t)argc + 4, sizeof *cmd);
    if (!cmd) {
        say("out of memory");
        if (!is_pid1)
            return 1;
        end_vm();
    }
    const char *source = choose_command(argc, argv, cmd, cmdline);
    say("running %s (%s)", cmd[0], source);

    int status = -1;
    pid_t child = spawn(cmd);
    if (child > 0) {
        status = wait_for(child);
        if (status != -1)
            describe_status(cmd[0], status);
    }

    /* 5. Shut down. */
    int code = status == -1 ? 1 : WIFEXITED(status) ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
    terminate_all();
    sync();
    if (!is_pid1)
        return code;
    if (ports)
        outb((unsigned char)code, EXIT_STATUS_PORT);
    end_vm();
    return 0;
}
