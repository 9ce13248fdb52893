#!/usr/bin/env python3
"""Containers versus microVMs on the same workload (`make bench LINUX=1`, or on its own).

One run, interleaved rounds, medians. The same OCI bundle (busybox-static root, read-only, a
config.json written here) runs under `runc run` and `swiftlet run` with two commands: `echo
hello` and `true`. Per run: spawn -> first byte of output on stdout, spawn -> exit, and the
runtime's peak RSS (wait4's ru_maxrss of the process tree, taken by Benchmarks/spawn-measure.c:
a child forked from Python would report the interpreter's peak; for the microVM it includes the
guest memory the VM touched, which is counted separately from /proc/PID/smaps where a VM is
measured while it runs).

Snapshot and restore: the initramfs's busybox shell, booted once and snapshotted at its prompt
(`swiftlet boot --snapshot-on-signal`), is restored with `echo hello` typed at once: restore ->
first guest output (the tty's echo of the first typed byte: the guest runs again) and restore ->
the command's output (`hello`), against a cold boot of the same kernel and initramfs running
`/bin/echo hello`, and `runc run` of the same command.

Density: N idle instances of each started at once: N containers whose process sleeps (`runc run
--detach`), and N microVMs restored from that one snapshot (each idle at its prompt after
answering a typed command): time until all are up, per instance PSS and private memory (from
/proc/PID/smaps_rollup; for the VMs also the guest memory each touched, the resident part of the
guest-memory mapping) and the host's MemAvailable drop per instance.

Writes .build-bench/workloads.json and, unless --no-docs, the "Containers versus microVMs"
block of Docs/BENCHMARKS.md (between its workloads markers; Benchmarks/run.py keeps the block).

  python3 Benchmarks/workloads.py --swiftlet .build/release/swiftlet [--rounds 3] [--density 10]
"""
import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_BUILD = os.path.join(ROOT, ".build-bench")
DOCS_FILE = os.path.join(ROOT, "Docs", "BENCHMARKS.md")
PLOT_FILE = os.path.join(ROOT, "Docs", "workloads.svg")
BEGIN_MARK = "<!-- workloads:begin (Benchmarks/workloads.py rewrites this block) -->"
END_MARK = "<!-- workloads:end -->"
CACHE = os.environ.get("SWIFTLET_CACHE", "/var/cache/swiftlet")
SPAWN_MEASURE = os.path.join(BENCH_BUILD, "spawn-measure")
BOOT_DEADLINE = 400  # seconds for one Linux boot here (about 60-100 s on the development host)


