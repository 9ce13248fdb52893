#!/usr/bin/env python3
"""Swiftlet benchmarks: exit cost, VMM start and memory, microVM versus container start.

    python3 Benchmarks/run.py [--reps N] [--linux ...]      (or: make bench, make bench LINUX=1)

One run measures everything side by side: the items are interleaved (one of each per round,
the order rotated every round) and each figure is the median over the rounds. It

1. builds the benchmark guests and the C floor (Benchmarks/Makefile) and the release binary two
   ways (a static Swift standard library, and a fully static executable), compares the two on
   the first-instruction guest and benchmarks the better one;
2. measures
   - exit cost: (T(N) - T(0)) / N for guests doing N port writes (0x3FF) or N MMIO writes
     (0xC0000008), through Swiftlet and through Benchmarks/kvm-floor.c;
   - VMM start: process start to the guest's first instruction (the boot-timer write) and the
     whole process's wall time, for Swiftlet, the C floor and QEMU's microvm machine;
   - VMM memory: the child's peak RSS (wait4) minus the guest pages it touched;
   - container start: `runc run` of a busybox OCI bundle running /bin/true, and `unshare`;
   - with --linux, once: Swiftlet booting the guest kernel and initramfs to the init banner;
3. prints a table of medians and ratios and writes Docs/BENCHMARKS.md and Docs/benchmarks.svg
   (and the raw samples to .build-bench/results.json).

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_BUILD = os.path.join(ROOT, ".build-bench")
DOCS = os.path.join(ROOT, "Docs")
GUEST_MEMORY = "128M"
GUEST_MEMORY_KIB = 128 * 1024

# The two ways to build the release binary users install (see Docs/BENCHMARKS.md).
BUILDS = [
    {
        "name": "static-stdlib",
        "flags": ["--static-swift-stdlib"],
        "describe": "swift build -c release --static-swift-stdlib",
    },
    {
        "name": "static-executable",
        "flags": ["-Xswiftc", "-static-executable"],
        "describe": "swift build -c release -Xswiftc -static-executable",
    },
]

# Published by Firecracker (SPECIFICATION.md, on an i3.metal host): quoted, not measured.
FIRECRACKER_PUBLISHED = (
    "Firecracker publishes (SPECIFICATION.md, i3.metal host; quoted, not measured here): "
    "the VMM starts (up to API socket availability) within 8 CPU ms, and its VMM threads "
    "have a memory overhead of at most 5 MiB (2 vCPUs, 256 MiB guest)."
)

LINUX_NOT_REPRESENTATIVE = (
    "This host's KVM is kvm_pvm, which emulates guest kernel-mode code in KVM's instruction "
    "emulator (about three orders of magnitude slower than hardware virtualization): a Linux "
    "boot here is NOT representative of a microVM's start time on a hardware KVM host."
)


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------
# Running one child and measuring it


class Sample:
    """One run of one child process."""

    def __init__(self, wall_ms, status, maxrss_kib, stderr_text, spawn_realtime_ns):
        self.wall_ms = wall_ms
        self.status = status
        self.maxrss_kib = maxrss_kib
        self.stderr = stderr_text
        self.spawn_realtime_ns = spawn_realtime_ns


SPAWN_MEASURE = os.path.join(BENCH_BUILD, "spawn-measure")


def spawn(argv, expect=(0,)):
    """Runs argv through spawn-measure (Benchmarks/spawn-measure.c) with stdin and stdout on
    /dev/null and stderr in a temporary file: wall time from just before posix_spawn to wait4's
    return (CLOCK_MONOTONIC), and wait4's ru_maxrss. Spawning the child from a small static
    process, not from Python, keeps the interpreter's RSS out of the child's ru_maxrss."""
    with tempfile.NamedTemporaryFile(prefix="swiftlet-bench-") as err:
        out = subprocess.run([SPAWN_MEASURE, os.devnull, err.name, *argv], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, check=True).stdout
        err.seek(0)
        text = err.read().decode(errors="replace")
    fields = dict(item.split("=", 1) for item in out.split())
    code = int(fields["status"])
    if expect is not None and code not in expect:
        raise RuntimeError(f"{' '.join(argv)} exited with status {code}:\n{text[-2000:]}")
    return Sample(int(fields["wall_ns"]) / 1e6, code, int(fields["maxrss_kib"]), text,
                  int(fields["spawn_realtime_ns"]))


def parse_float(pattern, text):
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# Set-up: packages, builds, the OCI bundle


def run_checked(argv, **kwargs):
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, **kwargs)


def build_guests(exits):
    run_checked(["make", "-s", "-C", os.path.join(ROOT, "Benchmarks"), f"EXITS={exits}"])


def build_release(swift, build, package):
    """Builds one release variant into <package>/.build-release-<name>; returns its facts."""
    scratch = os.path.join(package, f".build-release-{build['name']}")
    argv = [swift, "build", "-c", "release", "--product", "swiftlet", "--package-path", package,
            "--scratch-path", scratch] + build["flags"]
    start = time.monotonic()
    run_checked(argv, cwd=package)
    seconds = time.monotonic() - start
    binary = os.path.join(scratch, "release", "swiftlet")
    stripped = os.path.join(BENCH_BUILD, f"swiftlet-{build['name']}.stripped")
    subprocess.run(["strip", "-o", stripped, binary], check=True)
    return {
        "name": build["name"],
        "describe": build["describe"],
        "binary": binary,
        "build_seconds": seconds,
        "size_bytes": os.path.getsize(binary),
        "stripped_bytes": os.path.getsize(stripped),
        "linking": "static" if is_static_elf(binary) else "dynamic (glibc), Swift runtime linked in",
    }


def is_static_elf(path):
    """Whether the ELF64 at path has no PT_INTERP (no dynamic loader)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def make_oci_bundle(busybox):
    """An OCI bundle under /tmp whose rootfs is busybox-static; its process runs /bin/true."""
    bundle = "/tmp/swiftlet-bench/oci-busybox"
    rootfs = os.path.join(bundle, "rootfs")
    shutil.rmtree(bundle, ignore_errors=True)
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "true"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "sh"))
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["root"]["readonly"] = True
    config["hostname"] = "bench"
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return bundle


# ---------------------------------------------------------------------------------------------
# The benchmark items: each returns a dict of figures for one run


