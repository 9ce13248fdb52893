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
 *     /dev/console for us; the initramfs ships that node) and prints the
 *     banner line "Swiftlet guest init: ready".
 *  3. Mounts proc on /proc, sysfs on /sys and devtmpfs on /dev.
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
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_VALUE 123
#define EXIT_STATUS_PORT 0x441
#define BANNER "Swiftlet guest init: ready\n"
#define DEFAULT_PATH "/bin:/sbin:/usr/bin:/usr/sbin"

static int is_pid1;

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
    } else {
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

    /* 2. Console and banner. */
    ensure_console();
    write_all(STDOUT_FILENO, BANNER);
    if (timer_errno)
        say("ioperm(0x%x) failed, boot-timer port not written: %s", BOOT_TIMER_PORT,
            strerror(timer_errno));
    if (!is_pid1)
        say("not running as PID 1 (pid %d): no mounts, exit instead of power-off", (int)getpid());

    /* 3. Filesystems. */
    if (is_pid1) {
        mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    }
    if (setenv("PATH", getenv("PATH") ? getenv("PATH") : DEFAULT_PATH, 1) < 0)
        say("setenv PATH failed: %s", strerror(errno));
    if (chdir("/") < 0)
        say("chdir / failed: %s", strerror(errno));

    /* 4. Workload. */
    char *cmdline;
    const char *fake = test_mode ? getenv("SWIFTLET_INIT_CMDLINE") : NULL;
    if (fake)
        cmdline = strdup(fake); /* test mode: pretend this is /proc/cmdline */
    else
        cmdline = read_cmdline();
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
