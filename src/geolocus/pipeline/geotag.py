"""Geotagging a photo collection from its own geotagged photos.

Many collections are partly geotagged: photos from a phone carry GPS, those
from a camera do not. The geotagged photos become the retrieval database
(built resumably in ``COLLECTION/.geolocus/db``), and every photo without a
position is geolocated against it. A leave-one-out check on the geotagged
photos says how far the answers can be trusted for this collection.

Nothing in the collection is modified. Answers go to a CSV (``IMG_ID,LAT,LON``
plus confidence, radius and place, readable by ``geolocus evaluate``) and,
on request, to XMP sidecar files (``photo.jpg.xmp``) that photo managers such
as darktable and digiKam read; an existing sidecar is never overwritten.
Answers are also appended to ``.geolocus/geotag-partial.csv`` as they come, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.images import read_exif_time
from geolocus.errors import ImageError, InputError
from geolocus.eval import results_table, score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.files import atomic_write, check_output_path, write_text_atomic
from geolocus.geo import haversine_km
from geolocus.index.build import Inputs, build_database, gather_inputs, inputs_source
from geolocus.models.embedder import create_embedder
from geolocus.pipeline.collections import COLLECTION_K
from geolocus.pipeline.fitting import loo_neighbours
from geolocus.pipeline.geolocator import Geolocator, PlaceSettings, RetrievalSettings
from geolocus.pipeline.refining import stage2_choice
from geolocus.refine import Refiner

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

WORK = ".geolocus"
PARTIAL = "geotag-partial.csv"
FIELDS = ("IMG_ID", "LAT", "LON", "CONFIDENCE", "UNCERTAINTY_KM", "PLACE", "ERROR")
#: Photos placed with less confidence are left untagged (docs/collections.md: the share
#: placed and its accuracy at each level).
MIN_CONFIDENCE = 0.3
#: The default stage 2 (docs/collections.md: what won on the collection benchmark).
DEFAULT_REFINE = "collection"


@dataclass
class GeotagResult:
    """What a geotagging run did."""

    geotagged: int  # photos that already had a position (the database)
    predicted: list[dict[str, Any]] = field(default_factory=list)  # rows of FIELDS, tagged
    failed: list[dict[str, Any]] = field(default_factory=list)
    unsure: list[dict[str, Any]] = field(default_factory=list)  # below min_confidence
    check: Any | None = None  # geolocus.eval.Scores of the leave-one-out check
    refiner: str = ""

    @property
    def n_predicted(self) -> int:
        return len(self.predicted)


def _row(pred: Any, rid: str) -> dict[str, Any]:
    if not pred.ok:
        return dict.fromkeys(FIELDS, "") | {"IMG_ID": rid, "ERROR": pred.error or "no answer"}
    g = pred.top
    return {
        "IMG_ID": rid,
        "LAT": f"{g.lat:.6f}",
        "LON": f"{g.lon:.6f}",
        "CONFIDENCE": "" if g.confidence is None else f"{g.confidence:.4f}",
        "UNCERTAINTY_KM": "" if g.uncertainty_km is None else f"{g.uncertainty_km:.1f}",
        "PLACE": g.label,
        "ERROR": "",
    }


def _tagged(row: dict[str, Any], min_confidence: float) -> str:
    """``yes``: placed; ``no``: a guess below ``min_confidence``, left untagged; empty: no
    answer (the photo could not be read)."""
    if row.get("ERROR") or not row.get("LAT"):
        return ""
    conf = row.get("CONFIDENCE") or ""
    return "no" if conf and float(conf) < min_confidence else "yes"


def _read_partial(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["IMG_ID"]: r for r in csv.DictReader(fh) if r.get("IMG_ID")}


def leave_one_out_check(geolocator: Geolocator, folds: int = 5) -> Any:
    """Accuracy on the database's own photos, each searched without itself: an estimate
    of how well the photos without a position are placed.

    A refiner fitted on the database is cross-validated (fitted on the other folds'
    photos), so the estimate is not scored on what it was fitted on; one used unfitted
    (``collection``'s prior) is scored as it is.
    """
    r = geolocator.retrieval
    refiner = geolocator.refiner
    if geolocator.database is None or refiner is None:
        raise InputError("the leave-one-out check needs a database of geotagged photos")
    # each photo has one other photo fewer than the database: never pad with repeats
    k = max(1, min(r.k, len(geolocator.database) - 1))
    nb, truth = loo_neighbours(geolocator.database, k, min(r.k_far, k))
    if refiner.learns and refiner.is_fitted() and len(nb) >= 2 * folds:
        fold = np.random.default_rng(0).permutation(len(nb)) % folds
        top = cross_val_predict(refiner.clone, nb, truth, fold)
    else:
        top = refiner.predict(nb)
    return score_errors(haversine_km(top[:, 0], top[:, 1], truth[:, 0], truth[:, 1]))


def xmp_sidecar(lat: float, lon: float) -> str:
    """An XMP packet with EXIF GPS in the XMP form (degrees, decimal minutes, N/S/E/W)."""

    def dm(v: float, pos: str, neg: str) -> str:
        a = abs(v)
        d = int(a)
        return f"{d},{(a - d) * 60:.6f}{pos if v >= 0 else neg}"

    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
        f'    exif:GPSLatitude="{dm(lat, "N", "S")}" exif:GPSLongitude="{dm(lon, "E", "W")}"\n'
        '    exif:GPSVersionID="2.3.0.0"/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    )


def write_sidecars(rows: list[dict[str, Any]], root: Path) -> tuple[int, list[str]]:
    """XMP sidecars beside the photos; returns how many were written and the ones skipped
    because a sidecar already exists."""
    written, skipped = 0, []
    for r in rows:
        if not r.get("LAT"):
            continue
        side = root / f"{r['IMG_ID']}.xmp"
        if side.exists():
            skipped.append(str(side))
            continue
        write_text_atomic(side, xmp_sidecar(float(r["LAT"]), float(r["LON"])))
        written += 1
    return written, skipped


def capture_times(photos: list[tuple[str, str]]) -> dict[str, float]:
    """EXIF capture times (seconds) of ``(id, path)`` pairs, keyed by both the id and the
    path (the geolocator names a photo it reads by its path); photos without one are left
    out."""
    times: dict[str, float] = {}
    for pid, path in photos:
        try:
            t = read_exif_time(path)
        except (ImageError, OSError):
            continue
        if t is not None:
            times[pid] = times[str(path)] = t
    return times


def collection_refiner(
    inputs: Inputs, targets: list[Any], work: Path, verify: bool = False
) -> Refiner:
    """The default stage 2 (``collection``, its hand-set prior: nothing to fit on a small
    collection) with the photos' capture times and, with ``verify``, local-feature
    verification of the most similar photos (keypoints cached in ``work``)."""
    from geolocus.refine.collection import CollectionRefiner

    r = CollectionRefiner(use_time=True, use_inliers=verify)
    photos = list(zip(inputs.ids, inputs.paths, strict=True))
    photos += [(p.id, str(p.path)) for p in targets]
    r.times = capture_times(photos)
    if verify:
        from geolocus.refine.verify import Verifier

        where = {pid: str(path) for pid, path in photos} | {
            str(p.path): str(p.path) for p in targets
        }
        r.inliers = Verifier(where.get, cache=work / "local")
    return r


def geotag(
    collection: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    embedder: Embedder | None = None,
    refine: str | None = None,
    objective: str | None = None,
    db: str | os.PathLike[str] | None = None,
    check: bool = True,
    verify: bool = False,
    min_confidence: float = MIN_CONFIDENCE,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> GeotagResult:
    """Geolocate the photos of ``collection`` that have no EXIF GPS from those that have.

    ``model`` names the backbone or model file (``embedder`` passes one already
    made). ``refine`` defaults to :data:`DEFAULT_REFINE` (``collection``: similarity-weighted
    votes of the collection's photos and their capture times, see
    :mod:`geolocus.refine.collection`); ``objective``: what a refiner with a choice of
    training objectives (``best``) is fitted to; ``verify`` adds local-feature verification.
    A photo whose answer has a confidence below ``min_confidence`` is left untagged: its
    guess is in the CSV (``TAGGED`` no) but it gets no sidecar.
    """
    name = refine or DEFAULT_REFINE
    stage2 = stage2_choice(name, objective)  # a bad name or objective: before any work
    root = Path(collection).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of photos")
    check_output_path(out, "output")  # refused now, not after the database is built
    work = root / WORK
    db_path = Path(db) if db is not None else work / "db"
    inputs = gather_inputs(root, exif=True, progress=progress)
    # list_images skips hidden folders, so the .geolocus work folder is never read as photos
    targets = [p for p in inputs.problems if p.problem == "no EXIF GPS"]
    unreadable = [p for p in inputs.problems if p.problem == "unreadable"]
    if len(inputs) < 2:
        raise InputError(
            f"{root}: {len(inputs)} photo(s) with EXIF GPS; geotagging needs at least 2 "
            "geotagged photos to learn from"
        )
    if embedder is None:
        embedder = create_embedder(model)
    built = build_database(
        db_path, inputs_source(inputs), embedder, overwrite=True, progress=progress
    )
    log(built.summary())
    retrieval = RetrievalSettings(batch_size=batch_size)
    if name == DEFAULT_REFINE:
        stage2 = collection_refiner(inputs, targets, work, verify=verify)
        retrieval = RetrievalSettings(k=COLLECTION_K, k_far=0, batch_size=batch_size)
    geo = Geolocator.from_database(
        built.database,
        stage2,
        embedder=embedder,
        retrieval=retrieval,
        places=PlaceSettings(top_k=1),
    )
    result = GeotagResult(geotagged=len(inputs), refiner=name)
    result.failed = [{"IMG_ID": p.id, "ERROR": p.detail} for p in unreadable]
    if check and len(inputs) >= 3:
        result.check = leave_one_out_check(geo)
    partial = work / PARTIAL
    done = _read_partial(partial)
    todo = [p.path for p in targets if p.id not in done]
    if done:
        log(f"resuming: {len(done)} photos already geotagged, {len(todo)} to go")
    work.mkdir(parents=True, exist_ok=True)
    new_file = not partial.exists()
    with open(partial, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            w.writeheader()

        # ids are paths inside the collection: a photo that is a link to a file elsewhere
        # keeps its place here (and its sidecar goes beside the link, not outside)
        ids = {p.path: p.id for p in targets}

        def keep(pred: Any) -> None:
            row = _row(pred, ids[pred.image])
            done[row["IMG_ID"]] = row
            w.writerow(row)
            fh.flush()

        if todo:
            geo.predict(todo, progress=progress, on_result=keep)
    rows = [
        done[p.id] | {"TAGGED": _tagged(done[p.id], min_confidence)}
        for p in targets
        if p.id in done
    ]
    result.predicted = [r for r in rows if r["TAGGED"] == "yes"]
    result.unsure = [r for r in rows if r["TAGGED"] == "no"]
    result.failed += [r for r in rows if r.get("ERROR")]
    with atomic_write(out, newline="", encoding="utf-8") as out_fh:
        w = csv.DictWriter(out_fh, fieldnames=(*FIELDS, "TAGGED"))
        w.writeheader()
        w.writerows(rows)
    partial.unlink(missing_ok=True)
    return result


def check_table(scores: Any) -> str:

    return results_table([("leave-one-out on the geotagged photos", scores)])


__all__ = ["GeotagResult", "geotag", "leave_one_out_check", "write_sidecars", "xmp_sidecar"]
