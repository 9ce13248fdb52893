#!/usr/bin/env bash
# Boots the guest kernel with the Swiftlet initramfs and reports how far it got and when.
#
# Usage: Guests/check-linux.sh SWIFTLET KERNEL INITRAMFS TIMEOUT_SECONDS "CMDLINE" [swiftlet flags...]
#
# Milestones, timed from the start of the swiftlet process (wall clock):
#   first kernel line   "Linux version"
#   init started       "Run /init as init process"
#   init banner        "Swiftlet guest init: ready" (printed by Guests/initramfs/init.c)
#   command done       init ran the command after "--" to its end and swiftlet exited with
#                      its status (CHECK_LINUX_STATUS, default 3)
# The command (appended to CMDLINE after "--") times, with busybox `time`, 4000 read/write
# system calls (`dd bs=1 count=2000`) and 10 fork+exec+exit of /bin/true, and reports the cost
# of one of each; then it exits with CHECK_LINUX_STATUS, which must come back as swiftlet's
# exit status through the exit-status port.
# Exit status: 0 the command ran to its end and its status arrived; 2 the kernel started init
# but the banner or the command's end never came (e.g. a KVM that cannot run guest user space,
# see Docs/LINUX.md); 1 anything else (panic, emulation failure, deadline before init). The serial log is kept in $SWIFTLET_CHECK_LOG
# (default /tmp/swiftlet-check-linux.log); its last lines are printed when the banner is missing.
set -uo pipefail

if [ $# -lt 5 ]; then
    sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 1
fi
swiftlet=$1 kernel=$2 initramfs=$3 timeout=$4 cmdline=$5
shift 5
want_status=${CHECK_LINUX_STATUS:-3}
guest_command="echo check: 4000 system calls; time dd if=/dev/zero of=/dev/null bs=1 count=2000; \
echo check: 10 fork+exec; time sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done'; exit $want_status"
cmdline="$cmdline -- /bin/sh -c \"$guest_command\""
log=${SWIFTLET_CHECK_LOG:-/tmp/swiftlet-check-linux.log}
: >"$log"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

start=$(now)
first="" init="" banner="" done="" measuring="" syscalls="" forks=""
# "real	0m 1.23s" (busybox time) -> seconds
real_seconds() { sed -n 's/^real[[:space:]]*\([0-9]*\)m \{0,1\}\([0-9.]*\)s.*/\1 \2/p' <<<"$1" | awk '{ print $1 * 60 + $2 }'; }
echo "check-linux: booting $kernel with $initramfs (deadline ${timeout}s); serial log: $log"
while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log"
    line=${line%$'\r'}
    case "$line" in
        *"Linux version"*) [ -n "$first" ] || first=$(elapsed "$start" "$(now)") ;;
        *"Run /init as init process"*) [ -n "$init" ] || init=$(elapsed "$start" "$(now)") ;;
        *"Swiftlet guest init: ready"*) [ -n "$banner" ] || banner=$(elapsed "$start" "$(now)") ;;
        "check: 4000 system calls"*) measuring=syscalls ;;
        "check: 10 fork+exec"*) measuring=forks ;;
        real*)
            case $measuring in
                syscalls) syscalls=$(real_seconds "$line") ;;
                forks) forks=$(real_seconds "$line") ;;
            esac
            measuring="" ;;
        *"swiftlet-init: /bin/sh exited with status"*) [ -n "$done" ] || done=$(elapsed "$start" "$(now)") ;;
    esac
done < <("$swiftlet" boot --kernel "$kernel" --initrd "$initramfs" --cmdline "$cmdline" \
            --timeout "$timeout" --report-boot-time "$@" </dev/null 2>&1; echo "check-linux-status: $?")
total=$(elapsed "$start" "$(now)")
status=$(sed -n 's/^check-linux-status: //p' "$log" | tail -n1)

echo "check-linux: first kernel line ${first:-never}s, Run /init ${init:-never}s, init banner ${banner:-never}s, command done ${done:-never}s, VM ended after ${total}s (exit status $status)"
grep -a "^swiftlet:" "$log" | sed 's/^/check-linux: /'
if [ -n "$syscalls" ]; then
    awk -v t="$syscalls" 'BEGIN { printf "check-linux: one system call %.3f ms (4000 read/write in %.2f s)\n", t * 1000 / 4000, t }'
fi
if [ -n "$forks" ]; then
    awk -v t="$forks" 'BEGIN { printf "check-linux: one fork+exec+exit of /bin/true %.2f s (10 in %.2f s)\n", t / 10, t }'
fi
if [ -n "$banner" ] && [ -n "$done" ] && [ "$status" = "$want_status" ]; then
    echo "check-linux: PASS: the guest reached the init banner in ${banner}s and its command ended with status $status"
    exit 0
fi
if [ -n "$banner" ]; then
    echo "check-linux: the init banner came, but the command's end or its status ($status, wanted $want_status) did not"
    tail -n 15 "$log" | sed 's/^/  | /'
    exit 2
fi
echo "check-linux: last lines of the serial log:"
tail -n 15 "$log" | sed 's/^/  | /'
if [ -n "$init" ]; then
    echo "check-linux: the kernel started init after ${init}s but the banner never came"
    exit 2
fi
echo "check-linux: FAIL: the kernel did not reach init"
exit 1
