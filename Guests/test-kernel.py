#!/usr/bin/env python3
"""End-to-end checks of Swiftlet's devices against Linux's own drivers (`make test-kernel`).

One boot serves many checks. The Guests kernel boots on CPUS vCPUs (default 2) with a
read-only ext4 root on virtio-blk (busybox and Swiftlet's init), a read-only data disk of
random bytes, a read-write ext4 disk, virtio-rng, and a virtio-net device on a tap inside a
network namespace this script creates. Kernel milestones, each with a deadline:
  - the kernel finds the disk ("[vda] N 512-byte logical blocks" with the image's size),
  - mounts the ext4 root read-only and runs /sbin/init (Swiftlet's init, Guests/initramfs),
  - configures eth0 with the given MAC and address (kernel `ip=`),
  - answers ping from the namespace.
Then real programs in the guest (Guests/rootfs/e2e-checks.sh, which init runs from
`swiftlet.cmd=`: QEMU appends its virtio_mmio.device= words to the end of the command line, so
a "--" there would hide them from the kernel; the 4-vCPU boot below uses the "--" form):
  - `sha256sum /dev/vdb` equals the host's checksum of that image,
  - a file written on the read-write ext4 disk is read back by the host after the VM ends
    (debugfs from e2fsprogs),
  - the guest pings the host, `/dev/hwrng` yields bytes,
  - Linux brings up every vCPU in one package ("Max logical packages: 1"),
  - `nproc` equals the vCPU count, a shell pinned to each CPU (taskset) runs there, and two
    processes on different CPUs exchange a line through a pipe,
  - the script's exit status (7) reaches the host as swiftlet's exit status, and the
    read-only images are unchanged.
Snapshot and restore: the initramfs's busybox shell at its prompt (1 vCPU, on the tap) is
snapshotted on SIGUSR1 (`swiftlet boot --snapshot-on-signal`) and restored twice from that one
snapshot; each restored shell runs a command typed at it and ends with its `exit N` status, and
the first restored guest answers ping.
A second, short boot from the initramfs on 4 vCPUs goes through the API socket (`swiftlet --api-sock`:
machine-config, boot-source, InstanceStart, Paused and Resumed), then `exit $(nproc)`: exit status 4.
Then the first boot's kernel, images, command line and checks under QEMU's microvm machine,
timed side by side (reported, not counted), and both timings go to .build-bench/kernel-e2e.json
(make bench reports them).

All traffic stays inside the namespace. A panic, emulation failure or deadline prints the
serial log's last lines and the exit reason, and fails the check.

Usage: Guests/test-kernel.py SWIFTLET VMLINUX INITRAMFS [--emulated] [--skip-qemu] [--only-snapshot] [--only-api] [--cpus=N]
"""
import hashlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MAC = "52:54:00:12:34:56"
GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"
TAP = "swltap0"
IMAGE_MIB = 16
DATA_MIB = 4
RW_MIB = 8
SCRIPT_STATUS = 7  # what e2e-checks.sh exits with; must arrive as swiftlet's exit status
# On a KVM that emulates guest kernel code (Docs/LINUX.md). The clearcpuid= list is the
# `emulated` template of `--cpuid-mask` (CPUIDFeature.templates): written out here so that
# Swiftlet and QEMU get exactly the same command line.
EMULATED_ARGS = ("noxsave tsc=reliable no_timer_check nowatchdog mitigations=off 8250.nr_uarts=1 "
                 "clearcpuid=cx16,popcnt,rdrand,rdseed,movbe,fsgsbase,smap,smep,umip,pku,ospke,invpcid,"
                 "bmi1,bmi2,avx,avx2,avx512f,erms,fsrm,pcid")