def log(message):
    print(f"workloads: {message}", file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------
# One timed run: spawn -> first stdout byte, spawn -> exit, peak RSS of the tree


class Run:
    """A child whose stdout is a pipe read here; stdin is a pipe when `typed` is given. With
    `measure`, it runs under spawn-measure --inherit, whose report gives the command's own peak
    RSS (Linux keeps the peak of the address space left at execve: Python's, had Python forked
    the command itself)."""

    def __init__(self, argv, typed=None, env=None, measure=False):
        self.report = None
        if measure:
            handle, self.report = tempfile.mkstemp(prefix="spawn-measure-", suffix=".txt")
            os.close(handle)
            argv = [SPAWN_MEASURE, "--inherit", self.report, *argv]
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE if typed is not None else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                        start_new_session=True)
        if typed is not None:
            self.process.stdin.write(typed.encode())
            self.process.stdin.flush()
        self.output = b""
        self.first_byte_ms = None
        self.marks = {}

    def read_until(self, pattern, deadline_seconds):
        """Reads stdout until `pattern` (bytes regex) matches; ms after spawn, or None."""
        regex = re.compile(pattern)
        end = self.start + deadline_seconds
        fd = self.process.stdout.fileno()
        while not regex.search(self.output):
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                if self.process.poll() is not None:
                    return None
                continue
            data = os.read(fd, 65536)
            if not data:
                return None
            if self.first_byte_ms is None:
                self.first_byte_ms = (time.monotonic() - self.start) * 1000
            self.output += data
        return (time.monotonic() - self.start) * 1000

    def drain(self, seconds):
        """Reads what stdout has within `seconds` (so a chatty child never blocks on a full pipe)."""
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], seconds)
        if ready:
            data = os.read(fd, 65536)
            if data and self.first_byte_ms is None:
                self.first_byte_ms = (time.monotonic() - self.start) * 1000
            self.output += data

    def type(self, text):
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def finish(self, deadline_seconds):
        """Waits for the exit (killing the group at the deadline); returns (status, wall ms, maxrss KiB)."""
        end = self.start + deadline_seconds
        status = rusage = None
        while time.monotonic() < end:
            pid, raw, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid == self.process.pid:
                status, rusage = raw, usage
                break
            self.drain(min(0.2, max(0.0, end - time.monotonic())))
        wall = (time.monotonic() - self.start) * 1000
        if status is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            os.wait4(self.process.pid, 0)
            self.process.returncode = -9
            return None, wall, None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        rest = self.process.stdout.read()
        if rest:
            if self.first_byte_ms is None:
                self.first_byte_ms = wall
            self.output += rest
        maxrss = rusage.ru_maxrss
        if self.report:
            with open(self.report) as f:
                found = re.search(r"maxrss_kib=(\d+)", f.read())
            os.unlink(self.report)
            maxrss = int(found.group(1)) if found else None
        return self.process.returncode, wall, maxrss


def timed(argv, expect_output, expect_status=0, typed=None, env=None, deadline=BOOT_DEADLINE):
    """Runs argv once: first byte, the expected output line, exit, peak RSS."""
    run = Run(argv, typed=typed, env=env, measure=True)
    output_ms = run.read_until(expect_output, deadline) if expect_output else None
    status, wall, maxrss = run.finish(deadline)
    if status != expect_status or (expect_output and output_ms is None):
        err = run.process.stderr.read().decode(errors="replace")
        raise RuntimeError(f"{' '.join(argv)}: exit status {status}, output {run.output[-300:]!r}\n{err[-1500:]}")
    return {"first_byte_ms": run.first_byte_ms, "output_ms": output_ms, "exit_ms": wall, "maxrss_kib": maxrss}


# ---------------------------------------------------------------------------------------------
# Bundles and the snapshot