class Bench:
    def __init__(self, args, tools):
        self.args = args
        self.binary = None  # the Swiftlet build being benchmarked
        self.tools = tools
        self.guest = lambda name: os.path.join(BENCH_BUILD, name)
        self.floor = os.path.join(BENCH_BUILD, "kvm-floor")
        self.runc_counter = 0

    # Swiftlet ---------------------------------------------------------------------------------
    def swiftlet_boot(self, binary, guest, extra=()):
        return spawn([binary, "boot", "--kernel", self.guest(guest), "--memory", GUEST_MEMORY,
                      "--timeout", "60", *extra])

    def swiftlet_first(self, binary):
        s = self.swiftlet_boot(binary, "first-instruction.elf", ["--report-boot-time", "--report-memory"])
        resident = parse_float(r"guest resident (\d+) KiB", s.stderr)
        boot = parse_float(r"boot time ([\d.]+) ms", s.stderr)
        if boot is None or resident is None:
            raise RuntimeError(f"swiftlet did not report its boot time and memory:\n{s.stderr}")
        return {"wall_ms": s.wall_ms, "first_instruction_ms": boot, "maxrss_kib": s.maxrss_kib,
                "guest_kib": resident, "vmm_kib": s.maxrss_kib - resident}

    def swiftlet_cli(self, binary):
        """The front end alone: `swiftlet --version` parses its arguments and exits, no VM."""
        s = spawn([binary, "--version"])
        return {"wall_ms": s.wall_ms, "maxrss_kib": s.maxrss_kib}

    def swiftlet_exits(self, binary, guest):
        return {"wall_ms": self.swiftlet_boot(binary, guest).wall_ms}

    # The C floor ------------------------------------------------------------------------------
    def floor_first(self):
        s = spawn([self.floor, "-v", "-m", "128", self.guest("first-instruction.elf")])
        resident = parse_float(r"guest resident (\d+) KiB", s.stderr)
        return {"wall_ms": s.wall_ms, "first_instruction_ms": parse_float(r"boot time ([\d.]+) ms", s.stderr),
                "maxrss_kib": s.maxrss_kib, "guest_kib": resident, "vmm_kib": s.maxrss_kib - resident}

    def floor_exits(self, guest):
        return {"wall_ms": spawn([self.floor, "-m", "128", self.guest(guest)]).wall_ms}

    # QEMU -------------------------------------------------------------------------------------
    def qemu_argv(self, exit_device=True, trace=False):
        argv = [self.tools["qemu"], "-M", "microvm", "-enable-kvm", "-cpu", self.tools["qemu_cpu"],
                "-m", GUEST_MEMORY, "-nodefaults", "-no-user-config", "-nographic",
                "-kernel", self.guest("first-instruction.elf")]
        if exit_device:
            argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        if trace:
            argv += ["-msg", "timestamp=on", "-trace", "kvm_run_exit"]
        return argv

    def qemu_first(self):
        # isa-debug-exit: the guest's write of 0 to port 0xF4 ends QEMU with status 1.
        s = spawn(self.qemu_argv(), expect=(1,))
        return {"wall_ms": s.wall_ms, "maxrss_kib": s.maxrss_kib}

    def qemu_first_traced(self):
        """Spawn to the guest's first instruction: the time of the guest's port-0x440 exit in
        QEMU's kvm_run_exit trace (CLOCK_REALTIME, microseconds), minus the spawn time. The
        guest's writes to 0x440 and 0xF4 are the last two exits (0xF4 ends QEMU); the exits
        before them are the qboot firmware's."""
        s = spawn(self.qemu_argv(trace=True), expect=(1,))
        stamps = [int(sec) * 1_000_000_000 + int(usec) * 1000
                  for sec, usec in re.findall(r"@(\d+)\.(\d{6}):kvm_run_exit cpu_index 0, reason 2\b", s.stderr)]
        if len(stamps) < 2:
            raise RuntimeError(f"no kvm_run_exit trace from QEMU:\n{s.stderr[-2000:]}")
        return {"first_instruction_ms": (stamps[-2] - s.spawn_realtime_ns) / 1e6,
                "firmware_first_exit_ms": (stamps[0] - s.spawn_realtime_ns) / 1e6,
                "exits": len(stamps)}

    def running_snapshot(self, vmm):
        """The memory of a VMM that keeps running: the first-instruction-halt guest writes the
        boot timer and halts. Reads /proc/PID/smaps_rollup (Rss, Anonymous) and, in
        /proc/PID/smaps, the Rss of the guest-RAM mapping (the private read-write mapping of
        exactly the guest's size), then stops the VMM with SIGTERM."""
        guest = self.guest("first-instruction-halt.elf")
        if vmm == "swiftlet":
            argv = [self.binary, "boot", "--kernel", guest, "--memory", GUEST_MEMORY, "--timeout", "30"]
        elif vmm == "floor":
            argv = [self.floor, "-m", "128", guest]
        else:
            argv = self.qemu_argv(exit_device=False, trace=True)
            argv[argv.index("-kernel") + 1] = guest
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                # Until the guest sits in its final hlt: for QEMU, until its exits (the qboot
                # firmware's, then the guest's one) stop; the others take well under this.
                time.sleep(0.5)
                if vmm == "qemu":
                    seen, deadline = -1, time.monotonic() + 20
                    while time.monotonic() < deadline:
                        err.seek(0)
                        count = err.read().count(b"kvm_run_exit")
                        if count == seen and count >= 2:
                            break
                        seen = count
                        time.sleep(0.3)
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[0]} ended early with status {proc.returncode}")
                with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                    rollup = f.read()
                guest_kib = 0
                with open(f"/proc/{proc.pid}/smaps") as f:
                    mapping = size = None
                    for line in f:
                        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                            mapping, size = line.split(), None
                        elif line.startswith("Size:"):
                            size = int(line.split()[1])
                        elif line.startswith("Rss:") and size == GUEST_MEMORY_KIB and mapping[1] == "rw-p":
                            guest_kib = max(guest_kib, int(line.split()[1]))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        field = lambda name: int(re.search(rf"^{name}:\s+(\d+) kB", rollup, re.M).group(1))
        rss, anonymous = field("Rss"), field("Anonymous")
        return {"rss_kib": rss, "guest_kib": guest_kib, "private_vmm_kib": anonymous - guest_kib,
                "file_kib": rss - anonymous}

    # Containers and processes -----------------------------------------------------------------
    def runc(self):
        self.runc_counter += 1
        name = f"swiftlet-bench-{os.getpid()}-{self.runc_counter}"
        return {"wall_ms": spawn([self.tools["runc"], "run", "--bundle", self.tools["bundle"], name]).wall_ms}

    def unshare(self):
        return {"wall_ms": spawn([self.tools["unshare"], "-fmpinu", "--mount-proc", "true"]).wall_ms}

    def static_noop(self):
        s = spawn([self.tools["busybox"], "true"])
        return {"wall_ms": s.wall_ms, "maxrss_kib": s.maxrss_kib}


def run_interleaved(items, reps, label):
    """Runs every item once per round, rotating the order each round; returns name -> samples."""
    results = {name: [] for name, _ in items}
    for rep in range(reps):
        shift = rep % len(items)
        for name, run in items[shift:] + items[:shift]:
            results[name].append(run())
        log(f"{label}: round {rep + 1}/{reps} done")
    return results


def medians(samples):
    """Per figure, the median over the samples (dicts of numbers)."""
    keys = samples[0].keys() if samples else []
    return {key: median([s[key] for s in samples if s.get(key) is not None]) for key in keys}


