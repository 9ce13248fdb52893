#!/usr/bin/env python3
"""Time from `swiftlet restore` start to the restored guest's first observable action.

Snapshots Guests/build/snapshot-counter.elf at its boot-timer write (count 20), then runs
`swiftlet restore` RUNS times and measures, from just before the process is spawned, until the
first byte of guest console output arrives on its stdout (the restored guest's "ready", the
serial port write it makes right after the boot-timer write the snapshot was taken at). For comparison, the same for a cold `swiftlet boot` of that
guest (until its first console byte). Prints the median and the range of each.

  python3 Benchmarks/snapshot-restore.py [SWIFTLET] [RUNS]    (default .build/release/swiftlet, 15)
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".build/release/swiftlet")
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
guest = os.path.join(root, "Guests/build/snapshot-counter.elf")


def first_output(arguments, expect_prefix):
    """Milliseconds from spawn to the first stdout byte; checks what the guest printed."""
    start = time.monotonic()
    process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(1)
    elapsed = (time.monotonic() - start) * 1000
    rest = process.stdout.read()
    process.wait(timeout=60)
    text = (first + rest).decode()
    if not text.startswith(expect_prefix):
        sys.exit(f"unexpected output from {' '.join(arguments)}: {text[:80]!r}")
    return elapsed


with tempfile.TemporaryDirectory() as directory:
    snapshot = os.path.join(directory, "snap")
    done = subprocess.run([binary, "boot", "--kernel", guest, "--snapshot-when-ready", snapshot, "--timeout", "20"],
                          stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"snapshot failed: {done.stderr.decode()}")
    restore = [first_output([binary, "restore", snapshot, "--timeout", "20"], "ready\ncount 21\n") for _ in range(runs)]
    boot = [first_output([binary, "boot", "--kernel", guest, "--timeout", "20"], "snapshot-counter: start") for _ in range(runs)]

for name, values in (("restore -> first guest output", restore), ("cold boot -> first guest output", boot)):
    print(f"{name}: median {statistics.median(values):.2f} ms (min {min(values):.2f}, max {max(values):.2f}, {runs} runs)")
