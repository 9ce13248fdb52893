#!/usr/bin/env python3
"""API-socket figures (Docs/API-SOCKET.md, Docs/BENCHMARKS.md):

1. process start -> the API socket accepting: wall time seen by this script (spawn to the first
   successful connect, polled every 0.1 ms), and swiftlet-api's own process_startup_time_us and
   process_startup_time_cpu_us from a FlushMetrics line; median of --runs;
2. peak RSS (VmHWM) of an API-mode VMM running the api-ticker tiny guest next to `swiftlet boot`
   of the same guest with the same memory, read while each guest runs.

    python3 Benchmarks/api_socket.py --swiftlet .build/release/swiftlet [--runs 10]
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, tempfile, time

GUEST = os.path.join(os.path.dirname(__file__), "..", "Guests", "build", "api-ticker.elf")


def request(path, method, uri, body=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    data = body.encode() if body else b""
    s.sendall(f"{method} {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    return int(reply.split(b" ")[1])


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def start_once(binary, directory, index):
    sock = os.path.join(directory, f"api-{index}.sock")
    metrics = os.path.join(directory, f"metrics-{index}")
    open(metrics, "w").close()
    begin = time.perf_counter()
    proc = subprocess.Popen([binary, "--api-sock", sock], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.close()
            break
        except OSError:
            time.sleep(0.0001)
    seen = (time.perf_counter() - begin) * 1e6
    assert request(sock, "PUT", "/metrics", json.dumps({"metrics_path": metrics})) == 204
    assert request(sock, "PUT", "/actions", '{"action_type":"FlushMetrics"}') == 204
    line = json.loads(open(metrics).read().splitlines()[0])
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return seen, line["api_server"]["process_startup_time_us"], line["api_server"]["process_startup_time_cpu_us"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--swiftlet", required=True)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    binary = os.path.abspath(args.swiftlet)
    with tempfile.TemporaryDirectory() as directory:
        runs = [start_once(binary, directory, i) for i in range(args.runs)]
        seen, wall, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"socket accepting after process start (median of {args.runs}): {seen / 1000:.2f} ms seen by the client, "
              f"{wall / 1000:.2f} ms wall and {cpu / 1000:.2f} ms CPU inside swiftlet-api")

        # Peak RSS with the ticker guest running, API mode versus swiftlet boot.
        sock = os.path.join(directory, "rss.sock")
        proc = subprocess.Popen([binary, "--api-sock", sock], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        while not os.path.exists(sock):
            time.sleep(0.001)
        time.sleep(0.05)
        assert request(sock, "PUT", "/machine-config", '{"vcpu_count":1,"mem_size_mib":64}') == 204
        assert request(sock, "PUT", "/boot-source", json.dumps({"kernel_image_path": os.path.abspath(GUEST)})) == 204
        assert request(sock, "PUT", "/actions", '{"action_type":"InstanceStart"}') == 204
        time.sleep(1.0)
        api_rss = vm_hwm(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        boot = subprocess.Popen([binary, "boot", "--kernel", GUEST, "--memory", "64M", "--timeout", "3"],
                                stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        time.sleep(1.0)
        boot_rss = vm_hwm(boot.pid)
        boot.send_signal(signal.SIGTERM)
        boot.wait()
        print(f"peak RSS with the api-ticker guest running (64 MiB): API mode {api_rss} KiB, swiftlet boot {boot_rss} KiB")


if __name__ == "__main__":
    sys.exit(main())