# ---------------------------------------------------------------------------------------------
# The Linux comparison (--linux): one boot, timed from the serial console


def linux_boot(binary, args):
    argv = [binary, "boot", "--kernel", args.kernel, "--initrd", args.initrd, "--memory", "256M",
            "--cmdline", args.linux_cmdline, "--timeout", str(args.linux_timeout), "--report-boot-time"]
    argv += args.linux_flags.split() if args.linux_flags else []
    log("Linux boot (this takes minutes here): " + " ".join(argv))
    milestones = {"Linux version": None, "Run /init as init process": None, "Swiftlet guest init: ready": None}
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            for key in milestones:
                if milestones[key] is None and key in line:
                    milestones[key] = time.monotonic() - start
                    log(f"Linux: '{key}' after {milestones[key]:.1f} s")
        proc.wait()
        total = time.monotonic() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    boot_timer = parse_float(r"boot time ([\d.]+) ms", stderr)
    return {"kernel_line_s": milestones["Linux version"], "run_init_s": milestones["Run /init as init process"],
            "banner_s": milestones["Swiftlet guest init: ready"],
            "boot_timer_s": boot_timer / 1000 if boot_timer is not None else None,
            "total_s": total, "status": proc.returncode}


# ---------------------------------------------------------------------------------------------
# Reporting