def make_bundle(directory, busybox, args, dev_tmpfs=False):
    """An OCI bundle: busybox-static root (read-only), process `args`, no terminal. With
    `dev_tmpfs`, /dev is a tmpfs as in runc's default spec (many containers at once on one root:
    without it each runc writes its /dev/ptmx link into the shared root and they race)."""
    root = os.path.join(directory, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    for sub in ("proc", "dev", "tmp", "sys"):
        os.makedirs(os.path.join(root, sub))
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "echo", "true", "sleep"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
        + ([{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}]
           if dev_tmpfs else []),
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return directory


def tiny_guests(swiftlet, rounds, work):
    """The floor of it all, with tiny guests: the C harness's KVM set-up (Benchmarks/kvm-floor.c)
    to its first guest instruction, `swiftlet boot` of the same guest, and the snapshot-counter
    guest restored (its first output after the restore) against its cold boot."""
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "Benchmarks"), "../.build-bench/kvm-floor",
                    "../.build-bench/first-instruction.elf", "../.build-bench/spawn-measure"], check=True)
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "Guests"), "tiny"], check=True)
    floor = os.path.join(BENCH_BUILD, "kvm-floor")
    first = os.path.join(BENCH_BUILD, "first-instruction.elf")
    counter = os.path.join(ROOT, "Guests", "build", "snapshot-counter.elf")
    snapshot = os.path.join(work, "tiny-snapshot")
    subprocess.run([swiftlet, "boot", "--kernel", counter, "--snapshot-when-ready", snapshot, "--timeout", "20"],
                   stdin=subprocess.DEVNULL, capture_output=True, check=True)

    def reported(argv, pattern):
        run = Run(argv, measure=True)
        status, wall, maxrss = run.finish(30)
        err = run.process.stderr.read().decode(errors="replace")
        found = re.search(pattern, err)
        if status != 0 or not found:
            raise RuntimeError(f"{' '.join(argv)}: status {status}: {err[-500:]}")
        return {"first_instruction_ms": float(found.group(1)), "exit_ms": wall, "maxrss_kib": maxrss}

    items = [
        ("C floor (kvm-floor.c): first instruction", lambda: reported(
            [floor, "-v", "-m", "128", first], r"boot time ([\d.]+) ms")),
        ("swiftlet boot: first instruction", lambda: reported(
            [swiftlet, "boot", "--kernel", first, "--memory", "128M", "--report-boot-time", "--timeout", "20"],
            r"boot time ([\d.]+) ms")),
        ("swiftlet restore (tiny): first output", lambda: timed(
            [swiftlet, "restore", snapshot, "--timeout", "20"], rb"ready\n", expect_status=40, deadline=30)),
        ("swiftlet boot (tiny, cold): first output", lambda: timed(
            [swiftlet, "boot", "--kernel", counter, "--timeout", "20"], rb"start\n", expect_status=40, deadline=30)),
    ]
    samples = {name: [] for name, _ in items}
    for rep in range(rounds):
        shift = rep % len(items)
        for name, item in items[shift:] + items[:shift]:
            samples[name].append(item())
    return {name: {key: median([s[key] for s in runs]) for key in runs[0]} for name, runs in samples.items()}


def take_snapshot(swiftlet, kernel, initrd, cmdline, flags, directory):
    """Boots the initramfs shell, waits until it answers a command, snapshots it on SIGUSR1."""
    argv = [swiftlet, "boot", "--kernel", kernel, "--initrd", initrd, "--memory", "128M", *flags,
            "--cmdline", cmdline, "--snapshot-on-signal", directory, "--timeout", str(BOOT_DEADLINE)]
    log("booting the shell to snapshot it: " + " ".join(argv))
    run = Run(argv, typed="")
    # Bytes typed before the guest's tty is open are lost: type once the shell has started.
    run.read_until(rb"Enter 'help' for a list of built-in commands", BOOT_DEADLINE)
    run.type("echo at-prompt-$((2+3))\n")
    if run.read_until(rb"\nat-prompt-5", BOOT_DEADLINE) is None:
        run.finish(1)
        raise RuntimeError(f"the shell never answered: {run.output[-500:]!r}")
    boot_seconds = (time.monotonic() - run.start)
    os.kill(run.process.pid, signal.SIGUSR1)
    status, _, _ = run.finish(boot_seconds + 120)
    if status != 0:
        raise RuntimeError(f"snapshot failed: status {status}: {run.process.stderr.read().decode()[-500:]}")
    return boot_seconds


def restore_once(swiftlet, snapshot):
    """restore -> first guest byte (the echo of the typed command) and -> the command's output."""
    run = Run([swiftlet, "restore", snapshot, "--timeout", "60"], typed="echo hel''lo\n", measure=True)
    output_ms = run.read_until(rb"\nhello", 60)
    first = run.first_byte_ms
    run.type("exit 0\n")
    status, wall, maxrss = run.finish(60)
    if output_ms is None or status != 0:
        raise RuntimeError(f"restore: status {status}, output {run.output[-300:]!r}")
    return {"first_byte_ms": first, "output_ms": output_ms, "exit_ms": wall, "maxrss_kib": maxrss}


