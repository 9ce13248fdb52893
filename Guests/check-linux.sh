#!/usr/bin/env bash
# Boots the guest kernel with the Swiftlet initramfs and reports how far it got and when.
#
# Usage: Guests/check-linux.sh SWIFTLET KERNEL INITRAMFS TIMEOUT_SECONDS "CMDLINE" [swiftlet flags...]
#
# Milestones, timed from the start of the swiftlet process (wall clock):
#   first kernel line   "Linux version"
#   init started       "Run /init as init process"
#   init banner        "Swiftlet guest init: ready" (printed by Guests/initramfs/init.c)
# Exit status: 0 the banner appeared; 2 the kernel started init but the banner never came
# (e.g. a KVM that cannot run guest user space, see Docs/LINUX.md); 1 anything else (panic,
# emulation failure, deadline before init). The serial log is kept in $SWIFTLET_CHECK_LOG
# (default /tmp/swiftlet-check-linux.log); its last lines are printed when the banner is missing.
set -uo pipefail

if [ $# -lt 5 ]; then
    sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 1
fi
swiftlet=$1 kernel=$2 initramfs=$3 timeout=$4 cmdline=$5
shift 5
log=${SWIFTLET_CHECK_LOG:-/tmp/swiftlet-check-linux.log}
: >"$log"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

start=$(now)
first="" init="" banner=""
echo "check-linux: booting $kernel with $initramfs (deadline ${timeout}s); serial log: $log"
while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log"
    case "$line" in
        *"Linux version"*) [ -n "$first" ] || first=$(elapsed "$start" "$(now)") ;;
        *"Run /init as init process"*) [ -n "$init" ] || init=$(elapsed "$start" "$(now)") ;;
        *"Swiftlet guest init: ready"*) [ -n "$banner" ] || banner=$(elapsed "$start" "$(now)") ;;
    esac
done < <("$swiftlet" boot --kernel "$kernel" --initrd "$initramfs" --cmdline "$cmdline" \
            --timeout "$timeout" --report-boot-time "$@" </dev/null 2>&1)
total=$(elapsed "$start" "$(now)")

echo "check-linux: first kernel line ${first:-never}s, Run /init ${init:-never}s, init banner ${banner:-never}s, VM ended after ${total}s"
grep -a "^swiftlet:" "$log" | sed 's/^/check-linux: /'
if [ -n "$banner" ]; then
    echo "check-linux: PASS: the guest reached the init banner in ${banner}s"
    exit 0
fi
echo "check-linux: last lines of the serial log:"
tail -n 15 "$log" | sed 's/^/  | /'
if [ -n "$init" ]; then
    echo "check-linux: the kernel started init after ${init}s but the banner never came"
    exit 2
fi
echo "check-linux: FAIL: the kernel did not reach init"
exit 1