def machine_facts(swift, tools):
    def first_line(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout.strip()
            return out.splitlines()[0] if out else "unknown"
        except OSError:
            return "unknown"

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    os_name = "unknown"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            match = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            os_name = match.group(1) if match else os_name
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_kib / (1024 * 1024),
        "kernel": platform.release(),
        "os": os_name,
        "kvm": kvm_implementation(),
        "emulated_kvm": os.path.isdir("/sys/module/kvm_pvm"),
        "swift": first_line([swift, "--version"]),
        "qemu": first_line([tools["qemu"], "--version"]) if tools.get("qemu") else "not installed",
        "runc": first_line([tools["runc"], "--version"]) if tools.get("runc") else "not installed",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def kvm_implementation():
    if os.path.isdir("/sys/module/kvm_pvm"):
        native = "/sys/module/kvm_pvm/parameters/pvm_native"
        detail = ""
        if os.path.exists(native):
            with open(native) as f:
                detail = f", pvm_native={f.read().strip()}"
        return f"kvm_pvm (PVM: no hardware virtualization; guest kernel-mode code emulated{detail})"
    for module, name in (("kvm_intel", "Intel VT-x"), ("kvm_amd", "AMD-V")):
        if os.path.isdir(f"/sys/module/{module}"):
            return f"{module} ({name} hardware virtualization)"
    return "unknown"


def fmt(value, digits=1, unit=""):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def build_tables(r):
    """The result tables as (title, header, rows, notes) for the terminal and the Markdown file."""
    sw, fl, qe = r["swiftlet_first"], r["floor_first"], r["qemu_first"]
    mib = lambda kib: kib / 1024 if kib is not None else None
    n = r["exits"]
    tables = []

    rows = []
    for kind, label in (("pio", "PIO exit (out to port 0x3FF)"), ("mmio", "MMIO exit (write to 0xC0000008)")):
        s, f = r["exit_cost_us"]["swiftlet"][kind], r["exit_cost_us"]["floor"][kind]
        rows.append([label, fmt(s, 2, " µs"), fmt(f, 2, " µs"), ratio(s, f), "≤ 1.05x"])
    tables.append((
        "1. Exit cost, per exit",
        ["Exit", "Swiftlet", "C floor (kvm-floor.c)", "Swiftlet ÷ floor", "Goal"],
        rows,
        [f"(T({n}) − T(0)) / {n}: whole-process wall times of a guest doing {n} unrolled writes and "
         "of the same guest doing none, paired per round; the median of the rounds. Process start, "
         "VM set-up and tear-down cancel out. Each exit includes the host KVM's emulation of the "
         "writing instruction, the same for both."],
    ))

    qt, run = r["qemu_traced"], r["running"]
    rows = [
        ["Process start → first guest instruction", fmt(sw["first_instruction_ms"], 2, " ms"),
         fmt(fl["first_instruction_ms"], 2, " ms"), fmt(qt["first_instruction_ms"], 2, " ms"),
         ratio(sw["first_instruction_ms"], qt["first_instruction_ms"]), "≤ 3 ms"],
        ["  fastest round", fmt(r["fastest"]["swiftlet"], 2, " ms"), fmt(r["fastest"]["floor"], 2, " ms"),
         fmt(r["fastest"]["qemu"], 2, " ms"), ratio(r["fastest"]["swiftlet"], r["fastest"]["qemu"]), ""],
        ["Whole process, spawn → exit (first-instruction guest)", fmt(sw["wall_ms"], 2, " ms"),
         fmt(fl["wall_ms"], 2, " ms"), fmt(qe["wall_ms"], 2, " ms"), ratio(sw["wall_ms"], qe["wall_ms"]), ""],
        ["VMM memory: peak RSS − guest pages touched", fmt(mib(sw["vmm_kib"]), 2, " MiB"),
         fmt(mib(fl["vmm_kib"]), 2, " MiB"), fmt(mib(r["qemu_vmm_kib"]), 2, " MiB"),
         ratio(sw["vmm_kib"], r["qemu_vmm_kib"]), "≤ 4 MiB"],
        ["  peak RSS (wait4 ru_maxrss)", fmt(mib(sw["maxrss_kib"]), 2, " MiB"), fmt(mib(fl["maxrss_kib"]), 2, " MiB"),
         fmt(mib(qe["maxrss_kib"]), 2, " MiB"), ratio(sw["maxrss_kib"], qe["maxrss_kib"]), ""],
        ["  the same binary without a VM (`swiftlet --version`): peak RSS",
         fmt(mib(r["swiftlet_cli"]["maxrss_kib"]), 2, " MiB"), "", "", "", ""],
        ["  guest pages touched", fmt(sw["guest_kib"], 0, " KiB"), fmt(fl["guest_kib"], 0, " KiB"),
         fmt(run["qemu"]["guest_kib"], 0, " KiB"), "", ""],
        ["While running: private VMM memory (anonymous − guest)", fmt(mib(run["swiftlet"]["private_vmm_kib"]), 2, " MiB"),
         fmt(mib(run["floor"]["private_vmm_kib"]), 2, " MiB"), fmt(mib(run["qemu"]["private_vmm_kib"]), 2, " MiB"),
         ratio(run["swiftlet"]["private_vmm_kib"], run["qemu"]["private_vmm_kib"]), ""],
        ["While running: file-backed (executable, libraries)", fmt(mib(run["swiftlet"]["file_kib"]), 2, " MiB"),
         fmt(mib(run["floor"]["file_kib"]), 2, " MiB"), fmt(mib(run["qemu"]["file_kib"]), 2, " MiB"),
         ratio(run["swiftlet"]["file_kib"], run["qemu"]["file_kib"]), ""],
    ]
    tables.append((
        "2. VMM start and memory (first-instruction guest, 128 MiB, 1 vCPU)",
        ["Measure", f"Swiftlet ({r['build']['name']})", "C floor", "QEMU microvm", "Swiftlet ÷ QEMU", "Goal"],
        rows,
        ["First instruction: Swiftlet's and the floor's boot timer (from main() to the guest's write of 123 "
         "to port 0x440); QEMU: from the harness's posix_spawn to the guest's port-0x440 exit in QEMU's "
         f"kvm_run_exit trace (so it also counts exec and dynamic loading; QEMU's qboot firmware runs "
         f"first, {fmt(qt.get('exits'), 0)} exits in all, its first exit after "
         f"{fmt(qt.get('firmware_first_exit_ms'), 2, ' ms')}; the traced runs are separate from the "
         "untraced ones timed whole, and tracing slows QEMU a little). A static no-op process (busybox true) "
         f"takes {fmt(r['static_noop']['wall_ms'], 2, ' ms')} from spawn to exit here.",
         "VMM memory = the child's peak RSS (wait4 ru_maxrss, the child spawned from a small static "
         f"helper; a static no-op spawned the same way peaks at {fmt(r['static_noop'].get('maxrss_kib'), 0, ' KiB')}) "
         "minus the guest pages touched. Swiftlet (--report-memory) and kvm-floor (-v) count those "
         "with mincore(2) over guest RAM at the end of the run. QEMU does not report them: they are "
         "the Rss of its guest-RAM mapping (the private mapping of exactly 128 MiB) in /proc/PID/smaps "
         "while it runs the same guest minus the two ending writes (first-instruction-halt). QEMU backs "
         "guest RAM with transparent huge pages, so the few KiB that qboot and the guest touch count as "
         "whole 2 MiB pages, all subtracted; its firmware ROM and all other mappings count as VMM memory.",
         "While running: /proc/PID/smaps_rollup of each VMM running the first-instruction-halt guest "
         "(median of 3). Private = Anonymous minus the guest-RAM mapping's Rss: what each further VM "
         "costs. File-backed pages (the executable's and libraries' text and data read from the page "
         "cache) are counted in RSS but shared by every VMM process running the same binary.",
         FIRECRACKER_PUBLISHED],
    ))

    rows = [
        ["Swiftlet microVM, first-instruction guest: spawn → exit", fmt(sw["wall_ms"], 2, " ms"), "1.00x"],
        ["Swiftlet microVM: start → first guest instruction (boot timer)",
         fmt(sw["first_instruction_ms"], 2, " ms"), ratio(sw["first_instruction_ms"], sw["wall_ms"])],
        ["(b) runc run: busybox OCI bundle, /bin/true", fmt(r["runc"]["wall_ms"], 2, " ms"),
         ratio(r["runc"]["wall_ms"], sw["wall_ms"])],
        ["(c) unshare -fmpinu --mount-proc true", fmt(r["unshare"]["wall_ms"], 2, " ms"),
         ratio(r["unshare"]["wall_ms"], sw["wall_ms"])],
        ["static no-op process (busybox true)", fmt(r["static_noop"]["wall_ms"], 2, " ms"),
         ratio(r["static_noop"]["wall_ms"], sw["wall_ms"])],
    ]
    notes = []
    linux = r.get("linux")
    if linux:
        reached = linux["banner_s"] is not None
        cell = fmt(linux["banner_s"], 1, " s") if reached else (
            f"not reached (Run /init: {fmt(linux['run_init_s'], 1, ' s')})")
        rows.insert(0, ["(a) Swiftlet: Linux kernel + initramfs to the init banner", cell,
                        ratio(linux["banner_s"] * 1000, sw["wall_ms"]) if reached else ""])
        status = {0: "0, the guest ended normally", 8: "8, guest panic", 124: "124, --timeout reached"}.get(
            linux["status"], str(linux["status"]))
        notes.append(
            f"(a) one boot of {os.path.basename(r['linux_kernel'])} with the initramfs, timed from spawn on the "
            f"serial console: first kernel line {fmt(linux['kernel_line_s'], 1, ' s')}, 'Run /init as init "
            f"process' {fmt(linux['run_init_s'], 1, ' s')}, init banner {fmt(linux['banner_s'], 1, ' s')}, "
            f"boot timer {fmt(linux['boot_timer_s'], 1, ' s')}; the VM ended after "
            f"{fmt(linux['total_s'], 1, ' s')} (status {status}).")
        if not reached and r["machine"]["emulated_kvm"]:
            notes.append("On this host no guest user-mode system call works (the emulating KVM fails the "
                         "guest's first one and the kernel panics), so init cannot print its banner: "
                         "'Run /init as init process' is the last milestone a Linux guest reaches here.")
    else:
        notes.append("(a) Swiftlet booting the Guests kernel and initramfs to the init banner runs only "
                     "with --linux (make bench LINUX=1).")
    if r["machine"]["emulated_kvm"]:
        notes.append(LINUX_NOT_REPRESENTATIVE)
    notes.append("Container times are spawn → exit of the runtime; the workload (/bin/true) is trivial, "
                 "like the first-instruction guest's three port writes.")
    tables.append(("3. MicroVM versus containers: time until the workload has run", ["Workload", "Median", "÷ Swiftlet microVM"], rows, notes))
    e2e = r.get("kernel_e2e")
    if e2e:
        tables.append(kernel_e2e_table(e2e))
    return tables


def kernel_e2e_table(e2e):
    """Table 4: the same Linux boot (ext4 root on virtio-blk, virtio-net) under Swiftlet and QEMU."""
    sw, qemu = e2e.get("swiftlet", {}), e2e.get("qemu", {})
    rows = [
        ["spawn → 'Run /sbin/init as init process'", fmt(sw.get("init_seconds"), 1, " s"),
         fmt(qemu.get("init_seconds"), 1, " s"),
         ratio(sw["init_seconds"], qemu["init_seconds"]) if sw.get("init_seconds") and qemu.get("init_seconds") else ""],
        ["ping round trip from the namespace (average of 3)", fmt(sw.get("ping_ms"), 2, " ms"),
         fmt(qemu.get("ping_ms"), 2, " ms"),
         ratio(sw["ping_ms"], qemu["ping_ms"]) if sw.get("ping_ms") and qemu.get("ping_ms") else ""],
    ]
    notes = [f"From `make test-kernel` at {e2e.get('time', '?')}: {os.path.basename(e2e.get('kernel', '?'))}, "
             f"1 vCPU, 128 MiB, read-only ext4 root on virtio-blk, virtio-net on a tap in a network namespace, "
             f"command line `{e2e.get('cmdline', '?')}`. One boot each, one after the other."]
    if e2e.get("emulated_kvm"):
        notes.append(LINUX_NOT_REPRESENTATIVE)
    return ("4. Linux end to end: Swiftlet versus QEMU microvm, same kernel, disk and network",
            ["Milestone", "Swiftlet", "QEMU microvm", "Swiftlet ÷ QEMU"], rows, notes)


def render_text(tables):
    out = []
    for title, header, rows, notes in tables:
        widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
        out.append(title)
        line = lambda cells: "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                              for i, (c, w) in enumerate(zip(cells, widths)))
        out.append(line(header))
        out.append("  " + "  ".join("-" * w for w in widths))
        out += [line(row) for row in rows]
        out += ["  * " + note for note in notes]
        out.append("")
    return "\n".join(out)


def render_markdown_table(header, rows, text_columns=1):
    """A Markdown table: the first text_columns columns left-aligned, the rest (figures) right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


WORKLOADS_BEGIN = "<!-- workloads:begin"
WORKLOADS_END = "<!-- workloads:end -->"


def existing_workloads_block(path):
    """The workloads block of the current Docs/BENCHMARKS.md (Benchmarks/workloads.py), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        doc = f.read()
    start, end = doc.find(WORKLOADS_BEGIN), doc.find(WORKLOADS_END)
    return doc[start:end + len(WORKLOADS_END)] if 0 <= start < end else None


def write_markdown(r, tables, path):
    m, b = r["machine"], r["build"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`Benchmarks/run.py`) on {m['date']}. All figures are medians of "
        f"{r['reps']} interleaved rounds in one run; ratios are Swiftlet ÷ the reference.",
        "",
        "![Benchmark chart](benchmarks.svg)",
        "",
    ]
    if m["emulated_kvm"]:
        lines += [f"> **Note.** {LINUX_NOT_REPRESENTATIVE} The same applies, less strongly, to every "
                  "figure here: each exit includes the emulation of the guest's instruction, and this "
                  "host's KVM takes milliseconds to add a memory slot and to tear a VM down, which the "
                  "C floor pays as well.", ""]
    for title, header, rows, notes in tables:
        lines += [f"## {title}", "", render_markdown_table(header, rows), ""]
        lines += [f"- {note}" for note in notes] + [""]
    # Benchmarks/workloads.py's block (containers versus microVMs on one bundle, Linux guests)
    # is measured by its own run (`make bench LINUX=1`): kept as it is.
    workloads = existing_workloads_block(path)
    if workloads:
        lines += [workloads, ""]
    lines += ["## Reading the results", ""] + [f"- {point}" for point in reading(r)] + [""]
    lines += [
        "## The release build",
        "",
        "Both ways of building the binary users install were built and compared on the "
        "first-instruction guest (medians of the comparison rounds); the leaner one (lower VMM memory; "
        "within 5 %, the faster start) is the one benchmarked above.",
        "",
        render_markdown_table(
            ["Build", "Command", "Linking", "Binary", "Stripped", "Build time", "First instruction", "Peak RSS", "VMM memory"],
            [[c["name"] + (" (benchmarked)" if c["name"] == b["name"] else ""), f"`{c['describe']}`", c["linking"],
              fmt(c["size_bytes"] / 2**20, 1, " MiB"), fmt(c["stripped_bytes"] / 2**20, 1, " MiB"),
              fmt(c["build_seconds"], 0, " s"), fmt(c["first_instruction_ms"], 2, " ms"),
              fmt(c["maxrss_kib"] / 1024, 2, " MiB"), fmt(c["vmm_kib"] / 1024, 2, " MiB")]
             for c in r["builds"]], text_columns=3),
        "",
        f"Benchmarked: **{b['name']}** — `{b['describe']}`{' (builds were incremental)' if r['incremental_builds'] else ''}.",
        "",
        "## The machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']:.1f} GiB",
        f"- OS: {m['os']}, Linux {m['kernel']}",
        f"- KVM: {m['kvm']}",
        f"- Swift: {m['swift']}",
        f"- QEMU: {m['qemu']} (`-M microvm -enable-kvm -cpu {r['qemu_cpu']} -m 128M -nodefaults "
        "-no-user-config -nographic -kernel first-instruction.elf -device isa-debug-exit,iobase=0xf4,iosize=4`)",
        f"- runc: {m['runc']}",
        f"- Guest: 128 MiB, 1 vCPU; exit-cost guests with N = {r['exits']}",
        f"- Load average (1 min) at the start and the end of the run: {r['load'][0]:.2f}, {r['load'][1]:.2f} "
        "(other work on the host adds noise to every figure)",
        "",
        "## How it is measured",
        "",
        "- `Benchmarks/guests/`: the exit-cost guests (`exit-pio.c`, `exit-mmio.c`, built with N = 0 and "
        f"N = {r['exits']} unrolled writes) and the first-instruction guest (`first-instruction.S`: its first "
        "instructions write 123 to port 0x440, 0 to port 0xF4, 0xFE to port 0x64; an ELF64 with a PVH "
        "entry note, so the same file boots in Swiftlet (64-bit entry) and in QEMU's microvm (32-bit PVH "
        "entry, same bytes)).",
        "- `Benchmarks/kvm-floor.c`: the floor, a minimal C `KVM_RUN` loop that builds the VM as Swiftlet "
        "does (irqchip, PIT, same GDT, page tables and long-mode registers) and does nothing on an exit "
        "but look for the i8042 reset.",
        "- Every child runs with stdin and stdout on /dev/null; wall time is CLOCK_MONOTONIC from just "
        "before `posix_spawn` to `wait4`'s return; peak RSS is `wait4`'s `ru_maxrss`.",
        "- Swiftlet's memory: `swiftlet boot --report-memory` prints the guest's resident memory "
        "(`GuestMemory.residentBytes()`, mincore(2)), subtracted from the peak RSS.",
        "",
        "## Reproduce",
        "",
        "```",
        "make bench            # installs what it needs (qemu-system-x86, runc, busybox-static, util-linux),",
        "                      # builds both release variants and the guests, runs everything, rewrites this file",
        "make bench LINUX=1    # also boots the guest kernel and initramfs to the init banner (minutes here)",
        "python3 Benchmarks/run.py --help",
        "```",
        "",
        "Raw samples of the last run: `.build-bench/results.json`.",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def reading(r):
    """Plain statements derived from this run's figures, for BENCHMARKS.md."""
    sw, fl, qe, qt, run = r["swiftlet_first"], r["floor_first"], r["qemu_first"], r["qemu_traced"], r["running"]
    points = []
    for kind, label in (("pio", "PIO"), ("mmio", "MMIO")):
        s, f = r["exit_cost_us"]["swiftlet"][kind], r["exit_cost_us"]["floor"][kind]
        verdict = "meets" if s <= f * 1.05 else "misses"  # on the unrounded ratio, shown to 3 places
        ss, fs = r["exit_cost_spread_percent"]["swiftlet"][kind], r["exit_cost_spread_percent"]["floor"][kind]
        # Standard error of a median of n rounds, from the spread taken as a normal IQR.
        se = lambda spread: 1.2533 * (2 * spread / 1.349) / r["reps"] ** 0.5
        uncertainty = (se(ss) ** 2 + se(fs) ** 2) ** 0.5
        points.append(f"{label} exit: Swiftlet {s:.2f} µs against the floor's {f:.2f} µs ({s / f:.3f}x): it "
                      f"{verdict} the 1.05x goal in this run. Round-to-round spread (half the interquartile "
                      f"range): ±{ss:.0f} % for Swiftlet, ±{fs:.0f} % for the floor, so the ratio is known "
                      f"to about ±{uncertainty:.0f} % from one run of {r['reps']} rounds.")
    extra = sw["first_instruction_ms"] - fl["first_instruction_ms"]
    points.append(
        f"Start: Swiftlet reaches the guest's first instruction {sw['first_instruction_ms']:.1f} ms after main(), "
        f"{extra:+.1f} ms from the C floor's {fl['first_instruction_ms']:.1f} ms, and "
        f"{qt['first_instruction_ms'] / sw['first_instruction_ms']:.1f}x sooner than QEMU "
        f"({qt['first_instruction_ms']:.1f} ms). The floor does nothing but the KVM calls, so its figure is this "
        "host's own price for a VM" + (
            ": on this host KVM_SET_USER_MEMORY_REGION alone took 5-10 ms in strace, and VM tear-down at exit "
            "tens of ms, which is why the 3 ms goal is out of reach here for any VMM." if r["machine"]["emulated_kvm"] else "."))
    points.append(
        f"Memory: Swiftlet's peak RSS minus guest pages is {sw['vmm_kib'] / 1024:.1f} MiB against QEMU's "
        f"{r['qemu_vmm_kib'] / 1024:.1f} MiB; while running, {run['swiftlet']['file_kib'] / 1024:.1f} MiB of "
        f"Swiftlet's RSS is its executable's pages from the page cache (shared by all Swiftlet processes) and "
        f"{run['swiftlet']['private_vmm_kib'] / 1024:.2f} MiB is private, against "
        f"{run['qemu']['private_vmm_kib'] / 1024:.1f} MiB private for QEMU. The binary alone, parsing "
        f"`--version` and exiting without a VM, peaks at {r['swiftlet_cli']['maxrss_kib'] / 1024:.1f} MiB in "
        f"{r['swiftlet_cli']['wall_ms']:.1f} ms: the Swift runtime and the executable's own pages (the front end "
        "parses its arguments by hand, without swift-argument-parser or Foundation); building and running the VM "
        "adds the rest of Swiftlet's peak RSS.")
    points.append(
        f"Containers: a Swiftlet microVM running a trivial guest start to finish ({sw['wall_ms']:.0f} ms) compares "
        f"with runc running /bin/true ({r['runc']['wall_ms']:.0f} ms); bare namespaces (unshare, "
        f"{r['unshare']['wall_ms']:.1f} ms) are cheaper than either.")
    return points


def svg_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(r, path):
    """A horizontal bar chart, one panel per kind of figure, each with its own scale."""
    sw, fl, qe, qt = r["swiftlet_first"], r["floor_first"], r["qemu_first"], r["qemu_traced"]
    colors = {"swiftlet": "#F05138", "floor": "#8A8A8A", "qemu": "#3B6FB6", "container": "#3E9B5B"}
    name = f"Swiftlet ({r['build']['name']})"
    panels = [
        ("Exit cost (µs per exit)", "µs", None, [
            (f"{name}: PIO", r["exit_cost_us"]["swiftlet"]["pio"], "swiftlet"),
            ("C floor: PIO", r["exit_cost_us"]["floor"]["pio"], "floor"),
            (f"{name}: MMIO", r["exit_cost_us"]["swiftlet"]["mmio"], "swiftlet"),
            ("C floor: MMIO", r["exit_cost_us"]["floor"]["mmio"], "floor"),
        ]),
        ("Process start → first guest instruction (ms)", "ms", ("goal 3 ms", 3.0), [
            (name, sw["first_instruction_ms"], "swiftlet"),
            ("C floor", fl["first_instruction_ms"], "floor"),
            ("QEMU microvm (from spawn)", qt["first_instruction_ms"], "qemu"),
        ]),
        ("Trivial workload, spawn → exit (ms)", "ms", None, [
            (f"{name} microVM", sw["wall_ms"], "swiftlet"),
            ("C floor microVM", fl["wall_ms"], "floor"),
            ("QEMU microvm", qe["wall_ms"], "qemu"),
            ("runc run /bin/true", r["runc"]["wall_ms"], "container"),
            ("unshare namespaces", r["unshare"]["wall_ms"], "container"),
        ]),
        ("VMM memory: peak RSS − guest pages (MiB)", "MiB", ("goal 4 MiB", 4.0), [
            (name, sw["vmm_kib"] / 1024, "swiftlet"),
            ("C floor", fl["vmm_kib"] / 1024, "floor"),
            ("QEMU microvm", r["qemu_vmm_kib"] / 1024, "qemu"),
        ]),
        ("While running: private VMM memory, anonymous − guest (MiB)", "MiB", None, [
            (name, r["running"]["swiftlet"]["private_vmm_kib"] / 1024, "swiftlet"),
            ("C floor", r["running"]["floor"]["private_vmm_kib"] / 1024, "floor"),
            ("QEMU microvm", r["running"]["qemu"]["private_vmm_kib"] / 1024, "qemu"),
        ]),
    ]
    width, label_w, bar_w, row_h, title_h, gap = 860, 250, 500, 24, 30, 18
    height = 60 + sum(title_h + len(bars) * row_h + gap for *_, bars in panels) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="20" y="30" font-size="18" font-weight="bold">Swiftlet benchmarks</text>',
           f'<text x="20" y="48" fill="#555">medians of {r["reps"]} rounds; {svg_escape(r["machine"]["cpu"])}, '
           f'{svg_escape(r["machine"]["kvm"].split(" (")[0])}; lower is better</text>']
    y = 60
    for title, unit, goal, bars in panels:
        y += title_h
        out.append(f'<text x="20" y="{y - 8}" font-weight="bold">{svg_escape(title)}</text>')
        top = max([v for _, v, _ in bars if v is not None] + [goal[1] if goal else 0]) * 1.08 or 1
        for label, value, kind in bars:
            out.append(f'<text x="{label_w}" y="{y + 16}" text-anchor="end">{svg_escape(label)}</text>')
            if value is not None:
                w = max(1.0, bar_w * value / top)
                out.append(f'<rect x="{label_w + 10}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{colors[kind]}"/>')
                digits = 2 if value < 10 else 1
                out.append(f'<text x="{label_w + 16 + w:.1f}" y="{y + 16}">{value:,.{digits}f} {unit}</text>')
            y += row_h
        if goal:
            gx = label_w + 10 + bar_w * goal[1] / top
            top_y = y - len(bars) * row_h
            out.append(f'<line x1="{gx:.1f}" y1="{top_y}" x2="{gx:.1f}" y2="{y}" stroke="#222" stroke-dasharray="4,3"/>')
            out.append(f'<text x="{gx + 4:.1f}" y="{y + 12}" font-size="11" fill="#222">{goal[0]}</text>')
        y += gap
    note = "Linux boot not run (make bench LINUX=1)"
    linux = r.get("linux")
    if linux:
        banner = fmt(linux["banner_s"], 1, " s") if linux["banner_s"] is not None else "not reached"
        note = f"Linux to init banner: {banner}; 'Run /init': {fmt(linux['run_init_s'], 1, ' s')}"
    if r["machine"]["emulated_kvm"]:
        note += " — guest kernel code is emulated on this host: not representative"
    out.append(f'<text x="20" y="{height - 14}" font-size="12" fill="#555">{svg_escape(note)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------


def find_tools(args):
    tools = {}
    for key, name in (("qemu", "qemu-system-x86_64"), ("runc", "runc"), ("unshare", "unshare"), ("busybox", "busybox")):
        tools[key] = shutil.which(name)
    missing = [k for k, v in tools.items() if v is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}: install qemu-system-x86, runc, util-linux and "
                 "busybox-static (make bench does)")
    if not is_static_elf(tools["busybox"]):
        sys.exit(f"bench: {tools['busybox']} is not static: install busybox-static")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("bench: /dev/kvm is not usable")
    return tools


