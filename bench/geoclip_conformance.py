"""Compare our GeoCLIP location encoder with geoclip 1.3.0's own, on random points.

    .venv/bin/python bench/geoclip_conformance.py [--n 10000] [--threads 2]

Points: uniform on the sphere (seed 0), plus the poles and ±180° longitudes.
Prints the max abs differences (ours float32, geoclip float32 and float64) and
the time of each encoder on the points.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from geolocus.encoders.location import GeoCLIPLocationEncoder
from geolocus.encoders.location.reference import geoclip_reference_class


def points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lat = torch.rad2deg(torch.asin(torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1))
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    pts = torch.stack((lat, lon), dim=1)
    pts[:6] = torch.tensor([[90, 0], [-90, 0], [0, 180], [0, -180], [45, 180], [-45, -180]])
    return pts


def timed(f, *a):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = f(*a)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.n} points, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    ours = GeoCLIPLocationEncoder.from_pretrained()
    ref = geoclip_reference_class()(from_pretrained=True).eval()
    pts = points(args.n)
    mine, t_ours = timed(ours, pts)  # float64 coordinates in, float32 embeddings out
    theirs32, t_ref = timed(ref, pts.float())
    theirs64, _ = timed(ref.double(), pts)
    print(f"time: ours {t_ours:.2f} s, geoclip {t_ref:.2f} s (float32)")
    print(f"output scale: max |embedding| {theirs64.abs().max():.4f}")
    print(f"max abs diff ours(f32) vs geoclip(f64): {(mine.double() - theirs64).abs().max():.2e}")
    print(f"max abs diff geoclip(f32) vs geoclip(f64): "
          f"{(theirs32.double() - theirs64).abs().max():.2e}")  # fmt: skip
    print(f"max abs diff ours(f32) vs geoclip(f32): {(mine - theirs32).abs().max():.2e}")
    rounded, _ = timed(ours, pts.float())
    print(f"max abs diff ours on float32-rounded vs float64 coordinates: "
          f"{(rounded - mine).abs().max():.2e}")  # fmt: skip
    e = torch.nn.functional.normalize(mine[2:4], dim=1)
    print(f"cosine between the embeddings of (0, 180) and (0, -180): {float(e[0] @ e[1]):.4f}")


if __name__ == "__main__":
    main()
