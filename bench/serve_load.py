"""Load on the web service, loopback only: throughput, latency, 5xx count, peak memory.

Builds a small database (EfficientNet-Lite0, generated photos of a few "places",
each its own colour), starts ``geolocus serve`` on it as a subprocess on
127.0.0.1 (an ephemeral port), then ``--clients`` threads send ``--n`` requests
between them, drawn with a fixed seed from this mix:

- **photo** (most): 1 to 3 generated 640x480 JPEGs, as multipart or raw body;
- **bad**: wrong type (415), empty body (400), an unreadable photo (422),
  a health check (200);
- **hostile**: ``Content-Length: -1`` or one too large (400/413, nothing read),
  malformed chunked (400), a pixel-bomb batch (8 PNGs of 144 MP each, 413),
  a client that stalls mid-body (408 after ``--read-timeout``), a client that
  resets its connection before the answer (no status).

It stops by itself after ``--n`` requests or ``--max-seconds``, whichever comes
first, and prints requests per second, p50/p95 latency (of all requests and of
the photo requests), the statuses, 5xx answers, answers other than expected,
the server's peak resident memory (VmHWM) and how many tracebacks it printed.
Then ``--stalled`` uploads stall all at once, after 3 bytes of their body: it
prints the server's thread count before and during, and what they were answered.
Last, ``--big`` uploads of ``--big-mb`` MB (not photos) arrive at once: it prints
what they were answered and the server's peak memory before and after.

    .venv/bin/python bench/serve_load.py                       # 200 requests, 8 clients
    .venv/bin/python bench/serve_load.py --n 400 --clients 16 --max-seconds 120
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

PLACES = {  # name: (lat, lon, colour)
    "paris": (48.8566, 2.3522, (220, 30, 30)),
    "tokyo": (35.6762, 139.6503, (30, 30, 220)),
    "sydney": (-33.8688, 151.2093, (30, 200, 30)),
    "nairobi": (-1.2921, 36.8219, (220, 220, 30)),
    "lima": (-12.0464, -77.0428, (200, 30, 200)),
    "oslo": (59.9139, 10.7522, (30, 200, 200)),
}


def jpeg(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A photo of one colour with noise (what the database's places look like)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.array(colour)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3))
    b = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(b, "JPEG", quality=90)
    return b.getvalue()


def big_png(w: int, h: int) -> bytes:
    """A real 1-bit PNG of w x h pixels: about 30 KB that decode to w*h pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = (b"\x00" + b"\xff" * ((w + 7) // 8)) * h
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def build_db(tmp: Path, per_place: int) -> Path:
    """A Lite0 database of the generated places, built by ``geolocus index build``."""
    img = tmp / "photos"
    img.mkdir()
    rows = []
    for name, (lat, lon, col) in PLACES.items():
        for i in range(per_place):
            (img / f"{name}{i}.jpg").write_bytes(jpeg(col, seed=1000 + i))
            rows.append(f"{name}{i}.jpg,{lat + 0.01 * i},{lon}\n")
    (tmp / "labels.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    out = tmp / "db"
    cmd = [sys.executable, "-m", "geolocus.cli.main", "index", "build", "--images", str(img)]
    cmd += ["--labels", str(tmp / "labels.csv"), "--model", "efficientnet-lite0"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"index build failed:\n{done.stderr}")
    return out


# --- requests: each returns (status or None where the client hung up, expected statuses) ---


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = f'--{b}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def exchange(port: int, request: bytes, timeout: float = 60.0, reset: bool = False) -> int | None:
    """Send raw bytes, read the answer to its end; its status (None: no answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            pass
    m = re.match(rb"HTTP/1\.\d (\d{3})", data)
    return int(m.group(1)) if m else None


def post(body: bytes, ctype: str, path: str = "/v1/predict", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {ctype}\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class Mix:
    """The kinds of request, with their weights, expected statuses and request bytes."""

    def __init__(self, port: int, read_timeout: float) -> None:
        self.port = port
        self.read_timeout = read_timeout
        self.photos = {n: [jpeg(c, seed=s) for s in range(4)] for n, (_, _, c) in PLACES.items()}
        self.bomb = big_png(12000, 12000)

    def photo_request(self, rng: random.Random) -> tuple[int | None, set[int]]:
        names = rng.choices(list(self.photos), k=rng.randint(1, 3))
        files = [(f"{n}.jpg", rng.choice(self.photos[n])) for n in names]
        if len(files) == 1 and rng.random() < 0.5:
            return exchange(self.port, post(files[0][1], "image/jpeg")), {200}
        return exchange(self.port, post(*multipart(files))), {200}

    def bad_request(self, rng: random.Random) -> tuple[int | None, set[int]]:
        kind = rng.choice(["type", "empty", "corrupt", "health"])
        if kind == "type":
            return exchange(self.port, post(b"hello", "text/plain")), {415}
        if kind == "empty":
            return exchange(self.port, post(b"", "image/jpeg")), {400}
        if kind == "corrupt":
            return exchange(self.port, post(b"\xff\xd8 not really", "image/jpeg")), {422}
        return exchange(self.port, b"GET /v1/health HTTP/1.0\r\n\r\n"), {200}

    def hostile_request(self, rng: random.Random) -> tuple[int | None, set[int]]:
        kind = rng.choice(["negative", "huge", "chunked", "bomb", "stall", "reset"])
        head = "POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
        if kind == "negative":
            return exchange(self.port, f"{head}Content-Length: -1\r\n\r\n".encode()), {400}
        if kind == "huge":
            req = f"{head}Content-Length: 600000000\r\n\r\n".encode()
            return exchange(self.port, req), {413}
        if kind == "chunked":
            req = f"{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode()
            return exchange(self.port, req), {400}
        if kind == "bomb":
            files = [(f"bomb{i}.png", self.bomb) for i in range(8)]
            return exchange(self.port, post(*multipart(files))), {413}
        if kind == "stall":  # promises 1000 bytes, sends 3, waits for the server to give up
            req = f"{head}Content-Length: 1000\r\n\r\nabc".encode()
            return exchange(self.port, req, timeout=self.read_timeout + 30), {408}
        data = self.photos["paris"][0]
        return exchange(self.port, post(data, "image/jpeg"), reset=True), {0}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB; NaN where /proc has none."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def start_server(db: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int, Path]:
    """``geolocus serve`` on an ephemeral loopback port; its process, port and stderr file."""
    log = db.parent / "server.log"
    cmd = [sys.executable, "-m", "geolocus.cli.main", "serve", "--db", str(db), "--port", "0"]
    cmd += ["--refine", args.refine, "--read-timeout", str(args.read_timeout)]
    cmd += ["--max-connections", str(args.max_connections)]
    proc = subprocess.Popen(cmd, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", log.read_text())
        if m:
            return proc, int(m.group(1)), log
        if proc.poll() is not None:
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start within 300 s")


def server_threads(pid: int) -> int:
    m = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else -1


def stalled_phase(port: int, pid: int, k: int, read_timeout: float) -> str:
    """``k`` uploads that stall after 3 bytes, all at once: the server's threads and answers."""
    before = server_threads(pid)
    head = b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
    socks = []
    t0 = time.monotonic()
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout + 30)
        s.sendall(head + b"Content-Length: 1000\r\n\r\nabc")
        socks.append(s)
    time.sleep(0.5)
    during = server_threads(pid)
    statuses: Counter = Counter()
    for s in socks:
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
        except OSError:
            pass
        s.close()
        m = re.match(rb"HTTP/1\.\d (\d{3})", data)
        statuses[int(m.group(1)) if m else "no answer"] += 1
    took = time.monotonic() - t0
    return (
        f"{k} stalled uploads at once: server threads {before} before, {during} during; "
        f"answers {json.dumps({str(a): b for a, b in statuses.items()})}; "
        f"all closed by the server within {took:.1f} s"
    )


def big_phase(port: int, pid: int, k: int, mb: float) -> str:
    """``k`` uploads of ``mb`` MB at once (not photos: each is read whole, then refused 422)."""
    blob = os.urandom(int(mb * 2**20))
    request = post(blob, "image/jpeg")
    before = peak_rss_mb(pid)
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one() -> None:
        try:
            status = exchange(port, request, timeout=120)
        except OSError as e:
            status = type(e).__name__
        with lock:
            statuses[str(status)] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(k)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return (
        f"{k} uploads of {mb:g} MB at once: answers {json.dumps(dict(statuses))} in "
        f"{time.monotonic() - t0:.1f} s; server peak memory {before:.0f} MB before, "
        f"{peak_rss_mb(pid):.0f} MB after"
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="requests in all")
    ap.add_argument("--clients", type=int, default=8, help="client threads")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="stop after this long")
    ap.add_argument("--bad", type=float, default=0.15, help="share of bad requests")
    ap.add_argument("--hostile", type=float, default=0.10, help="share of hostile requests")
    ap.add_argument("--per-place", type=int, default=8, help="database photos per place")
    ap.add_argument("--refine", default="dualgeo")
    ap.add_argument("--read-timeout", type=float, default=2.0, help="the server's, in seconds")
    ap.add_argument("--max-connections", type=int, default=32)
    ap.add_argument("--stalled", type=int, default=300, help="stalled uploads, after the load")
    ap.add_argument("--big", type=int, default=32, help="large uploads at once, at the end")
    ap.add_argument("--big-mb", type=float, default=30.0, help="size of each large upload")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    with tempfile.TemporaryDirectory(prefix="geolocus-load-") as tmp:
        t0 = time.monotonic()
        db = build_db(Path(tmp), args.per_place)
        print(f"database: {len(PLACES) * args.per_place} photos ({time.monotonic() - t0:.1f} s)")
        proc, port, log = start_server(db, args)
        try:
            rss_start = peak_rss_mb(proc.pid)
            mix = Mix(port, args.read_timeout)
            rng = random.Random(args.seed)
            kinds = rng.choices(
                ["photo", "bad", "hostile"],
                weights=[1 - args.bad - args.hostile, args.bad, args.hostile],
                k=args.n,
            )
            seeds = [rng.randrange(2**32) for _ in kinds]
            results: list[tuple[str, int | None, set[int], float]] = []
            lock = threading.Lock()
            next_i = iter(range(args.n))
            t_start = time.monotonic()
            deadline = t_start + args.max_seconds

            def client() -> None:
                while time.monotonic() < deadline:
                    with lock:
                        i = next(next_i, None)
                    if i is None:
                        return
                    kind, r = kinds[i], random.Random(seeds[i])
                    t = time.monotonic()
                    try:
                        status, expected = getattr(mix, f"{kind}_request")(r)
                    except OSError as e:  # the client saw the connection fail
                        status, expected = None, {-1}
                        print(f"client error on a {kind} request: {e}", file=sys.stderr)
                    with lock:
                        results.append((kind, status, expected, time.monotonic() - t))

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.monotonic() - t_start
            rss = peak_rss_mb(proc.pid)
            phases = []
            if args.stalled:
                phases.append(stalled_phase(port, proc.pid, args.stalled, args.read_timeout))
            if args.big:
                phases.append(big_phase(port, proc.pid, args.big, args.big_mb))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text()

    lat_all = [r[3] for r in results]
    lat_photo = [r[3] for r in results if r[0] == "photo"]
    statuses = Counter("hung up" if s is None else s for _, s, _, _ in results)
    unexpected = [(k, s, e) for k, s, e, _ in results if (0 if s is None else s) not in e]
    print(f"requests: {len(results)} of {args.n} in {wall:.1f} s, {args.clients} clients")
    print(f"throughput: {len(results) / wall:.1f} requests/s")
    print(
        f"latency all:    p50 {1000 * percentile(lat_all, 50):.0f} ms, "
        f"p95 {1000 * percentile(lat_all, 95):.0f} ms"
    )
    print(
        f"latency photos: p50 {1000 * percentile(lat_photo, 50):.0f} ms, "
        f"p95 {1000 * percentile(lat_photo, 95):.0f} ms ({len(lat_photo)} requests)"
    )
    print(f"kinds: {json.dumps(Counter(r[0] for r in results))}")
    print(f"statuses: {json.dumps({str(k): v for k, v in sorted(statuses.items(), key=str)})}")
    errors = sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)
    print(f"server errors (5xx): {errors}")
    print(f"answers other than expected: {len(unexpected)} {unexpected[:5]}")
    print(f"server peak resident memory: {rss:.0f} MB ({rss_start:.0f} MB once started)")
    for line in phases:
        print(line)
    lines = server_log.splitlines()
    print(
        f"server log: {len(lines)} lines, {server_log.count('Traceback')} tracebacks, "
        f"{sum('went away' in x for x in lines)} 'client went away'"
    )


if __name__ == "__main__":
    main()