def choose_qemu_cpu(bench, tools):
    """`-cpu host`, or `-cpu host,-arch-capabilities` where QEMU cannot set that MSR (this host)."""
    for cpu in ("host", "host,-arch-capabilities"):
        tools["qemu_cpu"] = cpu
        try:
            bench.qemu_first()
            return cpu
        except RuntimeError as error:
            log(f"QEMU with -cpu {cpu} failed: {str(error).splitlines()[-1] if str(error) else error}")
    sys.exit("bench: QEMU cannot run the first-instruction guest")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=11, help="rounds per item (default 11)")
    parser.add_argument("--exits", type=int, default=100000, help="N for the exit-cost guests (default 100000)")
    parser.add_argument("--swift", default=os.environ.get("SWIFT", "swift"), help="the swift driver")
    parser.add_argument("--no-docs", action="store_true", help="print only; do not rewrite Docs/")
    parser.add_argument("--linux", action="store_true",
                        help="also boot the guest kernel and initramfs to the init banner (once)")
    parser.add_argument("--kernel", default="/var/cache/swiftlet/kernel-current/vmlinux")
    parser.add_argument("--initrd", default="/var/cache/swiftlet/initramfs.cpio")
    emulated = os.path.isdir("/sys/module/kvm_pvm")
    # The defaults are the Makefile's LINUX_ARGS and LINUX_CPUID_MASK (make check-linux).
    parser.add_argument("--linux-cmdline", default=(
        "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
        + (" noxsave tsc=reliable no_timer_check nowatchdog mitigations=off 8250.nr_uarts=1" if emulated else "")))
    parser.add_argument("--linux-flags", default="--cpuid-mask emulated" if emulated else "",
                        help="extra swiftlet boot flags for the Linux boot")
    parser.add_argument("--package-path", default=ROOT, help="the Swift package to build (default: this checkout)")
    parser.add_argument("--from-results", metavar="JSON",
                        help="measure nothing: print and write the documents from a saved results.json")
    parser.add_argument("--linux-timeout", type=int, default=300)
    parser.add_argument("--exit-cost-only", nargs="+", metavar="BINARY",
                        help="measure only the exit cost of these swiftlet binaries (and the C floor), side by "
                             "side; builds nothing but the guests, prints only (Docs/ untouched)")
    args = parser.parse_args()
    if args.exit_cost_only:
        exit_cost_only(args)
        return
    if args.from_results:
        with open(args.from_results) as f:
            r = json.load(f)
        report(r, args)
        return
    os.makedirs(BENCH_BUILD, exist_ok=True)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]

    tools = find_tools(args)
    log("building the guests and the C floor")
    build_guests(args.exits)
    builds = []
    package = os.path.abspath(args.package_path)
    incremental = all(os.path.isdir(os.path.join(package, f".build-release-{b['name']}")) for b in BUILDS)
    for build in BUILDS:
        log(f"building the release binary: {build['describe']}")
        builds.append(build_release(args.swift, build, package))
        log(f"  {build['name']}: {builds[-1]['build_seconds']:.0f} s, {builds[-1]['size_bytes'] / 2**20:.1f} MiB")
    tools["bundle"] = make_oci_bundle(tools["busybox"])
    bench = Bench(args, tools)
    qemu_cpu = choose_qemu_cpu(bench, tools)

    # The release build users should install: compare the two on the first-instruction guest.
    compare_reps = max(5, args.reps // 2)
    comparison = run_interleaved(
        [(b["name"], (lambda b=b: bench.swiftlet_first(b["binary"]))) for b in builds], compare_reps, "build comparison")
    for b in builds:
        b.update(medians(comparison[b["name"]]))
    leanest = min(builds, key=lambda b: b["vmm_kib"])
    faster = min(builds, key=lambda b: b["first_instruction_ms"])
    close = [b for b in builds if b["vmm_kib"] <= leanest["vmm_kib"] * 1.05]
    chosen = min(close, key=lambda b: b["first_instruction_ms"])
    log(f"build comparison: leaner {leanest['name']}, faster start {faster['name']}; benchmarking {chosen['name']}")
    binary = chosen["binary"]
    bench.binary = binary

    n = args.exits
    items = [
        ("swiftlet_first", lambda: bench.swiftlet_first(binary)),
        ("swiftlet_cli", lambda: bench.swiftlet_cli(binary)),
        ("floor_first", bench.floor_first),
        ("qemu_first", bench.qemu_first),
        ("qemu_traced", bench.qemu_first_traced),
        ("runc", bench.runc),
        ("unshare", bench.unshare),
        ("static_noop", bench.static_noop),
    ]
    for kind in ("pio", "mmio"):
        for count in (0, n):
            guest = f"exit-{kind}-{count}.elf"
            items.append((f"swiftlet_{kind}_{count}", lambda g=guest: bench.swiftlet_exits(binary, g)))
            items.append((f"floor_{kind}_{count}", lambda g=guest: bench.floor_exits(g)))
    samples = run_interleaved(items, args.reps, "benchmarks")
    running = run_interleaved([(vmm, (lambda vmm=vmm: bench.running_snapshot(vmm)))
                               for vmm in ("swiftlet", "floor", "qemu")], 3, "memory of running VMMs")

    results = {name: medians(s) for name, s in samples.items()}
    exit_cost, exit_spread = {}, {}
    for vmm in ("swiftlet", "floor"):
        exit_cost[vmm], exit_spread[vmm] = {}, {}
        for kind in ("pio", "mmio"):
            pairs = zip(samples[f"{vmm}_{kind}_{n}"], samples[f"{vmm}_{kind}_0"])
            rounds = [(a["wall_ms"] - b["wall_ms"]) * 1000 / n for a, b in pairs]
            exit_cost[vmm][kind] = median(rounds)
            # Half the interquartile range of the rounds, in per cent of the median.
            q1, _, q3 = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else (rounds[0],) * 3
            exit_spread[vmm][kind] = (q3 - q1) / 2 / exit_cost[vmm][kind] * 100
    running_medians = {vmm: medians(s) for vmm, s in running.items()}
    r = {
        "reps": args.reps,
        "exits": n,
        "machine": machine_facts(args.swift, tools),
        "builds": builds,
        "build": chosen,
        "incremental_builds": incremental,
        "qemu_cpu": qemu_cpu,
        "exit_cost_us": exit_cost,
        "exit_cost_spread_percent": exit_spread,
        "swiftlet_first": results["swiftlet_first"],
        "floor_first": results["floor_first"],
        "qemu_first": results["qemu_first"],
        "qemu_traced": results["qemu_traced"],
        "running": running_medians,
        "fastest": {vmm: min(x["first_instruction_ms"] for x in samples[item])
                    for vmm, item in (("swiftlet", "swiftlet_first"), ("floor", "floor_first"), ("qemu", "qemu_traced"))},
        "qemu_vmm_kib": results["qemu_first"]["maxrss_kib"] - running_medians["qemu"]["guest_kib"],
        "runc": results["runc"],
        "unshare": results["unshare"],
        "static_noop": results["static_noop"],
        "swiftlet_cli": results["swiftlet_cli"],
        "medians": results,
        "load": (load_at_start, os.getloadavg()[0]),
    }
    if args.linux:
        if r["machine"]["emulated_kvm"]:
            log(LINUX_NOT_REPRESENTATIVE)
        r["linux"] = linux_boot(binary, args)
        r["linux_kernel"] = os.path.realpath(args.kernel)

    r["leaner_build"], r["faster_build"] = leanest["name"], faster["name"]
    r["samples"] = samples
    r["running_samples"] = running
    r["seconds"] = time.monotonic() - started
    with open(os.path.join(BENCH_BUILD, "results.json"), "w") as f:
        json.dump(r, f, indent=1, default=str)
    report(r, args)
    log(f"done in {r['seconds']:.0f} s")


def exit_cost_only(args):
    """`--exit-cost-only A B ...`: the exit-cost part of the benchmarks alone, for comparing
    builds (say, before and after a change to the exit path) in one interleaved run."""
    os.makedirs(BENCH_BUILD, exist_ok=True)
    build_guests(args.exits)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("bench: /dev/kvm is not usable")
    bench = Bench(args, {})
    n = args.exits
    vmms = {f"swiftlet[{i}]": binary for i, binary in enumerate(args.exit_cost_only)}
    items = []
    for kind in ("pio", "mmio"):
        for count in (0, n):
            guest = f"exit-{kind}-{count}.elf"
            for name, binary in vmms.items():
                items.append((f"{name}_{kind}_{count}", lambda b=binary, g=guest: bench.swiftlet_exits(b, g)))
            items.append((f"floor_{kind}_{count}", lambda g=guest: bench.floor_exits(g)))
    samples = run_interleaved(items, args.reps, "exit cost")
    print(f"Exit cost, (T({n}) - T(0)) / {n}, median of {args.reps} interleaved rounds (µs per exit; "
          "half the interquartile range in brackets)")
    for name in [*vmms, "floor"]:
        figures = []
        for kind in ("pio", "mmio"):
            rounds = [(a["wall_ms"] - b["wall_ms"]) * 1000 / n
                      for a, b in zip(samples[f"{name}_{kind}_{n}"], samples[f"{name}_{kind}_0"])]
            q1, _, q3 = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else (rounds[0],) * 3
            figures.append(f"{kind} {median(rounds):.3f} (±{(q3 - q1) / 2:.3f})")
        print(f"  {name:12} {'   '.join(figures)}   {vmms.get(name, os.path.join(BENCH_BUILD, 'kvm-floor'))}")
    # Each build against the first, round by round (both measured in the same round, so the
    # round's load cancels): the median of the per-round differences.
    per_round = lambda name, kind: [(a["wall_ms"] - b["wall_ms"]) * 1000 / n
                                    for a, b in zip(samples[f"{name}_{kind}_{n}"], samples[f"{name}_{kind}_0"])]
    first = next(iter(vmms))
    for name in list(vmms)[1:]:
        figures = []
        for kind in ("pio", "mmio"):
            deltas = [x - y for x, y in zip(per_round(name, kind), per_round(first, kind))]
            figures.append(f"{kind} {median(deltas):+.3f} ({sum(d > 0 for d in deltas)}/{len(deltas)} rounds slower)")
        print(f"  {name} - {first}, per round: {'   '.join(figures)}")


def report(r, args):
    """Prints the tables and, unless --no-docs, writes Docs/BENCHMARKS.md and Docs/benchmarks.svg."""
    # `make test-kernel` (run first by `make bench LINUX=1`) leaves its Swiftlet/QEMU timings here.
    e2e_path = os.path.join(BENCH_BUILD, "kernel-e2e.json")
    if "kernel_e2e" not in r and os.path.exists(e2e_path):
        with open(e2e_path) as f:
            r["kernel_e2e"] = json.load(f)
    tables = build_tables(r)
    chosen = r["build"]
    print()
    print(f"Swiftlet benchmarks: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['kvm']}")
    print(f"Benchmarked build: {chosen['name']} ({chosen['describe']}); medians of {r['reps']} rounds")
    for b in r["builds"]:
        print(f"  build {b['name']}: binary {b['size_bytes'] / 2**20:.1f} MiB (stripped {b['stripped_bytes'] / 2**20:.1f} MiB), "
              f"built in {b['build_seconds']:.0f} s, first instruction {b['first_instruction_ms']:.2f} ms, "
              f"peak RSS {b['maxrss_kib'] / 1024:.2f} MiB, VMM memory {b['vmm_kib'] / 1024:.2f} MiB")
    print(f"  leaner: {r['leaner_build']}; faster start: {r['faster_build']}")
    print()
    print(render_text(tables))
    if r["machine"]["emulated_kvm"] and "linux" not in r:
        print("Note: " + LINUX_NOT_REPRESENTATIVE)
    if not args.no_docs:
        os.makedirs(DOCS, exist_ok=True)
        write_markdown(r, tables, os.path.join(DOCS, "BENCHMARKS.md"))
        write_svg(r, os.path.join(DOCS, "benchmarks.svg"))
        log("wrote Docs/BENCHMARKS.md and Docs/benchmarks.svg")

if __name__ == "__main__":
    main()
