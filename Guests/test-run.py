#!/usr/bin/env python3
"""`swiftlet run` end to end (`make test-run`): an OCI bundle run as a microVM.

Builds a busybox bundle in a temporary directory (a root with /bin/busybox and applet links, a
config.json written here: uid 1000, gid 1001, env GREETING, cwd /work, hostname, a read-only root,
proc and tmpfs mounts) and boots it twice with the guest kernel and initramfs from the cache
(make guest-kernel guest-initramfs; kernel-current/boot.conf supplies this host's extras):
  1. `-- sh -c SCRIPT` (overriding process.args): the script prints a marker for each of
     echo, the env var, the cwd, the hostname, a refused write to the read-only root, uid and
     gid, then `exit 3`; each marker is checked, and swiftlet's exit status must be 3;
  2. no command, with config.json rewritten to terminal true and sysfs and devtmpfs mounts:
     process.args runs (it prints a marker, its NoNewPrivs, whether stdin and stdout are a
     controlling terminal (/dev/tty opens), /sys/kernel and the disk's /dev node, and exits 0), and the root image is taken
     from the cache this time (no new rootfs/*.ext4 entry).
Each boot has a deadline (swiftlet --timeout and a kill after it); the whole check has one.

Usage: Guests/test-run.py BUILD_DIR (holding swiftlet and swiftlet-run)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BOOT_TIMEOUT = 300  # seconds per boot (a boot takes ~60-90 s on the development host)
OVERALL_DEADLINE = 700
SCRIPT = ('echo marker-echo; echo "marker-env=$GREETING"; echo "marker-cwd=$(pwd)"; '
          'echo "marker-host=$(hostname)"; if touch /written 2>/dev/null; then echo marker-rw; '
          'else echo marker-ro; fi; echo "marker-ids=$(id -u):$(id -g)"; exit 3')
results = []
started = time.monotonic()


def log(message):
    print(f"test-run: {message}", flush=True)


def check(name, passed, detail=""):
    results.append((name, passed))
    log(f"{'PASS' if passed else 'FAIL'}: {name}{'' if passed else ' -- ' + detail}")


def make_bundle(directory):
    root = os.path.join(directory, "rootfs")
    for sub in ("bin", "proc", "dev", "tmp", "work", "etc", "sys"):
        os.makedirs(os.path.join(root, sub))
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "echo", "pwd", "hostname", "touch", "id", "grep", "test", "["):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 1000, "gid": 1001},
                    "args": ["sh", "-c", "echo marker-default-args; grep NoNewPrivs /proc/self/status"],
                    "env": ["PATH=/bin", "GREETING=hello-from-env"], "cwd": "/work",
                    "noNewPrivileges": True,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "swiftlet-bundle",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]},
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def make_terminal_config(directory):
    """The second run's config.json: terminal true, sysfs at /sys, devtmpfs at /dev, and default
    args that report what they see (the root directory is unchanged, so is its image)."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["terminal"] = True
    config["process"]["args"] = ["sh", "-c", "echo marker-default-args; grep NoNewPrivs /proc/self/status; "
                                 "(: </dev/tty) 2>/dev/null && echo marker-ctty; [ -d /sys/kernel ] && echo marker-sysfs; "
                                 "[ -b /dev/vda ] && echo marker-devtmpfs; exit 0"]
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/dev"] + [
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev", "type": "devtmpfs", "source": "devtmpfs"}]
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def run(swiftlet, bundle, cache, extra):
    argv = [swiftlet, "run", "--bundle", bundle, "--timeout", str(BOOT_TIMEOUT)] + extra
    log("running: " + " ".join(argv))
    start = time.monotonic()
    remaining = OVERALL_DEADLINE - (start - started)
    try:
        # Bytes, decoded here: text=True would turn the console's CR LF into LF.
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              env=dict(os.environ, SWIFTLET_CACHE=cache), timeout=min(BOOT_TIMEOUT + 30, remaining))
    except subprocess.TimeoutExpired as expired:
        check(f"swiftlet run ended within its deadline", False, str(expired))
        return None, "", 0
    elapsed = time.monotonic() - start
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    log(f"exit status {done.returncode} after {elapsed:.1f} s")
    if stderr.strip():
        log("stderr: " + stderr.strip().replace("\n", " | ")[-500:])
    return done.returncode, stdout, elapsed


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    swiftlet = os.path.join(sys.argv[1], "swiftlet")
    cache = os.environ.get("SWIFTLET_CACHE", "/var/cache/swiftlet")
    work = tempfile.mkdtemp(prefix="swiftlet-test-run-")
    try:
        bundle = os.path.join(work, "bundle")
        make_bundle(bundle)
        code, out, elapsed = run(swiftlet, bundle, cache, ["--", "sh", "-c", SCRIPT])
        lines = out.splitlines()
        for marker, what in [("marker-echo", "echo prints"), ("marker-env=hello-from-env", "env var honoured"),
                             ("marker-cwd=/work", "cwd honoured"), ("marker-host=swiftlet-bundle", "hostname matches"),
                             ("marker-ro", "a write to the read-only root fails"),
                             ("marker-ids=1000:1001", "uid and gid as configured")]:
            check(what, marker in lines, f"'{marker}' not a line of the output: {out[-800:]!r}")
        check("-- CMD overrides process.args", "marker-default-args" not in out, out[-300:])
        check("terminal: false leaves the bytes as written (no CR added)", "\r" not in out, repr(out[-300:]))
        check("exit status 3 propagated", code == 3, f"exit status {code}")
        check("the output is only the process's (no kernel or init lines)",
              all(line.startswith("marker-") for line in lines), repr(out[-800:]))
        images = sorted(os.listdir(os.path.join(cache, "rootfs")))
        make_terminal_config(bundle)
        code, out, elapsed2 = run(swiftlet, bundle, cache, [])
        check("default process.args run", out.splitlines()[:1] == ["marker-default-args"], repr(out[-500:]))
        check("noNewPrivileges set (/proc/self/status)", out.splitlines()[1:2] == ["NoNewPrivs:\t1"], repr(out))
        check("terminal: true turns the console's output processing on (CR LF line ends)", "\r\n" in out, repr(out[-300:]))
        for marker, what in [("marker-ctty", "terminal: true makes the console the process's controlling terminal"),
                             ("marker-sysfs", "the sysfs mount is at /sys"),
                             ("marker-devtmpfs", "the devtmpfs mount at /dev has the disk's node")]:
            check(what, marker in out.splitlines(), f"'{marker}' not a line of the output: {out[-500:]!r}")
        check("default args: exit status 0", code == 0, f"exit status {code}")
        check("the unchanged root is not rebuilt", sorted(os.listdir(os.path.join(cache, "rootfs"))) == images)
        log(f"boots: {elapsed:.1f} s and {elapsed2:.1f} s; wall {time.monotonic() - started:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, passed in results if not passed]
    log(f"{len(results) - len(failed)}/{len(results)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
