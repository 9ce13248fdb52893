#!/bin/sh
# User-space checks of Guests/test-kernel.py, run by Swiftlet's init on the guest (ext4 root,
# busybox) as `/bin/sh /e2e-checks.sh TOKEN STATUS` (from swiftlet.cmd= on the kernel command line): real programs driving Linux's drivers on
# Swiftlet's devices. Each check prints one line "E2E <name> <result>" that the host compares
# with what it knows (checksums, the token, the vCPU count); the script then exits with STATUS,
# which init reports to the VMM, so the host also checks that the status arrives.
# Disks: vda the read-only root, vdb read-only random data, vdc a read-write ext4 image.
# Each fork+exec costs ~0.7 s on an emulating KVM: the checks use few processes.
# Helper modes, run pinned with taskset by the checks below:
#   --report NAME   prints "E2E NAME <the CPU this shell runs on>"
#   --send          writes "hello-from-cpu-<CPU>" to stdout (a pipe)
#   --receive       reads one line and prints "E2E pipe <line> to-cpu-<CPU>"
# The CPU is field 39 of /proc/self/stat, read by the shell itself (no fork).
cpu_of_shell() {
    read -r stat < /proc/self/stat
    set -- $stat
    shift 38
    cpu=$1
}
case "$1" in
    --report) cpu_of_shell; echo "E2E $2 $cpu"; exit 0 ;;
    --send) cpu_of_shell; echo "hello-from-cpu-$cpu"; exit 0 ;;
    --receive) cpu_of_shell; read -r m; echo "E2E pipe $m to-cpu-$cpu"; exit 0 ;;
esac

token=$1
status=$2

echo "E2E start"
# The root is read-only: scratch files go to a tmpfs.
mount -t tmpfs tmpfs /tmp || echo "E2E tmpfs failed"
echo "E2E nproc $(nproc)"
set -- $(sha256sum /dev/vdb)
echo "E2E vdb-sha256 $1"
if mount -t ext4 /dev/vdc /mnt; then
    echo "$token" > /mnt/f && sync && umount /mnt && echo "E2E rw-write ok" || echo "E2E rw-write failed"
else
    echo "E2E rw-write mount-failed"
fi
if ping -c 2 -W 10 10.0.2.2 > /tmp/ping.out 2>&1; then
    echo "E2E ping-host ok"
else
    echo "E2E ping-host failed: $(tail -n 2 /tmp/ping.out)"
fi
echo "E2E hwrng-bytes $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c)"
n=$(nproc)
i=0
while [ "$i" -lt "$n" ]; do
    taskset -c "$i" /bin/sh "$0" --report "pinned-$i"
    i=$((i + 1))
done
if [ "$n" -ge 2 ]; then
    # Two processes on different CPUs exchange a message through a pipe (IPIs wake the reader).
    taskset -c 0 /bin/sh "$0" --send | taskset -c 1 /bin/sh "$0" --receive
fi
echo "E2E done"
exit "$status"
