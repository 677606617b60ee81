#!/usr/bin/env python3
"""A soak: mixed traffic on every route of one real `slimformer serve` for a long time,
with a hot reload every few minutes, and what the server's memory and latency do.

    python3 scripts/soak.py [--minutes 30] [--reload-minutes 5] [--load 0.7]
        [--tagger DIR] [--out runs/soak]

Needs only Python's standard library, target/release/slimformer (cargo build --release)
and the assets (scripts/fetch-assets.sh). One server process serves five models:
  emb     all-MiniLM-L6-v2 from a registry of two versions; every --reload-minutes the other
          version is promoted and the server reloads it under traffic;
  tag     a token classifier (--tagger, e.g. a MiniLM fine-tuned on CoNLL-2003 by
          scripts/ner_compare.sh; default the fixture BERT tagger);
  cls, mlm, rerank   the fixture sequence classifier, masked LM and cross-encoder.
Every route is called: the embedding routes most, with 1-32 texts a request of 1-300 tokens
(spans of Jane Austen's novels), and the classification, tagging, fill-mask, rerank,
tokenize/decode and information routes beside them.
Phases: 1. the maximum throughput of this mix (a minute of closed-loop clients); 2. open-loop
arrivals at --load of it for --minutes. Every request's time, route, status and latency go to
requests.csv, the server's resident memory and descriptors every 5 s to samples.csv; report.json
has the figures per minute and the verdicts (zero failed requests; in the 5-minute windows after
the first reload, the resident size's medians within 10% of each other and the highest p99 within
2x of the lowest), soak.svg the plot of RSS and p50/p99 over time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from abuse_check import fds, rss_mb  # the server's resident memory and descriptors

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/slimformer"
MINILM = ROOT / "assets/all-MiniLM-L6-v2"
FIXTURES = ROOT / "tests/fixtures"


class Texts:
    """Spans of 1-300 tokens (about 0.75 words a token) from Austen's novels."""

    def __init__(self, rng: random.Random):
        self.words = (ROOT / "assets/data/raw/austen.txt").read_text().split()
        self.rng = rng

    def one(self) -> str:
        n = max(1, int(self.rng.randint(1, 300) * 0.75))
        start = self.rng.randrange(len(self.words) - n)
        return " ".join(self.words[start : start + n])

    def some(self, most: int = 32) -> list[str]:
        return [self.one() for _ in range(self.rng.randint(1, most))]


# (weight, method, path, model, body maker): the traffic mix.
def mix(t: Texts):
    r = t.rng
    return [
        (14, "POST", "/v1/embed", "emb", lambda: {"inputs": t.some(), "normalize": True}),
        (14, "POST", "/embed", "emb", lambda: {"inputs": t.some(), "truncate": True}),
        (14, "POST", "/v1/embeddings", "emb",
         lambda: {"input": t.some(), "model": "emb", "dimensions": r.choice([None, 128, 384])}),
        (3, "POST", "/embed_all", "emb", lambda: {"inputs": t.some(4)}),
        (5, "POST", "/rerank", "emb", lambda: {"query": t.one(), "texts": t.some(), "return_text": False}),
        (5, "POST", "/v1/rerank", "rerank",
         lambda: (lambda docs: {"model": "rerank", "query": t.one(), "documents": docs,
                               "top_n": min(3, len(docs))})(t.some())),
        (5, "POST", "/predict", "cls", lambda: {"inputs": [[x] for x in t.some()]}),
        (5, "POST", "/v1/classify", "cls", lambda: {"inputs": t.some()}),
        (8, "POST", "/v1/tag", "tag",
         lambda: {"inputs": t.some(8), "aggregation": r.choice(["none", "simple", "first", "average", "max"])}),
        (3, "POST", "/v1/fill-mask", "mlm", lambda: {"inputs": [" ".join(t.one().split()[:8]) + " [MASK] ."], "top_k": 3}),
        (5, "POST", "/tokenize", "emb", lambda: {"inputs": t.some(), "add_special_tokens": True}),
        (3, "POST", "/v1/tokenize", "emb", lambda: {"inputs": t.some()}),
        (3, "POST", "/decode", "emb", lambda: {"ids": [r.randrange(1000, 30000) for _ in range(r.randint(1, 300))]}),
        (2, "GET", "/info", "emb", None),
        (2, "GET", "/v1/models", "emb", None),
        (2, "GET", "/health", "emb", None),
        (1, "GET", "/ready", "emb", None),
        (1, "GET", "/metrics", "emb", None),
        (1, "GET", "/openapi.json", "emb", None),
    ]