def per_operation_costs(swiftlet, kernel, initrd, cmdline, flags, busybox):
    """What one system call and one fork+exec+exit cost inside the Linux guest (Guests/check-linux.sh:
    4000 read/write calls of `dd bs=1`, 10 runs of /bin/true, timed by busybox in the guest) and the
    same commands on the host, where a container's process runs them (many more iterations, so
    that busybox's 10 ms clock resolves them)."""
    result = subprocess.run([os.path.join(ROOT, "Guests", "check-linux.sh"), swiftlet, kernel, initrd,
                             str(BOOT_DEADLINE), cmdline, *flags], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=BOOT_DEADLINE + 60)
    syscall = re.search(r"one system call ([\d.]+) ms", result.stdout)
    fork = re.search(r"one fork\+exec\+exit of /bin/true ([\d.]+) s", result.stdout)
    if result.returncode != 0 or not syscall or not fork:
        raise RuntimeError(f"check-linux.sh failed ({result.returncode}): {result.stdout[-800:]}")
    blocks, forks = 200_000, 200
    start = time.monotonic()
    subprocess.run([busybox, "dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={blocks}"],
                   capture_output=True, check=True)
    host_syscall_ms = (time.monotonic() - start) * 1000 / (2 * blocks)
    start = time.monotonic()
    subprocess.run([busybox, "sh", "-c", f"i=0; while [ $i -lt {forks} ]; do {busybox} true; i=$((i+1)); done"],
                   check=True)
    host_fork_ms = (time.monotonic() - start) * 1000 / forks
    return {"guest_syscall_ms": float(syscall.group(1)), "guest_fork_exec_ms": float(fork.group(1)) * 1000,
            "host_syscall_ms": host_syscall_ms, "host_fork_exec_ms": host_fork_ms}


# ---------------------------------------------------------------------------------------------
# Memory of a running process


def smaps_rollup(pid):
    """PSS and private (clean + dirty) of a process, KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                values[m.group(1)] = int(m.group(2))
    return {"pss_kib": values.get("Pss", 0),
            "private_kib": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


def mapping_rss(pid, path_suffix):
    """Resident KiB of the mappings of a file whose path ends with `path_suffix`."""
    total, current = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.rstrip().endswith(path_suffix)
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def settle():
    """Drops the page cache's clean pages so MemAvailable readings start from the same place."""
    subprocess.run(["sync"])
    time.sleep(0.5)


