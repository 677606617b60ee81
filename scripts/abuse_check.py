#!/usr/bin/env python3
"""Abusive clients against a real `slimformer serve`, and what a well-behaved client sees.

    python3 scripts/abuse_check.py [--model assets/all-MiniLM-L6-v2] [--slowloris 1000]
        [--idle 10000] [--floods 20] [--requests 300] [--out runs/abuse/report.json]

Needs only Python's standard library and target/release/slimformer (cargo build --release).
Phases, one server process throughout:
  1. baseline: --requests sequential POST /v1/embed of one sentence on a keep-alive connection;
  2. abuse: --slowloris connections sending one header byte a second and never finishing,
     --idle connections that never send a byte, --floods connections that pipeline 1,000
     requests and never read a response, and a slow body; then the well-behaved client again;
  3. after the header read timeout and after the idle timeout: the server's descriptors and memory.
Reports p50/p99 of both runs (the target: abused p99 within 2x the baseline), the server's
resident memory and open descriptors at each point, and how many abusive connections it closed.
The client needs descriptors for every connection: ulimit -n at least --idle + --slowloris + 100.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def good_client(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"inputs": ["a well-behaved client embeds one sentence"]})
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/embed", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200, reply.status
        times.append((time.perf_counter() - t0) * 1e3)
    conn.close()
    return times


def summary(times: list[float]) -> dict:
    times = sorted(times)
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))], "n": len(times)}


def open_socket(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None


def closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(65536)
        while data:
            data = s.recv(65536)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="assets/all-MiniLM-L6-v2")
    p.add_argument("--slowloris", type=int, default=1000)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--floods", type=int, default=20)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--header-timeout", type=float, default=30)
    p.add_argument("--idle-timeout", type=float, default=60)
    p.add_argument("--out", type=Path, default=ROOT / "runs/abuse/report.json")
    args = p.parse_args()

    server = subprocess.Popen(
        [str(ROOT / "target/release/slimformer"), "serve", args.model, "--port", "0",
         "--header-read-timeout", str(args.header_timeout), "--idle-timeout", str(args.idle_timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={"SLIMFORMER_LOG": "warn", "PATH": "/usr/bin:/bin"})
    port = int(json.loads(server.stdout.readline())["listening"].rsplit(":", 1)[1])
    report: dict = {"model": args.model, "settings": vars(args) | {"out": str(args.out)}}
    try:
        good_client(port, 20)  # warm-up
        report["baseline"] = summary(good_client(port, args.requests))
        report["server_before"] = {"rss_mb": rss_mb(server.pid), "fds": fds(server.pid)}

        stop = threading.Event()
        slow = [s for s in (open_socket(port) for _ in range(args.slowloris)) if s]
        for s in slow:
            s.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        def drip():
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                stop.wait(1.0)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        idle = [s for s in (open_socket(port) for _ in range(args.idle)) if s]
        pipelined = b"".join(
            b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n"
            b'{"inputs": ["flood me"]}' for _ in range(1000))
        floods = [s for s in (open_socket(port) for _ in range(args.floods)) if s]
        for s in floods:
            s.setblocking(False)
            try:
                s.send(pipelined)
            except OSError:
                pass
        slow_body = open_socket(port)
        slow_body.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"inputs\"")
        report["opened"] = {"slowloris": len(slow), "idle": len(idle), "floods": len(floods)}
        time.sleep(2)
        report["abused"] = summary(good_client(port, args.requests))
        report["abused"]["p99_over_baseline"] = report["abused"]["p99_ms"] / report["baseline"]["p99_ms"]
        report["server_under_abuse"] = {"rss_mb": rss_mb(server.pid), "fds": fds(server.pid)}

        started = time.time()
        time.sleep(max(0.0, args.header_timeout + 3 - (time.time() - started)))
        report["after_header_timeout"] = {
            "rss_mb": rss_mb(server.pid), "fds": fds(server.pid),
            "slowloris_closed": sum(closed(s) for s in slow),
        }
        time.sleep(max(0.0, args.idle_timeout - args.header_timeout + 5))
        report["after_idle_timeout"] = {
            "rss_mb": rss_mb(server.pid), "fds": fds(server.pid),
            "idle_closed": sum(closed(s) for s in idle),
            "floods_closed": sum(closed(s) for s in floods),
        }
        report["good_client_after"] = summary(good_client(port, 50))
        stop.set()
    finally:
        server.terminate()
        server.wait(timeout=30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