def spread(values: list[float]) -> dict:
    """min, median, max and (max/min − 1) of the numbers that are not nan."""
    values = [v for v in values if v == v]
    if not values:
        return {}
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1), "spread": round(max(values) / min(values) - 1, 4)}


def per_5_minutes(records, column: int, seconds: float) -> list[list[float]]:
    """The values in `column` of the records (time in seconds first) of each 5-minute window."""
    return [[r[column] for r in records if k * 300 <= r[0] < (k + 1) * 300]
            for k in range(int(seconds // 300))]


def resident_by_mapping(pid: int) -> dict:
    """The resident MB of the process's heap ([heap]), of its anonymous mappings (thread
    stacks, blocks the allocator mapped on their own), and of its mapped files, with the number
    of anonymous mappings and the largest one's resident size."""
    kind, sizes = None, {"heap": 0.0, "anonymous": 0.0, "files": 0.0}
    anonymous = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            name = fields[5] if len(fields) > 5 else ""
            kind = "heap" if name == "[heap]" else "anonymous" if not name or name.startswith("[anon") \
                else "files" if name.startswith("/") else None
        elif fields[0] == "Rss:" and kind:
            mb = int(fields[1]) / 1024
            sizes[kind] += mb
            if kind == "anonymous":
                anonymous.append(mb)
    return {**{k: round(v, 1) for k, v in sizes.items()}, "anonymous_mappings": len(anonymous),
            "largest_anonymous": round(max(anonymous, default=0.0), 1)}


def rss_parts_mb(pid: int) -> tuple[float, float]:
    """The resident memory's anonymous part (the heap) and file-backed part (mapped files)."""
    parts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            parts[line.split(":")[0]] = int(line.split()[1]) / 1024
    return parts.get("RssAnon", float("nan")), parts.get("RssFile", float("nan"))


def heap_mb(port: int, key: str) -> tuple[float, float]:
    """The allocator's bytes in use and freed bytes it keeps, from /metrics (nan if absent)."""
    values = {"slimformer_heap_in_use_bytes": float("nan"), "slimformer_heap_free_bytes": float("nan")}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
        for line in conn.getresponse().read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in values:
                values[name] = float(value) / 2**20
        conn.close()
    except OSError:
        pass
    return values["slimformer_heap_in_use_bytes"], values["slimformer_heap_free_bytes"]


class Client:
    """One keep-alive connection; reconnects after a connection error (counted as a failure)."""

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.conn = None

    retries = 0  # requests resent because the server had closed an idle kept-alive connection

    def call(self, method, path, model, body) -> int:
        """The status, or 0 when the connection failed. As HTTP clients do (urllib3,
        reqwest), a request is resent once on a new connection when a kept-alive one turns
        out to have been closed by the server before it sent anything (its idle timeout)."""
        reused = self.conn is not None
        status = self._call(method, path, model, body)
        if status < 0 and reused:
            Client.retries += 1
            status = self._call(method, path, model, body)
        return max(status, 0)

    def _call(self, method, path, model, body) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.key}", "X-Model": model}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, data, headers)
            reply = self.conn.getresponse()
            reply.read()
            return reply.status
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # Closed under us with no answer: -1, resendable on a new connection.
            self.conn.close()
            self.conn = None
            return -1
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            return 0


class Recorder:
    def __init__(self, path: Path):
        self.lock = threading.Lock()
        self.rows: list[tuple[float, str, int, float]] = []
        self.file = path.open("w")
        self.file.write("t_s,route,status,ms\n")

    def add(self, t: float, route: str, status: int, ms: float):
        with self.lock:
            self.rows.append((t, route, status, ms))
            self.file.write(f"{t:.3f},{route},{status},{ms:.2f}\n")


def pick(routes, rng):
    total = sum(w for w, *_ in routes)
    x = rng.uniform(0, total)
    for route in routes:
        x -= route[0]
        if x <= 0:
            return route
    return routes[-1]


def closed_loop(port, key, seconds, clients, seed) -> float:
    """Requests per second of the mix with `clients` clients each sending back to back."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i):
        rng = random.Random(seed + i)
        routes = mix(Texts(rng))
        c = Client(port, key)
        while time.monotonic() < stop:
            _, method, path, model, body = pick(routes, rng)
            if c.call(method, path, model, body() if body else None) // 100 == 2:
                done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.monotonic() - t0)


def open_loop(port, key, rate, seconds, recorder, t_start, seed, workers):
    """Arrivals at `rate` a second (exponential gaps), each taken by a free worker; a
    request's latency is counted from its arrival, so queueing in the client shows."""
    arrivals: queue.Queue = queue.Queue()
    rng = random.Random(seed)

    def worker(i):
        wrng = random.Random(seed * 1000 + i)
        routes = mix(Texts(wrng))
        c = Client(port, key)
        while True:
            due = arrivals.get()
            if due is None:
                return
            _, method, path, model, body = pick(routes, wrng)
            payload = body() if body else None
            status = c.call(method, path, model, payload)
            now = time.monotonic()
            recorder.add(due - t_start, path, status, (now - due) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for th in threads:
        th.start()
    end = time.monotonic() + seconds
    due = time.monotonic()
    while due < end:
        due += rng.expovariate(rate)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        arrivals.put(due)
    for _ in threads:
        arrivals.put(None)
    for th in threads:
        th.join()


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def svg_plot(minutes, samples, reloads, path: Path):
    """Two panels, no plotting library: RSS (MB) over time, and p50/p99 (ms) per minute."""
    w, h, pad = 900, 260, 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{2 * h + 40}" '
           'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>']
    t_max = max([s[0] for s in samples] + [m["minute"] * 60 + 60 for m in minutes]) or 1

    def panel(y0, title, series, unit):
        ys = [v for _, pts, _ in series for _, v in pts]
        top = max(ys) * 1.15 if ys else 1
        x = lambda t: pad + (w - 2 * pad) * t / t_max
        y = lambda v: y0 + h - pad / 2 - (h - pad) * v / top
        out.append(f'<text x="{pad}" y="{y0 + 16}" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{pad}" y1="{y(0)}" x2="{w - pad}" y2="{y(0)}" stroke="black"/>')
        out.append(f'<line x1="{pad}" y1="{y(0)}" x2="{pad}" y2="{y(top)}" stroke="black"/>')
        for k in range(5):
            v = top * k / 4
            out.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:.0f}</text>')
        for m in range(0, int(t_max / 60) + 1, 5):
            out.append(f'<text x="{x(m * 60)}" y="{y(0) + 16}" text-anchor="middle">{m} min</text>')
        for t in reloads:
            out.append(f'<line x1="{x(t)}" y1="{y(0)}" x2="{x(t)}" y2="{y(top)}" stroke="#aaa" stroke-dasharray="4"/>')
        for i, (name, pts, colour) in enumerate(series):
            line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            out.append(f'<text x="{w - pad - 150}" y="{y0 + 16 + 14 * i}" fill="{colour}">{name} ({unit})</text>')

    panel(0, "Resident memory of the server (dashed: hot reloads)",
          [("RSS", [(t, r) for t, r, _ in samples], "#1f77b4")], "MB")
    panel(h + 40, "Latency per minute, from arrival",
          [("p50", [(m["minute"] * 60 + 30, m["p50_ms"]) for m in minutes], "#2ca02c"),
           ("p99", [(m["minute"] * 60 + 30, m["p99_ms"]) for m in minutes], "#d62728")], "ms")
    out.append("</svg>")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--reload-minutes", type=float, default=5)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of the measured maximum throughput")
    ap.add_argument("--tagger", type=Path, default=FIXTURES / "bert-tokcls")
    ap.add_argument("--threads", type=int, default=0, help="server compute threads (0: all cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/soak")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    registry = out / "registry"
    subprocess.run([BIN, "registry", "init", "--model", MINILM, registry], check=True, capture_output=True)
    subprocess.run([BIN, "registry", "add", "--model", MINILM, registry], check=True, capture_output=True)
    key = "soak-key"
    cmd = [BIN, "serve", "--port", "0", "--api-key", key, "--poll-seconds", "1",
           "--model", f"emb={registry}", "--model", f"tag={args.tagger}",
           "--model", f"cls={FIXTURES / 'bert-seqcls'}", "--model", f"mlm={FIXTURES / 'bert-mlm'}",
           "--model", f"rerank={FIXTURES / 'roberta-rerank'}"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = (out / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port = int(json.loads(server.stdout.readline())["listening"].rsplit(":", 1)[1])
        print(f"soak: server {server.pid} on port {port}", flush=True)

        # Phase 1: the most this mix gets, with enough clients to keep every core busy.
        closed_loop(port, key, 20, 16, args.seed)  # warm-up
        peak = closed_loop(port, key, 60, 16, args.seed + 1)
        rate = peak * args.load
        print(f"soak: maximum {peak:.1f} requests/s; soaking at {rate:.1f}/s ({args.load:.0%})", flush=True)

        # Phase 2: the soak, sampled and reloaded.
        recorder = Recorder(out / "requests.csv")
        samples: list[tuple[float, float, int]] = []
        heap: list[tuple[float, float]] = []  # (t, the allocator's bytes in use, MB)
        reloads: list[float] = []
        reload_errors: list[str] = []
        t_start = time.monotonic()
        seconds = args.minutes * 60
        stop = threading.Event()

        def sampler():
            with (out / "samples.csv").open("w") as f:
                f.write("t_s,rss_mb,fds,rss_anon_mb,rss_file_mb,heap_in_use_mb,heap_free_mb\n")
                while not stop.is_set():
                    t = time.monotonic() - t_start
                    s = (t, rss_mb(server.pid), fds(server.pid))
                    samples.append(s)
                    anon, file = rss_parts_mb(server.pid)
                    in_use, free = heap_mb(port, key)
                    heap.append((t, in_use))
                    f.write(f"{s[0]:.1f},{s[1]:.1f},{s[2]},{anon:.1f},{file:.1f},{in_use:.1f},{free:.1f}\n")
                    f.flush()
                    stop.wait(5)

        def reloader():
            version = 1
            while not stop.wait(args.reload_minutes * 60):
                version = 2 if version == 1 else 1
                t = time.monotonic() - t_start
                done = subprocess.run([BIN, "registry", "promote", registry, f"v{version}"],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    reload_errors.append(done.stderr.strip())
                    continue
                # The server follows the pointer: wait until /info names the new version.
                c = Client(port, key)
                for _ in range(120):
                    c.conn = c.conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
                    models = json.loads(c.conn.getresponse().read())
                    if f"v{version}" in json.dumps(models):
                        break
                    time.sleep(0.5)
                else:
                    reload_errors.append(f"v{version} not served 60 s after its promotion")
                reloads.append(t)
                print(f"soak: {t / 60:.1f} min: promoted v{version}, served "
                      f"{time.monotonic() - t_start - t:.1f} s later", flush=True)

        aux = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=reloader, daemon=True)]
        for th in aux:
            th.start()
        # Workers enough for the requests in flight at once (rate x a slow answer), not so
        # many that most connections sit idle.
        workers = min(64, max(8, int(rate * 10)))
        open_loop(port, key, rate, seconds, recorder, t_start, args.seed + 2, workers)
        stop.set()
        for th in aux:
            th.join()
        alive = Client(port, key).call("GET", "/health", "emb", None) == 200
        resident_at_end = resident_by_mapping(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    recorder.file.close()

    rows = recorder.rows
    minutes = []
    for m in range(int(args.minutes + 0.999)):
        window = [r for r in rows if m * 60 <= r[0] < (m + 1) * 60]
        ms = [r[3] for r in window]
        minutes.append({"minute": m, "requests": len(window),
                        "failed": sum(1 for r in window if r[2] // 100 != 2),
                        "p50_ms": quantile(ms, 0.5), "p99_ms": quantile(ms, 0.99)})
    settled = [s for s in samples if s[0] >= args.reload_minutes * 60]
    rss = [s[1] for s in settled] or [s[1] for s in samples]
    p99s = [m["p99_ms"] for m in minutes[int(args.reload_minutes):]] or [m["p99_ms"] for m in minutes]
    failed = [r for r in rows if r[2] // 100 != 2]
    by_status: dict[str, int] = {}
    for r in failed:
        by_status[f"{r[1]} {r[2]}"] = by_status.get(f"{r[1]} {r[2]}", 0) + 1
    report = {
        "minutes": args.minutes, "load": args.load, "max_requests_per_s": round(peak, 2),
        "rate_per_s": round(rate, 2), "requests": len(rows), "failed": len(failed),
        "failed_by_route_status": by_status, "reloads": len(reloads), "reload_errors": reload_errors,
        "resent_after_idle_close": Client.retries,
        "server_alive_at_end": alive,
        "p50_ms": quantile([r[3] for r in rows], 0.5), "p99_ms": quantile([r[3] for r in rows], 0.99),
        "rss_mb_after_warmup": {**spread(rss), "first": rss[0], "last": rss[-1]},
        "p99_ms_per_minute_after_warmup": {"min": min(p99s), "median": statistics.median(p99s), "max": max(p99s)},
        # Live data apart from freed memory the heap keeps: the former grows with a leak,
        # the latter with the largest requests since the last time pages were given back.
        "heap_in_use_mb_after_warmup": spread([h for t, h in heap if t >= args.reload_minutes * 60]),
        "rss_mb_median_per_5_minutes": [
            round(statistics.median(w), 1) for w in per_5_minutes(samples, 1, seconds) if w
        ],
        "p99_ms_per_5_minutes": [
            round(quantile(w, 0.99)) for w in per_5_minutes(rows, 3, seconds) if w
        ],
        "fds": {"min": min(s[2] for s in samples), "max": max(s[2] for s in samples)},
        "resident_mb_by_mapping_at_end": resident_at_end,
        "per_minute": minutes,
    }
    # A single sample holds whatever the requests in flight have touched (a 32x300-token
    # batch alone is a few hundred MB), so flatness and stability are judged on 5-minute
    # windows after the first reload: the resident size's median in each (a growth shows
    # as a trend) and the p99 of each (about 1,600 requests, where a minute's p99 rests
    # on its four slowest answers).
    warmup_windows = int(-(-args.reload_minutes * 60 // 300))
    settled_rss = report["rss_mb_median_per_5_minutes"][warmup_windows:]
    settled_p99 = report["p99_ms_per_5_minutes"][warmup_windows:]
    report["verdicts"] = {
        "zero_failed_requests": len(failed) == 0 and not reload_errors and alive,
        "rss_median_per_5_minutes_within_10_percent":
            bool(settled_rss) and max(settled_rss) <= 1.10 * min(settled_rss),
        "p99_per_5_minutes_within_2x": bool(settled_p99) and max(settled_p99) <= 2 * min(settled_p99),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    svg_plot(minutes, samples, reloads, out / "soak.svg")
    print(json.dumps({k: v for k, v in report.items() if k != "per_minute"}, indent=2))


if __name__ == "__main__":
    main()