DEADLINES = {  # seconds from the VMM's start, per milestone
    "disk": 150, "root": 170, "init": 190, "ipconfig": 190, "ping": 60, "stop": 30,
    "checks": 330, "exit": 360,
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

results = []  # (name, passed, detail)


def log(message):
    print(f"test-kernel: {message}", flush=True)


def check(name, passed, detail="", counted=True):
    """Records a check; QEMU's runs are a comparison and are reported but not counted."""
    if counted:
        results.append((name, passed, detail))
        verdict = "PASS" if passed else "FAIL"
    else:
        verdict = "info: ok" if passed else "info: not seen"
    log(f"{verdict} {name}" + (f": {detail}" if detail else ""))
    return passed


def run(*args, **kwargs):
    return subprocess.run(args, check=True, **kwargs)


def build_root_image(workdir):
    """A 16 MiB ext4 root: static busybox with its applet links, Swiftlet's init as /sbin/init
    and the check script as /e2e-checks.sh."""
    root = os.path.join(workdir, "root")
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "mnt", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    run("musl-gcc", "-static", "-Os", "-s", "-Wall", "-o", os.path.join(root, "sbin", "init"),
        os.path.join(REPO, "Guests", "initramfs", "init.c"))
    busybox = os.path.join(root, "bin", "busybox")
    shutil.copy("/bin/busybox", busybox)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(root, "bin", applet)
        if applet != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    shutil.copy(os.path.join(REPO, "Guests", "rootfs", "e2e-checks.sh"), os.path.join(root, "e2e-checks.sh"))
    image = os.path.join(workdir, "root.ext4")
    run("mkfs.ext4", "-q", "-F", "-L", "swiftlet-root", "-d", root, image, f"{IMAGE_MIB}M",
        stdout=subprocess.DEVNULL)
    return image


def build_data_images(workdir):
    """A read-only disk of random bytes and an empty read-write ext4 disk."""
    data = os.path.join(workdir, "data.img")
    with open(data, "wb") as f:
        f.write(os.urandom(DATA_MIB << 20))
    rw = os.path.join(workdir, "rw.ext4")
    run("mkfs.ext4", "-q", "-F", "-L", "swiftlet-rw", rw, f"{RW_MIB}M", stdout=subprocess.DEVNULL)
    return data, rw


def debugfs_cat(image, path):
    """The contents of `path` in the ext4 `image`, read on the host (None if debugfs fails)."""
    result = subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Namespace:
    def __init__(self):
        self.name = f"swiftlet-e2e-{os.getpid()}"

    def __enter__(self):
        run("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        self.exec("ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        self.exec("ip", "link", "set", TAP, "up")
        return self

    def exec(self, *args, **kwargs):
        return run("ip", "netns", "exec", self.name, *args, **kwargs)

    def command(self, *args):
        return ["ip", "netns", "exec", self.name, *args]

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)


class SerialWatcher:
    """Runs a VMM, keeps its console output, and times when patterns first appear."""

    def __init__(self, argv, stdin=subprocess.DEVNULL):
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.lines = []
        self.partial = b""
        self.seen = {}

    def pump(self, timeout):
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return
        data = os.read(self.process.stdout.fileno(), 65536)
        if not data:
            return
        self.partial += data
        *complete, self.partial = self.partial.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").rstrip("\r")
            self.lines.append(line)

    def wait_for(self, key, pattern, deadline):
        """Seconds after start when `pattern` first matched, or None at the deadline/exit."""
        regex = re.compile(pattern)
        index = 0
        while True:
            while index < len(self.lines):
                match = regex.search(self.lines[index])
                index += 1
                if match:
                    self.seen[key] = (time.monotonic() - self.start, match)
                    return self.seen[key]
            if time.monotonic() - self.start > deadline or self.process.poll() is not None:
                # Drain what is left before giving up.
                self.pump(0.2)
                if index >= len(self.lines):
                    return None
                continue
            self.pump(0.5)

    def wait_exit(self, timeout):
        """The exit status once the VMM ends by itself, or None (then it is killed)."""
        deadline = self.start + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.pump(0.5)
        if self.process.poll() is None:
            self.stop(signal.SIGTERM, 10)
            return None
        self.pump(0.2)
        while self.partial or select.select([self.process.stdout], [], [], 0)[0]:
            before = len(self.lines)
            self.pump(0.1)
            if len(self.lines) == before:
                if self.partial:
                    self.lines.append(self.partial.decode(errors="replace").rstrip("\r"))
                    self.partial = b""
                break
        return self.process.returncode

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                self.pump(0.2)
            return self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None
        finally:
            self.pump(0)

    def type(self, text):
        """Writes `text` to the VMM's stdin (its serial console input), as if typed."""
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def tail(self, count=20):
        return "\n".join("  | " + line for line in self.lines[-count:])


def ping(namespace):
    result = subprocess.run(namespace.command("ping", "-c", "3", "-i", "0.5", "-W", "10", GUEST_IP),
                            capture_output=True, text=True, timeout=DEADLINES["ping"])
    received = re.search(r"(\d+) received", result.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
    return (int(received.group(1)) if received else 0), (float(rtt.group(1)) if rtt else None), result.stdout


def boot_checks(label, watcher, namespace, image_blocks, counted=True):
    """The milestone checks shared by Swiftlet and QEMU. Returns the timings."""
    timings = {}
    cmdline_mac = MAC
    found = watcher.wait_for("disk", r"\[vda\] (\d+) 512-byte logical blocks", DEADLINES["disk"])
    ok = found is not None and int(found[1].group(1)) == image_blocks
    check(f"{label}: the kernel finds the disk with {image_blocks} blocks", ok,
          f"after {found[0]:.1f}s" if found else "not seen", counted)
    found = watcher.wait_for("root", r"VFS: Mounted root \(ext4 filesystem\) readonly", DEADLINES["root"])
    check(f"{label}: the ext4 root is mounted read-only", found is not None,
          f"after {found[0]:.1f}s" if found else "not seen", counted)
    found = watcher.wait_for("init", r"Run /sbin/init as init process", DEADLINES["init"])
    check(f"{label}: the kernel runs /sbin/init", found is not None,
          f"after {found[0]:.1f}s" if found else "not seen", counted)
    if found:
        timings["init_seconds"] = round(found[0], 2)
    found = watcher.wait_for("ipconfig",
                             r"device=eth0, hwaddr=([0-9a-f:]+), ipaddr=([\d.]+)", DEADLINES["ipconfig"])
    ok = found is not None and found[1].group(1) == cmdline_mac and found[1].group(2) == GUEST_IP
    check(f"{label}: eth0 has MAC {cmdline_mac} and address {GUEST_IP}", ok,
          found[1].group(0) if found else "no IP-Config line", counted)
    received, rtt, output = ping(namespace) if watcher.process.poll() is None else (0, None, "VM not running")
    check(f"{label}: the namespace pings the guest", received > 0,
          f"{received}/3 replies, average {rtt} ms" if received else output.strip()[-200:], counted)
    timings["ping_replies"] = received
    if rtt is not None:
        timings["ping_ms"] = rtt
    return timings


def guest_checks(label, watcher, cpus, data_sha, counted=True):
    """Reads the E2E lines of Guests/rootfs/e2e-checks.sh and compares them with the host's view."""
    found = watcher.wait_for("banner", r"Swiftlet guest init: ready", DEADLINES["init"] + 30)
    check(f"{label}: init runs in user space (banner)", found is not None,
          f"after {found[0]:.1f}s" if found else "not seen", counted)
    found = watcher.wait_for("checks", r"^E2E done", DEADLINES["checks"])
    values = {}
    for line in watcher.lines:
        m = re.match(r"^E2E (\S+) ?(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2).strip()
    check(f"{label}: the guest's check script runs to its end", found is not None,
          f"after {found[0]:.1f}s" if found else "not seen", counted)
    check(f"{label}: guest sha256sum /dev/vdb equals the host's", values.get("vdb-sha256") == data_sha,
          values.get("vdb-sha256", "no result"), counted)
    check(f"{label}: the guest writes a file on the read-write ext4 disk", values.get("rw-write") == "ok",
          values.get("rw-write", "no result"), counted)
    check(f"{label}: the guest pings the host", values.get("ping-host") == "ok",
          values.get("ping-host", "no result"), counted)
    check(f"{label}: /dev/hwrng yields 32 bytes", values.get("hwrng-bytes") == "32",
          values.get("hwrng-bytes", "no result"), counted)
    check(f"{label}: nproc is {cpus}", values.get("nproc") == str(cpus), values.get("nproc", "no result"), counted)
    found = watcher.wait_for("smp", r"smp: Brought up 1 node, (\d+) CPUs?", 1)
    check(f"{label}: Linux brings up {cpus} CPU(s)", found is not None and int(found[1].group(1)) == cpus,
          found[1].group(0) if found else "no 'Brought up' line", counted)
    found = watcher.wait_for("packages", r"smpboot: Max logical packages: (\d+)", 1)
    check(f"{label}: the topology is one package (smpboot: Max logical packages: 1)",
          found is not None and found[1].group(1) == "1", found[1].group(0) if found else "no such line", counted)
    pinned = [values.get(f"pinned-{i}") for i in range(cpus)]
    check(f"{label}: a shell pinned to each CPU runs there (taskset)", pinned == [str(i) for i in range(cpus)],
          f"CPUs seen: {pinned}", counted)
    if cpus >= 2:
        check(f"{label}: processes on CPUs 0 and 1 exchange a line through a pipe",
              values.get("pipe") == "hello-from-cpu-0 to-cpu-1", values.get("pipe", "no result"), counted)
    return values


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--") and "=" not in a}
    options = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    swiftlet, vmlinux, initramfs = (os.path.abspath(a) for a in args)
    cpus = int(options.get("cpus", "2"))
    emulated = "--emulated" in flags
    for tool in ("ip", "mkfs.ext4", "debugfs", "ping", "gcc", "musl-gcc"):
        if shutil.which(tool) is None:
            log(f"missing tool: {tool} (make test-kernel installs it)")
            return 1
    token = "swiftlet-e2e-" + secrets.token_hex(8)
    base = "console=ttyS0 reboot=k panic=1"
    if emulated:
        base += " " + EMULATED_ARGS
    cmdline = (f"{base} root=/dev/vda rootfstype=ext4 ro "
               f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0:guest:eth0:off "
               f'swiftlet.cmd="/bin/sh /e2e-checks.sh {token} {SCRIPT_STATUS}"')
    cpuid = ["--cpuid-mask", "emulated"] if emulated else []
    summary = {"kernel": vmlinux, "cmdline": cmdline, "emulated_kvm": emulated, "cpus": cpus}
    with tempfile.TemporaryDirectory(prefix="swiftlet-e2e-") as workdir:
        image = build_root_image(workdir)
        data, rw = build_data_images(workdir)
        blocks = os.path.getsize(image) // 512
        before, data_sha = sha256(image), sha256(data)
        if "--only-api" in flags:  # while working on the API socket: its boot alone
            boot_four(swiftlet, vmlinux, initramfs, base, cpuid, workdir)
            passed = sum(1 for _, ok, _ in results if ok)
            print(f"test-kernel: {passed} passed, {len(results) - passed} failed", flush=True)
            return 0 if passed == len(results) else 1
        if "--only-snapshot" in flags:  # while working on snapshots: that boot alone
            with Namespace() as namespace:
                snapshot_restore(namespace, swiftlet, vmlinux, initramfs, base, cpuid, workdir)
            passed = sum(1 for _, ok, _ in results if ok)
            print(f"test-kernel: {passed} passed, {len(results) - passed} failed", flush=True)
            return 0 if passed == len(results) else 1
        with Namespace() as namespace:
            argv = namespace.command(swiftlet, "boot", "--kernel", vmlinux, "--memory", "128M", "--cpus", str(cpus),
                                     *cpuid,
                                     "--disk", f"path={image},readonly=on",
                                     "--disk", f"path={data},readonly=on",
                                     "--disk", f"path={rw}",
                                     "--net", f"tap={TAP},mac={MAC}", "--rng",
                                     "--cmdline", cmdline, "--timeout", "600")
            log("booting with Swiftlet: " + " ".join(argv[4:]))
            watcher = SerialWatcher(argv)
            summary["swiftlet"] = boot_checks("swiftlet", watcher, namespace, blocks)
            guest_checks("swiftlet", watcher, cpus, data_sha)
            status = watcher.wait_exit(DEADLINES["exit"])
            check(f"swiftlet: the guest command's exit status ({SCRIPT_STATUS}) is swiftlet's", status == SCRIPT_STATUS,
                  f"exit status {status}")
            if "banner" in watcher.seen:
                summary["swiftlet"]["banner_seconds"] = round(watcher.seen["banner"][0], 2)
            if "checks" in watcher.seen and "banner" in watcher.seen:
                summary["swiftlet"]["checks_seconds"] = round(watcher.seen["checks"][0] - watcher.seen["banner"][0], 2)
            if not all(passed for _, passed, _ in results):
                log("serial log (last lines):\n" + watcher.tail(40))
            written = debugfs_cat(rw, "/f")
            check("swiftlet: the host reads back the file the guest wrote (debugfs)",
                  written is not None and written.strip() == token, repr(written)[:80])
            check("swiftlet: the read-only images are unchanged", sha256(image) == before and sha256(data) == data_sha)

            if "--skip-qemu" not in flags and shutil.which("qemu-system-x86_64"):
                summary["qemu"] = run_qemu(namespace, vmlinux, image, data, rw, cmdline, blocks, cpus, data_sha)

            summary["snapshot"] = snapshot_restore(namespace, swiftlet, vmlinux, initramfs, base, cpuid, workdir)

            summary["swiftlet_4cpu"] = boot_four(swiftlet, vmlinux, initramfs, base, cpuid, workdir)
    os.makedirs(os.path.join(REPO, ".build-bench"), exist_ok=True)
    summary["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(os.path.join(REPO, ".build-bench", "kernel-e2e.json"), "w") as f:
        json.dump(summary, f, indent=2)
    s, q = summary.get("swiftlet", {}), summary.get("qemu", {})
    if s.get("init_seconds") and q.get("init_seconds"):
        log(f"time to /sbin/init: Swiftlet {s['init_seconds']} s, QEMU {q['init_seconds']} s "
            f"(ratio {s['init_seconds'] / q['init_seconds']:.2f}x)")
    if s.get("checks_seconds") and q.get("checks_seconds"):
        log(f"guest check script (banner to done): Swiftlet {s['checks_seconds']} s, QEMU {q['checks_seconds']} s "
            f"(ratio {s['checks_seconds'] / q['checks_seconds']:.2f}x)")
    if s.get("ping_ms") and q.get("ping_ms"):
        log(f"ping round trip: Swiftlet {s['ping_ms']} ms, QEMU {q['ping_ms']} ms "
            f"(ratio {s['ping_ms'] / q['ping_ms']:.2f}x)")
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"test-kernel: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def snapshot_restore(namespace, swiftlet, vmlinux, initramfs, base, cpuid, workdir):
    """The busybox shell at its prompt, snapshotted on SIGUSR1 (`--snapshot-on-signal`), then restored
    twice from that one snapshot: each restored guest runs a command typed at it and ends with the
    status of the shell's `exit`; the first also answers ping on its tap."""
    snapshot = os.path.join(workdir, "linux-snapshot")
    cmdline = f"{base} ip={GUEST_IP}::{HOST_IP}:255.255.255.0:guest:eth0:off"
    argv = namespace.command(swiftlet, "boot", "--kernel", vmlinux, "--initrd", initramfs, "--memory", "128M",
                             *cpuid, "--net", f"tap={TAP},mac={MAC}", "--cmdline", cmdline,
                             "--snapshot-on-signal", snapshot, "--timeout", "300")
    log("booting the shell to snapshot it: " + " ".join(argv[4:]))
    timings = {}
    watcher = SerialWatcher(argv, stdin=subprocess.PIPE)
    # Bytes typed before the guest's tty is open are lost: type once the shell has started.
    watcher.wait_for("shell", r"Enter 'help' for a list of built-in commands", DEADLINES["init"] + 60)
    watcher.type("echo at-the-prompt-$((2+3))\n")
    found = watcher.wait_for("prompt", r"^at-the-prompt-5", DEADLINES["init"] + 90)
    check("snapshot: the busybox shell runs a command before the snapshot", found is not None,
          f"after {found[0]:.1f}s" if found else "not seen")
    if found is None:
        watcher.stop()
        log("serial log (last lines):\n" + watcher.tail(30))
        return timings
    os.kill(watcher.process.pid, signal.SIGUSR1)
    status = watcher.wait_exit(60)
    written = os.path.exists(os.path.join(snapshot, "state")) and os.path.exists(os.path.join(snapshot, "memory"))
    check("snapshot: SIGUSR1 writes the snapshot and swiftlet exits 0", status == 0 and written,
          f"exit status {status}, files {'written' if written else 'missing'}")
    if not written:
        log("serial log (last lines):\n" + watcher.tail(30))
        return timings
    for round_, (word, product, exit_status) in enumerate((("restored", "6*7", 5), ("again", "7*7", 6))):
        argv = namespace.command(swiftlet, "restore", snapshot, "--timeout", "120")
        log("restoring: " + " ".join(argv[4:]))
        restored = SerialWatcher(argv, stdin=subprocess.PIPE)
        restored.type(f"echo {word}-$(({product}))\n")
        expected = f"{word}-{eval(product)}"
        found = restored.wait_for("command", rf"^{expected}", 60)
        check(f"snapshot: restore {round_ + 1} runs a command typed at the restored shell", found is not None,
              f"'{expected}' after {found[0]:.2f}s" if found else "not seen")
        if found:
            timings.setdefault("restore_to_command_output_seconds", []).append(round(found[0], 3))
        if round_ == 0:
            received, rtt, output = ping(namespace) if restored.process.poll() is None else (0, None, "not running")
            check("snapshot: the restored guest's network answers ping", received > 0,
                  f"{received}/3 replies, average {rtt} ms" if received else output.strip()[-200:])
        restored.type(f"exit {exit_status}\n")
        status = restored.wait_exit(60)
        check(f"snapshot: restore {round_ + 1} ends with the shell's exit status ({exit_status})",
              status == exit_status, f"exit status {status}")
        if status != exit_status or found is None:
            log("serial log (last lines):\n" + restored.tail(30))
    return timings


class UnixHTTP:
    """HTTP/1.1 requests over the API's Unix socket (what `curl --unix-socket` does)."""

    def __init__(self, path):
        self.path = path

    def request(self, method, target, body=None):
        import http.client
        import socket

        connection = http.client.HTTPConnection("localhost", timeout=20)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.settimeout(20)
        connection.sock.connect(self.path)
        payload = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, target, body=payload, headers=headers)
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        connection.close()
        return response.status, text


def boot_four(swiftlet, vmlinux, initramfs, base, cpuid, workdir):
    """4 vCPUs on the host's cores, from the initramfs, driven through the Firecracker-compatible API
    socket (`swiftlet --api-sock`) in firecracker-go-sdk's order: machine-config, boot-source,
    InstanceStart. The guest's command waits for a line on its console: the guest is paused at its
    init banner, the line is typed while it is paused, and only after `Resumed` does it answer; then
    `exit $(nproc)` must give swiftlet's exit status 4."""
    sock = os.path.join(workdir, "api.sock")
    argv = [swiftlet, "--api-sock", sock, "--id", "test-kernel", *cpuid]
    log("starting the API socket for a 4-vCPU boot: " + " ".join(argv[1:]))
    watcher = SerialWatcher(argv, stdin=subprocess.PIPE)
    api = UnixHTTP(sock)
    while not os.path.exists(sock) and watcher.process.poll() is None and time.monotonic() - watcher.start < 10:
        time.sleep(0.02)
    try:
        status, text = api.request("GET", "/")
        check("api: GET / answers before boot, state Not started", status == 200 and "Not started" in text, text[:120])
        command = '/bin/sh -c "read line; echo got-$line; exit $(nproc)"'
        calls = [
            ("PUT", "/machine-config", {"vcpu_count": 4, "mem_size_mib": 128}),
            ("PUT", "/boot-source", {"kernel_image_path": vmlinux, "initrd_path": initramfs,
                                     "boot_args": f"{base} -- {command}"}),
            ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ]
        answers = [(target, *api.request(method, target, body)) for method, target, body in calls]
        check("api: machine-config, boot-source and InstanceStart each answer 204",
              all(code == 204 for _, code, _ in answers), "; ".join(f"{t} {c} {x[:80]}" for t, c, x in answers))
        found = watcher.wait_for("banner", r"Swiftlet guest init: ready", DEADLINES["init"] + 30)
        paused, _ = api.request("PATCH", "/vm", {"state": "Paused"})
        _, info = api.request("GET", "/")
        watcher.type("through-the-api\n")
        early = watcher.wait_for("early", r"^got-through-the-api", 3 + (time.monotonic() - watcher.start))
        check("api: PATCH /vm Paused stops the guest (GET / says Paused; a typed line is not answered)",
              found is not None and paused == 204 and '"Paused"' in info and early is None,
              f"banner {'seen' if found else 'missing'}, PATCH {paused}, {info[:100]}, answered while paused: {bool(early)}")
        resumed, _ = api.request("PATCH", "/vm", {"state": "Resumed"})
        answered = watcher.wait_for("answer", r"^got-through-the-api", DEADLINES["exit"])
        check("api: PATCH /vm Resumed lets it run on: the line typed while paused is answered",
              resumed == 204 and answered is not None, f"PATCH {resumed}, answer {'seen' if answered else 'missing'}")
    except OSError as error:
        check("api: the API socket answers", False, str(error))
        found = None
    status = watcher.wait_exit(DEADLINES["exit"])
    check("swiftlet 4 vCPUs (through the API): init runs and `exit $(nproc)` gives exit status 4", status == 4,
          f"banner after {found[0]:.1f}s, exit status {status}" if found else f"no banner, exit status {status}")
    check("api: the socket is removed when the guest ends", not os.path.exists(sock))
    if status != 4:
        log("serial log (last lines):\n" + watcher.tail(30))
    return {"banner_seconds": round(found[0], 2)} if found else {}


def run_qemu(namespace, vmlinux, image, data, rw, cmdline, blocks, cpus, data_sha):
    """The same boot and checks under QEMU's microvm machine (the comparison, not Swiftlet's check).

    QEMU gets its own copy of the read-write disk. Its KVM paravirtual features that need a
    hypercall (PV IPIs, PV unhalt, PV sched-yield) are off, as Swiftlet's `emulated` mask does.
    """
    rw_copy = rw + ".qemu"
    run("mkfs.ext4", "-q", "-F", "-L", "swiftlet-rw", rw_copy, f"{RW_MIB}M", stdout=subprocess.DEVNULL)
    pv_off = "kvm-pv-ipi=off,kvm-pv-unhalt=off,kvm-pv-sched-yield=off"
    for cpu in (f"host,{pv_off}", f"host,-arch-capabilities,{pv_off}"):
        argv = namespace.command(
            "qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", cpu, "-m", "128M",
            "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", vmlinux, "-append", cmdline,
            "-drive", f"id=root,file={image},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-drive", f"id=data,file={data},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=data",
            "-drive", f"id=rw,file={rw_copy},format=raw,if=none",
            "-device", "virtio-blk-device,drive=rw",
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={MAC}",
            "-device", "virtio-rng-device")
        log(f"booting with QEMU (-cpu {cpu})")
        watcher = SerialWatcher(argv)
        time.sleep(2)
        if watcher.process.poll() is None:
            break
        watcher.pump(0.2)
        log("QEMU refused to start:\n" + watcher.tail(5))
    timings = boot_checks("qemu", watcher, namespace, blocks, counted=False)
    guest_checks("qemu", watcher, cpus, data_sha, counted=False)
    watcher.wait_exit(DEADLINES["exit"])
    if "banner" in watcher.seen:
        timings["banner_seconds"] = round(watcher.seen["banner"][0], 2)
    if "checks" in watcher.seen and "banner" in watcher.seen:
        timings["checks_seconds"] = round(watcher.seen["checks"][0] - watcher.seen["banner"][0], 2)
    if "init_seconds" not in timings:
        log("QEMU's serial log (last lines):\n" + watcher.tail())
    return timings


if __name__ == "__main__":
    sys.exit(main())
