"""How fast ``geolocus geotag`` places a collection: photos a second, end to end.

A collection of ``--n`` IM2GPS3k photos (the photographers with the most photos first)
is copied to ``--workdir`` (outside the repository: the photos may not be committed),
with the true position written as EXIF GPS into every second photo and a capture time
(a minute apart, in upload order) into all; then ``geolocus geotag`` runs on it in a
child process with its defaults, and the wall time, the photos placed and the load
average are printed (and written to ``--json``).

    .venv/bin/python bench/geotag_speed.py --n 1000 --workdir /tmp/geotag-speed
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "im2gps3k"


def make_collection(out: Path, n: int) -> int:
    """Copy ``n`` photos into ``out`` with EXIF GPS in every second one; returns how
    many have GPS."""
    with open(SHARED / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    owner = {r["IMG_ID"]: r["IMG_ID"].rsplit("_", 1)[-1].split(".")[0] for r in rows}
    size: dict[str, int] = {}
    for o in owner.values():
        size[o] = size.get(o, 0) + 1
    rows.sort(key=lambda r: (-size[owner[r["IMG_ID"]]], owner[r["IMG_ID"]], r["IMG_ID"]))
    rows = rows[:n]
    out.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2024, 6, 1, 9, 0, 0)
    tagged = 0
    for i, r in enumerate(rows):
        im = Image.open(SHARED / "images" / r["IMG_ID"]).convert("RGB")
        exif = Image.Exif()
        taken = start + dt.timedelta(minutes=i)
        exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
        if i % 2 == 0:
            lat, lon = float(r["LAT"]), float(r["LON"])
            gps = {1: "N" if lat >= 0 else "S", 2: (abs(lat), 0.0, 0.0)}
            gps |= {3: "E" if lon >= 0 else "W", 4: (abs(lon), 0.0, 0.0)}
            exif.get_ifd(0x8825).update(gps)
            tagged += 1
        im.save(out / r["IMG_ID"], quality=92, exif=exif)
    return tagged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (SHARED / "labels.csv").is_file():
        sys.exit(f"geotag_speed: {SHARED} is absent: nothing to measure")
    coll = args.workdir / f"collection-{args.n}"
    shutil.rmtree(coll, ignore_errors=True)
    tagged = make_collection(coll, args.n)
    geolocus = Path(sys.executable).with_name("geolocus")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([str(geolocus), "geotag", str(coll), "--out", str(coll / "out.csv")],
                   check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    with open(coll / "out.csv", newline="") as fh:
        answers = list(csv.DictReader(fh))
    placed = sum(1 for a in answers if a.get("TAGGED") == "yes")
    answered = sum(1 for a in answers if a.get("LAT"))
    result = {
        "photos": args.n,
        "with_gps": tagged,
        "to_place": args.n - tagged,
        "answered": answered,
        "placed": placed,
        "wall_s": round(wall, 1),
        "photos_per_s": round(args.n / wall, 2),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
