#!/usr/bin/env python3
"""End-to-end checks of Swiftlet's devices against Linux's own drivers (`make test-kernel`).

Boots the Guests kernel with a read-only ext4 root on virtio-blk and a virtio-net device on a
tap inside a network namespace this script creates, and checks, each with a deadline:
  - the kernel finds the disk ("[vda] N 512-byte logical blocks" with the image's size),
  - mounts the ext4 root read-only and runs /sbin/init (a loop: see Guests/rootfs/loop-init.S),
  - configures eth0 with the given MAC and address (kernel `ip=`),
  - answers ping from the namespace,
  - stops cleanly on SIGTERM (exit status 143), and the image file is unchanged.
Then the same kernel, image and command line under QEMU's microvm machine, timed side by side,
and writes both timings to .build-bench/kernel-e2e.json (make bench reports them).

All traffic stays inside the namespace. A panic, emulation failure or deadline prints the
serial log's last lines and the exit reason, and fails the check.

Usage: Guests/test-kernel.py SWIFTLET VMLINUX [--emulated] [--skip-qemu]
"""
import hashlib
import json
import os
import re
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
# On a KVM that emulates guest kernel code (Docs/LINUX.md). The clearcpuid= list is the
# `emulated` template of `--cpuid-mask` (CPUIDFeature.templates): written out here so that
# Swiftlet and QEMU get exactly the same command line.
EMULATED_ARGS = ("noxsave tsc=reliable no_timer_check nowatchdog mitigations=off 8250.nr_uarts=1 "
                 "clearcpuid=cx16,popcnt,rdrand,rdseed,movbe,fsgsbase,smap,smep,umip,pku,ospke,invpcid,"
                 "bmi1,bmi2,avx,avx2,avx512f,erms,fsrm,pcid")
DEADLINES = {  # seconds from the VMM's start, per milestone
    "disk": 150, "root": 170, "init": 190, "ipconfig": 190, "ping": 60, "stop": 30,
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
    """A 16 MiB ext4 image whose /sbin/init only loops."""
    root = os.path.join(workdir, "root")
    for d in ("sbin", "dev", "proc", "sys", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    init = os.path.join(root, "sbin", "init")
    run("gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-o", init,
        os.path.join(REPO, "Guests", "rootfs", "loop-init.S"))
    image = os.path.join(workdir, "root.ext4")
    run("mkfs.ext4", "-q", "-F", "-L", "swiftlet-root", "-d", root, image, f"{IMAGE_MIB}M",
        stdout=subprocess.DEVNULL)
    return image


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

    def __init__(self, argv):
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    swiftlet, vmlinux = (os.path.abspath(a) for a in args)
    emulated = "--emulated" in flags
    for tool in ("ip", "mkfs.ext4", "ping", "gcc"):
        if shutil.which(tool) is None:
            log(f"missing tool: {tool} (make test-kernel installs it)")
            return 1
    cmdline = (f"console=ttyS0 reboot=k panic=1 root=/dev/vda rootfstype=ext4 ro "
               f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0:guest:eth0:off")
    if emulated:
        cmdline += " " + EMULATED_ARGS
    summary = {"kernel": vmlinux, "cmdline": cmdline, "emulated_kvm": emulated}
    with tempfile.TemporaryDirectory(prefix="swiftlet-e2e-") as workdir:
        image = build_root_image(workdir)
        blocks = os.path.getsize(image) // 512
        before = sha256(image)
        with Namespace() as namespace:
            argv = namespace.command(swiftlet, "boot", "--kernel", vmlinux, "--memory", "128M", "--cpus", "1",
                                     "--disk", f"path={image},readonly=on",
                                     "--net", f"tap={TAP},mac={MAC}",
                                     "--cmdline", cmdline, "--timeout", "600")
            log("booting with Swiftlet: " + " ".join(argv[4:]))
            watcher = SerialWatcher(argv)
            summary["swiftlet"] = boot_checks("swiftlet", watcher, namespace, blocks)
            status = watcher.stop(signal.SIGTERM, DEADLINES["stop"])
            check("swiftlet: SIGTERM stops the VM cleanly", status == 128 + signal.SIGTERM,
                  f"exit status {status}")
            if not all(passed for _, passed, _ in results):
                log("serial log (last lines):\n" + watcher.tail())
            check("swiftlet: the read-only image is unchanged", sha256(image) == before)

            if "--skip-qemu" not in flags and shutil.which("qemu-system-x86_64"):
                summary["qemu"] = run_qemu(namespace, vmlinux, image, cmdline, blocks)
    os.makedirs(os.path.join(REPO, ".build-bench"), exist_ok=True)
    summary["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(os.path.join(REPO, ".build-bench", "kernel-e2e.json"), "w") as f:
        json.dump(summary, f, indent=2)
    s, q = summary.get("swiftlet", {}), summary.get("qemu", {})
    if s.get("init_seconds") and q.get("init_seconds"):
        log(f"time to /sbin/init: Swiftlet {s['init_seconds']} s, QEMU {q['init_seconds']} s "
            f"(ratio {s['init_seconds'] / q['init_seconds']:.2f}x)")
    if s.get("ping_ms") and q.get("ping_ms"):
        log(f"ping round trip: Swiftlet {s['ping_ms']} ms, QEMU {q['ping_ms']} ms "
            f"(ratio {s['ping_ms'] / q['ping_ms']:.2f}x)")
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"test-kernel: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def run_qemu(namespace, vmlinux, image, cmdline, blocks):
    """The same boot under QEMU's microvm machine (the comparison, not Swiftlet's check)."""
    for cpu in ("host", "host,-arch-capabilities"):
        argv = namespace.command(
            "qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", cpu, "-m", "128M",
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", vmlinux, "-append", cmdline,
            "-drive", f"id=root,file={image},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={MAC}")
        log(f"booting with QEMU (-cpu {cpu})")
        watcher = SerialWatcher(argv)
        time.sleep(2)
        if watcher.process.poll() is None:
            break
        watcher.pump(0.2)
        log("QEMU refused to start:\n" + watcher.tail(5))
    timings = boot_checks("qemu", watcher, namespace, blocks, counted=False)
    watcher.stop(signal.SIGTERM, 20)
    if "init_seconds" not in timings:
        log("QEMU's serial log (last lines):\n" + watcher.tail())
    return timings


if __name__ == "__main__":
    sys.exit(main())
