/*
 * spawn-measure: runs one command and reports its wall time and peak RSS, for run.py.
 *
 *   spawn-measure STDOUT_FILE STDERR_FILE COMMAND [ARG...]
 *
 * The command runs with stdin from /dev/null and its stdout and stderr in the two files. On
 * its own stdout spawn-measure prints one line:
 *
 *   wall_ns=N status=S maxrss_kib=M spawn_realtime_ns=R
 *
 * wall_ns is CLOCK_MONOTONIC from just before posix_spawn to wait4's return; status is the exit
 * status (128 + signal number if it was killed); maxrss_kib is wait4's ru_maxrss of the child;
 * spawn_realtime_ns is CLOCK_REALTIME just before posix_spawn.
 *
 *   spawn-measure --inherit REPORT_FILE COMMAND [ARG...]
 *
 * The second form (for workloads.py, which reads the output as it comes and types at stdin)
 * leaves stdin, stdout and stderr to the command, writes the same line to REPORT_FILE instead
 * and exits with the command's exit status.
 *
 * Why not measure from Python: Linux records the peak RSS of the address space a process
 * leaves at execve into its ru_maxrss. A child that Python spawns (vfork or fork) leaves
 * Python's address space, so every child would report at least the interpreter's ~17 MiB.
 * This program is static and small, so that floor drops to a few hundred KiB (run.py reports
 * it: the peak RSS of a static no-op spawned the same way).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int inherit = argc >= 4 && strcmp(argv[1], "--inherit") == 0;
    if (argc < 4) {
        fprintf(stderr, "usage: spawn-measure STDOUT_FILE STDERR_FILE COMMAND [ARG...]\n"
                        "       spawn-measure --inherit REPORT_FILE COMMAND [ARG...]\n");
        return 2;
    }
    char **command = &argv[3];
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (!inherit) {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 1, argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_addopen(&actions, 2, argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }

    uint64_t realtime = now_ns(CLOCK_REALTIME);
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    pid_t pid;
    int error = posix_spawn(&pid, command[0], &actions, NULL, command, environ);
    if (error != 0) {
        fprintf(stderr, "spawn-measure: %s: %s\n", command[0], strerror(error));
        return 2;
    }
    int status;
    struct rusage usage;
    while (wait4(pid, &status, 0, &usage) < 0) {
        /* EINTR only: there is no other child. */
    }
    uint64_t end = now_ns(CLOCK_MONOTONIC);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *report = stdout;
    if (inherit && (report = fopen(argv[2], "w")) == NULL) {
        fprintf(stderr, "spawn-measure: %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    fprintf(report, "wall_ns=%llu status=%d maxrss_kib=%ld spawn_realtime_ns=%llu\n",
            (unsigned long long)(end - start), code, usage.ru_maxrss, (unsigned long long)realtime);
    if (inherit) {
        fclose(report);
        return code;
    }
    return 0;
}