def density_containers(runc, bundle, count):
    names = [f"swiftlet-density-{os.getpid()}-{i}" for i in range(count)]
    settle()
    before = mem_available_kib()
    start = time.monotonic()
    procs = [subprocess.Popen([runc, "run", "--detach", "--bundle", bundle, name], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name in names]
    failed = [p.stderr.read().decode() for p in procs if p.wait() != 0]
    up_seconds = time.monotonic() - start
    try:
        if failed:
            raise RuntimeError(f"runc run --detach failed: {failed[0][-500:]}")
        time.sleep(1)
        after = mem_available_kib()
        pids = []
        for name in names:
            state = json.loads(subprocess.run([runc, "state", name], capture_output=True, text=True, check=True).stdout)
            pids.append(state["pid"])
        memory = [smaps_rollup(pid) for pid in pids]
    finally:
        for name in names:
            subprocess.run([runc, "kill", name, "KILL"], stderr=subprocess.DEVNULL)
        for name in names:
            for _ in range(50):
                if subprocess.run([runc, "delete", "--force", name], stderr=subprocess.DEVNULL).returncode == 0:
                    break
                time.sleep(0.1)
    return {"count": count, "up_seconds": up_seconds,
            "pss_kib": median([m["pss_kib"] for m in memory]),
            "private_kib": median([m["private_kib"] for m in memory]),
            "memavailable_drop_kib": (before - after) / count}


def density_vms(swiftlet, snapshot, count):
    settle()
    before = mem_available_kib()
    start = time.monotonic()
    runs = [Run([swiftlet, "restore", snapshot, "--timeout", "600"], typed=f"echo up-$((1000+{i}))\n")
            for i in range(count)]
    try:
        for i, run in enumerate(runs):
            if run.read_until(rb"\nup-%d" % (1000 + i), 300) is None:
                raise RuntimeError(f"restored VM {i} never answered: {run.output[-300:]!r}")
        up_seconds = time.monotonic() - start
        time.sleep(1)
        after = mem_available_kib()
        memory = [smaps_rollup(run.process.pid) for run in runs]
        guest = [mapping_rss(run.process.pid, "/memory") for run in runs]
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.type("exit 0\n")
        for run in runs:
            run.finish(120)
    return {"count": count, "up_seconds": up_seconds,
            "pss_kib": median([m["pss_kib"] for m in memory]),
            "private_kib": median([m["private_kib"] for m in memory]),
            "guest_resident_kib": median(guest),
            "memavailable_drop_kib": (before - after) / count}


# ---------------------------------------------------------------------------------------------
# The run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swiftlet", default=os.path.join(ROOT, ".build/release/swiftlet"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; each boots Linux 3 times)")
    parser.add_argument("--density", type=int, default=10, help="idle instances of each started at once (default 10)")
    parser.add_argument("--kernel", default=os.path.join(CACHE, "kernel-current", "vmlinux"))
    parser.add_argument("--initrd", default=os.path.join(CACHE, "initramfs.cpio"))
    parser.add_argument("--cmdline", default="console=ttyS0 reboot=k panic=1")
    parser.add_argument("--flags", default="", help="extra swiftlet boot flags (e.g. --cpuid-mask emulated)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    swiftlet = os.path.abspath(args.swiftlet)
    runc = shutil.which("runc")
    busybox = shutil.which("busybox") or "/bin/busybox"
    for what, path in (("swiftlet", swiftlet), ("runc", runc), ("kernel", args.kernel), ("initramfs", args.initrd)):
        if not path or not os.path.exists(path):
            sys.exit(f"workloads: {what} not found ({path}); make bench LINUX=1 installs and builds it")
    boot_conf = os.path.join(os.path.dirname(args.kernel), "boot.conf")
    extra_cmdline, flags = "", args.flags.split()
    if os.path.exists(boot_conf):  # this host's extras (Docs/RUN.md): the same as swiftlet run uses
        with open(boot_conf) as f:
            for line in f:
                key, _, value = line.strip().partition(":")
                key, value = key.strip(), value.strip()
                if key.startswith("#"):
                    continue
                if key == "cmdline":
                    extra_cmdline = value
                elif key == "cpuid-mask" and value:
                    flags += ["--cpuid-mask", value]
    cmdline = f"{args.cmdline} {extra_cmdline}".strip()
    os.makedirs(BENCH_BUILD, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "cmdline": cmdline, "flags": flags,
               "load_start": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory(prefix="swiftlet-workloads-") as work:
        echo_bundle = make_bundle(os.path.join(work, "echo"), busybox, ["echo", "hello"])
        true_bundle = make_bundle(os.path.join(work, "true"), busybox, ["true"])
        sleep_bundle = make_bundle(os.path.join(work, "sleep"), busybox, ["sleep", "100000"], dev_tmpfs=True)
        log("tiny guests: the C floor, first instruction, tiny restore")
        results["tiny"] = tiny_guests(swiftlet, max(11, args.rounds), work)
        snapshot = os.path.join(work, "snapshot")
        results["snapshot_boot_seconds"] = take_snapshot(swiftlet, args.kernel, args.initrd, cmdline, flags, snapshot)
        counter = iter(range(1_000_000))

        def runc_run(bundle, output):
            return lambda: timed([runc, "run", "--bundle", bundle, f"swiftlet-wl-{os.getpid()}-{next(counter)}"], output)

        items = [
            ("runc run: echo hello", runc_run(echo_bundle, rb"hello\n")),
            ("swiftlet run: echo hello", lambda: timed([swiftlet, "run", "--bundle", echo_bundle], rb"hello\n")),
            ("runc run: true", runc_run(true_bundle, None)),
            ("swiftlet run: true", lambda: timed([swiftlet, "run", "--bundle", true_bundle], None)),
            ("swiftlet boot (cold): echo hello",
             lambda: timed([swiftlet, "boot", "--kernel", args.kernel, "--initrd", args.initrd, "--memory", "128M",
                            *flags, "--cmdline", f"{cmdline} -- /bin/echo hello", "--timeout", str(BOOT_DEADLINE)],
                           rb"\nhello")),
            ("swiftlet restore: echo hello", lambda: restore_once(swiftlet, snapshot)),
        ]
        # One untimed run of each swiftlet run first: it builds the bundles' root images into the cache.
        for name, item in items:
            if name.startswith("swiftlet run"):
                log(f"warm-up (root image cache): {name}")
                item()
        samples = {name: [] for name, _ in items}
        for rep in range(args.rounds):
            shift = rep % len(items)
            for name, item in items[shift:] + items[:shift]:
                log(f"round {rep + 1}/{args.rounds}: {name}")
                samples[name].append(item())
        results["runs"] = {name: {key: median([s[key] for s in runs]) for key in runs[0]}
                           for name, runs in samples.items()}
        results["samples"] = samples
        log("per operation: one system call and one fork+exec in the guest (check-linux.sh) and on the host")
        results["per_operation"] = per_operation_costs(swiftlet, args.kernel, args.initrd, cmdline, flags, busybox)
        with open(os.path.join(BENCH_BUILD, "workloads.json"), "w") as f:  # kept if density fails
            json.dump(results, f, indent=2)
        log(f"density: {args.density} containers")
        results["density_containers"] = density_containers(runc, sleep_bundle, args.density)
        log(f"density: {args.density} restored microVMs")
        results["density_vms"] = density_vms(swiftlet, snapshot, args.density)
    results["load_end"] = os.getloadavg()[0]
    with open(os.path.join(BENCH_BUILD, "workloads.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = render(results) + "\n![Spawn to command output, log scale](workloads.svg)\n"
    print(text)
    if not args.no_docs:
        write_block(text)
        with open(PLOT_FILE, "w") as f:
            f.write(plot(results))
        log("rewrote the workloads block of Docs/BENCHMARKS.md and Docs/workloads.svg")


def fmt(value, digits=1, unit=""):
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def render(r):
    runs = r["runs"]
    lines = [
        "## Containers versus microVMs: the same bundle and command",
        "",
        f"Generated by `Benchmarks/workloads.py` (`make bench LINUX=1`) on {r['date']}: medians of {r['rounds']} "
        "interleaved rounds in one run. The bundle is busybox-static on a read-only root; `runc run` and "
        "`swiftlet run` get the same directory. Peak RSS is wait4's ru_maxrss over the runtime's process tree "
        "(for a microVM it includes the guest memory the VM touched)."
        + (f" The host's 1-minute load average was {r['load_start']:.1f} at the start and {r['load_end']:.1f} at "
           "the end (2 cores): other work running beside it slows every row alike, the guests' most." if "load_start" in r
           else "") + (f" {r['note']}" if r.get("note") else ""),
        "",
        "| Run | Spawn → first output byte | Spawn → command output | Spawn → exit | Peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in runs.items():
        lines.append(f"| {name} | {fmt(m['first_byte_ms'], 1, ' ms')} | {fmt(m['output_ms'], 1, ' ms')} | "
                     f"{fmt(m['exit_ms'], 1, ' ms')} | {fmt((m['maxrss_kib'] or 0) / 1024, 1, ' MiB')} |")
    restore, cold, runc_echo = (runs.get("swiftlet restore: echo hello"), runs.get("swiftlet boot (cold): echo hello"),
                                runs.get("runc run: echo hello"))
    lines += [""]
    if restore and cold and runc_echo:
        lines += [
            f"- Restore of the snapshotted shell: the guest runs again (its first output byte) "
            f"{fmt(restore['first_byte_ms'], 1, ' ms')} after spawn, and `echo hello` typed at it prints after "
            f"{fmt(restore['output_ms'], 1, ' ms')}: {fmt(cold['output_ms'] / restore['output_ms'], 0, 'x')} sooner "
            f"than a cold boot of the same kernel and initramfs ({fmt(cold['output_ms'] / 1000, 1, ' s')}) and "
            f"{fmt(restore['output_ms'] / runc_echo['output_ms'], 1, 'x')} the time of `runc run` "
            f"({fmt(runc_echo['output_ms'], 1, ' ms')}). The snapshot boot itself took "
            f"{fmt(r['snapshot_boot_seconds'], 1, ' s')} to the shell.",
        ]
    tiny = r.get("tiny", {})
    if tiny:
        lines += [
            "",
            "Tiny guests, for the floor (medians of at least 11 rounds in the same run): the C harness "
            "(`Benchmarks/kvm-floor.c`: the same KVM set-up as Swiftlet, in-kernel irqchip, PIT, one memory "
            "slot) to the guest's first instruction, `swiftlet boot` of the same guest, and a tiny guest "
            "(`snapshot-counter`) restored from a snapshot against its cold boot (spawn → its first output).",
            "",
            "| Run | First instruction | First output | Spawn → exit | Peak RSS |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, m in tiny.items():
            lines.append(f"| {name} | {fmt(m.get('first_instruction_ms'), 2, ' ms')} | "
                         f"{fmt(m.get('output_ms'), 2, ' ms')} | {fmt(m['exit_ms'], 2, ' ms')} | "
                         f"{fmt((m['maxrss_kib'] or 0) / 1024, 1, ' MiB')} |")
        floor = tiny.get("C floor (kvm-floor.c): first instruction")
        if floor:
            lines += ["", f"- On this host, creating a VM and running its first instruction costs the C harness "
                      f"{fmt(floor['first_instruction_ms'], 2, ' ms')} ({fmt(floor['exit_ms'], 2, ' ms')} spawn → exit, "
                      "VM teardown included): no VMM, restored or not, can start faster here."]
    ops = r.get("per_operation")
    if ops:
        lines += [
            "",
            "What the emulating KVM costs per operation (same run; `Guests/check-linux.sh` in the guest, the same "
            "busybox commands on the host, which is what a container's process runs at):",
            "",
            "| Operation | In the microVM (this host's emulating KVM) | On the host (a container) | Ratio |",
            "|---|---:|---:|---:|",
            f"| one system call (`dd bs=1`, read + write) | {fmt(ops['guest_syscall_ms'] * 1000, 0, ' µs')} | "
            f"{fmt(ops['host_syscall_ms'] * 1000, 2, ' µs')} | {fmt(ops['guest_syscall_ms'] / ops['host_syscall_ms'], 0, 'x')} |",
            f"| one fork + exec + exit of `/bin/true` | {fmt(ops['guest_fork_exec_ms'], 0, ' ms')} | "
            f"{fmt(ops['host_fork_exec_ms'], 2, ' ms')} | {fmt(ops['guest_fork_exec_ms'] / ops['host_fork_exec_ms'], 0, 'x')} |",
            "",
            "- On hardware KVM a guest's user-mode system call does not leave the guest at all, so it costs what it "
            "costs on the host; the gap above is this host's (PVM: every guest kernel entry is emulated). "
            "Quoted, not measured here: Firecracker documents a boot to guest user space in as little as 125 ms "
            "and a snapshot restore (`load_snapshot`) of 1.5-2.7 ms for a 128 MiB guest on a 5.10 host; on such "
            "a host the Linux boot and `swiftlet run` rows above would shrink by two to three orders of "
            "magnitude, while the restore rows are already dominated by VM creation (the C floor).",
        ]
    dc, dv = r["density_containers"], r["density_vms"]
    lines += [
        "",
        f"Density: {dc['count']} idle instances of each started at once (containers: `runc run --detach` of "
        "`sleep`; microVMs: `swiftlet restore` of the snapshotted shell, each answering a typed command).",
        "",
        "| Instances | All up | PSS each | Private each | Guest memory touched each | MemAvailable drop each |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {dc['count']} containers (runc) | {fmt(dc['up_seconds'], 2, ' s')} | {fmt(dc['pss_kib'] / 1024, 2, ' MiB')} | "
        f"{fmt(dc['private_kib'] / 1024, 2, ' MiB')} | — | {fmt(dc['memavailable_drop_kib'] / 1024, 2, ' MiB')} |",
        f"| {dv['count']} restored microVMs (Swiftlet) | {fmt(dv['up_seconds'], 2, ' s')} | "
        f"{fmt(dv['pss_kib'] / 1024, 2, ' MiB')} | {fmt(dv['private_kib'] / 1024, 2, ' MiB')} | "
        f"{fmt(dv['guest_resident_kib'] / 1024, 2, ' MiB')} | {fmt(dv['memavailable_drop_kib'] / 1024, 2, ' MiB')} |",
        "",
        "- A restored VM maps the snapshot's memory file privately: pages it only reads are the page "
        "cache's, shared by every VM restored from that file (PSS divides them); pages it writes are its "
        "own (private). The container's figures are its process only (runc has exited).",
        f"- Command line of the Linux guest: `{r['cmdline']}`{' with ' + ' '.join(r['flags']) if r['flags'] else ''}.",
    ]
    return "\n".join(lines) + "\n"


def plot(r):
    """Horizontal bars on a log scale: spawn -> the command's output (exit for `true`), per run."""
    rows = []
    for name, m in r["runs"].items():
        value = m["output_ms"] if m["output_ms"] is not None else m["exit_ms"]
        rows.append((name + ("" if m["output_ms"] is not None else " (exit)"), value))
    floor = r.get("tiny", {}).get("C floor (kvm-floor.c): first instruction")
    if floor:
        rows.append(("C floor: VM created, first instruction", floor["first_instruction_ms"]))
    import math
    left, width, bar, gap = 330, 420, 18, 8
    low, high = 1.0, 10 ** math.ceil(math.log10(max(v for _, v in rows)))
    scale = lambda v: left + width * (math.log10(max(v, low)) - math.log10(low)) / (math.log10(high) - math.log10(low))
    height = 40 + len(rows) * (bar + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-weight="bold">Spawn → command output, ms (log scale; {r["date"]}, '
           f'medians of {r["rounds"]} rounds)</text>']
    decade = low
    while decade <= high:
        x = scale(decade)
        out.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{height - 25}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{decade:g}</text>')
        decade *= 10
    for i, (name, value) in enumerate(rows):
        y = 36 + i * (bar + gap)
        color = "#4a7ab5" if name.startswith("runc") else "#d9822b" if "floor" not in name else "#888"
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{name}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{scale(value) - left:.1f}" height="{bar}" fill="{color}"/>')
        out.append(f'<text x="{scale(value) + 4:.1f}" y="{y + 13}">{value:,.1f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_block(text):
    with open(DOCS_FILE) as f:
        doc = f.read()
    block = f"{BEGIN_MARK}\n{text}{END_MARK}"
    if BEGIN_MARK in doc and END_MARK in doc:
        head, rest = doc.split(BEGIN_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        doc = head + block + tail
    else:
        marker = "## Reading the results"
        doc = doc.replace(marker, block + "\n\n" + marker, 1) if marker in doc else doc + "\n" + block + "\n"
    with open(DOCS_FILE, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
