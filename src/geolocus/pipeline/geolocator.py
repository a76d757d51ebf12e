"""The geolocator: photos in, top-k places with confidence, place names and a radius out.

>>> geo = Geolocator.from_database("my-db", refine="dualgeo", top_k=5)
>>> [pred] = geo(["photo.jpg"])
>>> pred.top.lat, pred.top.lon, pred.top.confidence, pred.top.label

Per batch of photos: decode and preprocess (in a background thread, while the
backbone runs on the previous batch), embed with the database's model,
retrieve near and far neighbours, rank them with a stage-2 refiner, add
GPS-gallery candidates where the model has a location head, merge them into
distinct places (:mod:`geolocus.pipeline.candidates`), name the places
offline, and optionally let a multimodal model choose. A photo that cannot be
read gets a :class:`Prediction` with ``error`` set; the others go on.
Everything that is loaded once (weights, index, gazetteer, gallery, a fitted
refiner) is loaded when the geolocator is made, not per photo.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.errors import ImageError, ServiceError
from geolocus.index.database import Database
from geolocus.pipeline.candidates import MERGE_KM, SUPPORT_KM, distinct_places, pool_candidates
from geolocus.pipeline.fitting import fit_on_database
from geolocus.pipeline.results import Guess, Prediction
from geolocus.refine import Refiner, create

#: Refiner used when none is named.
DEFAULT_REFINER = "dualgeo"
#: How many candidate places the multimodal model is shown, and far neighbours.
LMM_CANDIDATES = 10
LMM_FAR = 10


def _warn(msg: str) -> None:
    print(f"geolocus: warning: {msg}", file=sys.stderr)


def _name_of(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return str(getattr(item, "filename", "") or getattr(item, "name", "") or f"<image {i + 1}>")


class Geolocator:
    """Stage 1 (retrieval) and stage 2 (refinement) over one database (see module doc).

    - ``database``: a :class:`Database` or its folder; ``embedder``: the model it
      was built with (default: read from the manifest, checked).
    - ``refiner``: a name (``nearest``, ``dualgeo``, ``kde``, ``best``) or a
      :class:`Refiner`; one named that learns is fitted on the database by
      leave-one-out (grouped by ``fit_groups`` if given) and cached there; an
      instance is used as given unless it requires fitting and is not fitted.
    - ``k`` / ``k_far``: near and far neighbours retrieved; ``top_k``: places
      returned; ``merge_km``: candidates closer than this are one place.
    - ``gps_k`` / ``gps_weight``: gallery candidates of a location head and their
      share of the weight.
    - ``lmm``: a :class:`geolocus.refine.lmm.LMMClient` that chooses among the
      places; ``lmm_fallback``: on a server failure warn (once) and keep the
      geometric answer instead of raising :class:`ServiceError`.
    - ``warmup``: run one blank photo through at once (see :meth:`warmup`).
    """

    def __init__(
        self,
        database: Database | str | os.PathLike[str],
        embedder: Any | None = None,
        refiner: Refiner | str = DEFAULT_REFINER,
        *,
        top_k: int = 5,
        k: int = 20,
        k_far: int = 20,
        merge_km: float = MERGE_KM,
        support_km: float = SUPPORT_KM,
        gps_k: int = 10,
        gps_weight: float = 0.5,
        lmm: Any | None = None,
        lmm_fallback: bool = False,
        place_names: bool = True,
        batch_size: int = 16,
        loader_threads: int = 1,
        nprobe: int | None = None,
        fit_groups: Callable[[str], str] | None = None,
        cache_refiner: bool = True,
        check_model: bool = True,
        warmup: bool = True,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        from geolocus.errors import InputError
        from geolocus.index.build import check_embedder, embedder_for

        self.database = database if isinstance(database, Database) else Database.open(database)
        if embedder is None:
            embedder = embedder_for(self.database)
        elif check_model:
            check_embedder(self.database, embedder)
        self.embedder = embedder
        if top_k < 1 or k < 1 or k_far < 0:
            raise InputError("top_k and k must be at least 1, k_far at least 0")
        # a small database cannot fill k: padded repeats would count as extra votes
        n_db = max(1, len(self.database))
        self.top_k, self.k, self.k_far = int(top_k), min(int(k), n_db), min(int(k_far), n_db)
        self.merge_km, self.support_km = float(merge_km), float(support_km)
        self.gps_k, self.gps_weight = int(gps_k), float(gps_weight)
        self.lmm, self.lmm_fallback = lmm, bool(lmm_fallback)
        self.batch_size, self.loader_threads = max(1, int(batch_size)), max(1, int(loader_threads))
        self.nprobe = nprobe
        self.warn = warn
        self.refiner = create(refiner) if isinstance(refiner, str) else refiner
        fitted = any(k.endswith("_") and not k.startswith("_") for k in vars(self.refiner))
        if isinstance(refiner, str) or (self.refiner.requires_fit and not fitted):
            # a refiner given fitted (or configured by hand) is used as it is
            self.refiner = fit_on_database(
                self.refiner,
                self.database,
                self.k,
                self.k_far,
                groups=fit_groups,
                cache=cache_refiner,
                nprobe=nprobe,
            )
        self.gazetteer = None
        if place_names:
            from geolocus.places import Gazetteer

            self.gazetteer = Gazetteer.load()
            self.gazetteer.reverse_geocode(0.0, 0.0)  # builds its k-d tree now, not per photo
        self.timing: dict[str, float] = {}
        self.reset_timing()
        if warmup:
            self.warmup()
            self.reset_timing()

    def warmup(self) -> None:
        """One blank photo through every stage, so that one-time costs (lazy imports,
        kernel selection, k-d trees) are paid when the geolocator is made, not per photo."""
        from PIL import Image

        size = self.embedder.encoder.image_size
        lmm, self.lmm = self.lmm, None
        try:
            self.predict([Image.new("RGB", (size, size), (128, 128, 128))])
        finally:
            self.lmm = lmm

    @classmethod
    def from_database(
        cls,
        path: str | os.PathLike[str],
        refine: Refiner | str = DEFAULT_REFINER,
        top_k: int = 5,
        *,
        model: str | None = None,
        lmm_url: str | None = None,
        lmm_model: str | None = None,
        **kwargs: Any,
    ) -> Geolocator:
        """A geolocator over the database at ``path``, with the model it was built with
        (``model``, if given, must be that one)."""
        from geolocus.index.build import embedder_for

        db = Database.open(path)
        embedder = embedder_for(db, model)
        lmm = kwargs.pop("lmm", None)
        if lmm_url is not None:
            from geolocus.refine.lmm import LMMClient

            lmm = LMMClient(lmm_url, lmm_model or "default")
        return cls(db, embedder, refine, top_k=top_k, lmm=lmm, **kwargs)

    # -- timing -------------------------------------------------------------------------------

    def reset_timing(self) -> None:
        """Zero the per-stage clocks (seconds): load, forward, embed, search, refine, places,
        lmm, total."""
        self.timing = dict.fromkeys(
            ("load", "forward", "embed", "search", "refine", "places", "lmm", "total"), 0.0
        )

    def _tick(self, stage: str, t0: float) -> float:
        t = time.perf_counter()
        self.timing[stage] += t - t0
        return t

    # -- reading photos -----------------------------------------------------------------------

    def _load(self, item: Any, i: int) -> tuple[np.ndarray | None, Any, Any, str | None]:
        """(pixels, image kept for the LMM, EXIF GPS, error) of one input."""
        from PIL import Image

        from geolocus.data.images import load_photo, to_rgb

        prep = self.embedder.encoder.preprocessing
        try:
            if isinstance(item, Image.Image):
                im, gps = to_rgb(item), None
            else:
                src = item
                if hasattr(item, "read"):  # a stream can be read only once
                    src = item.read()
                    if not isinstance(src, (bytes, bytearray)):
                        raise ImageError(f"{_name_of(item, i)}: not a binary file object")
                min_side = None if self.lmm is not None else prep.resize
                im, gps = load_photo(src, min_size=min_side)
            arr = prep.image(im)
            return arr, (im if self.lmm is not None else None), gps, None
        except ImageError as e:
            msg = str(e)
            if isinstance(item, (bytes, bytearray, io.IOBase)) or hasattr(item, "read"):
                msg = msg.replace("<image bytes>", _name_of(item, i))
            return None, None, None, msg
        except Exception as e:  # a decoder bug on one photo must not end the batch
            return None, None, None, f"{_name_of(item, i)}: {type(e).__name__}: {e}".splitlines()[0]

    # -- prediction ---------------------------------------------------------------------------

    def predict(
        self, images: Any, progress: bool = False, on_result: Callable | None = None
    ) -> list[Prediction]:
        """Geolocate photos: paths, bytes, binary files or Pillow images (one or a list).

        Returns one :class:`Prediction` per input, in order; unreadable inputs
        get ``error`` set. ``on_result`` is called with each prediction as soon as
        its batch is done (for streaming output).
        """
        import torch

        items = self._as_list(images)
        n = len(items)
        out: list[Prediction | None] = [None] * n
        if n == 0:
            return []
        t_start = time.perf_counter()
        bs = self.batch_size
        batches = [range(s, min(n, s + bs)) for s in range(0, n, bs)]

        def load_batch(rows: range) -> list:
            return [self._load(items[i], i) for i in rows]

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="geolocating", unit="img")
        with ThreadPoolExecutor(max_workers=self.loader_threads) as pool:
            pending = pool.submit(load_batch, batches[0])
            for j, rows in enumerate(batches):
                t0 = time.perf_counter()
                loaded = pending.result()
                if j + 1 < len(batches):
                    pending = pool.submit(load_batch, batches[j + 1])
                # decoding overlaps the forward pass: count only the time waited for it
                self._tick("load", t0)
                good = [i for i, r in zip(rows, loaded, strict=True) if r[0] is not None]
                for i, r in zip(rows, loaded, strict=True):
                    if r[0] is None:
                        out[i] = Prediction(image=_name_of(items[i], i), error=r[3])
                if good:
                    t = time.perf_counter()
                    x = torch.from_numpy(np.stack([r[0] for r in loaded if r[0] is not None]))
                    with torch.no_grad():
                        feats = self.embedder.encoder(x)
                    t = self._tick("forward", t)
                    tok = self.embedder.backbone_tokens(feats)
                    vec = self.embedder.embed_features(feats.embedding, tok)
                    gps = None
                    if self.embedder.has_gps and self.gps_k > 0:
                        gps = self.embedder.gps_candidates(feats.embedding, tok, self.gps_k)
                    self._tick("embed", t)
                    kept = [r for r in loaded if r[0] is not None]
                    preds = self.locate(
                        vec,
                        [_name_of(items[i], i) for i in good],
                        gps=gps,
                        images=[r[1] for r in kept],
                        exif=[r[2] for r in kept],
                    )
                    for i, p in zip(good, preds, strict=True):
                        out[i] = p
                for i in rows:
                    if on_result is not None:
                        on_result(out[i])
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        self.timing["total"] += time.perf_counter() - t_start
        return [p for p in out if p is not None]

    __call__ = predict

    @staticmethod
    def _as_list(images: Any) -> list[Any]:
        from PIL import Image

        if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)) or hasattr(
            images, "read"
        ):
            return [images]
        return list(images)

    def locate(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        gps: tuple[np.ndarray, np.ndarray] | None = None,
        images: Sequence[Any] | None = None,
        exif: Sequence[Any] | None = None,
    ) -> list[Prediction]:
        """Stage 1 and 2 for embedded photos: ``vectors`` ``(N, dim)`` from the embedder,
        ``gps`` its gallery candidates ``(N, G, 2)`` and probabilities ``(N, G)``."""
        t = time.perf_counter()
        nb = self.database.search(
            vectors, k=self.k, k_far=self.k_far, query_ids=list(ids), nprobe=self.nprobe
        )
        t = self._tick("search", t)
        ranking = self.refiner.rank(nb)
        n_places = max(self.top_k, LMM_CANDIDATES if self.lmm is not None else 0)
        places_per = []
        for i in range(len(nb)):
            g = None if gps is None else (gps[0][i], gps[1][i])
            coords, w, src = pool_candidates(
                ranking.candidates[i], ranking.scores[i], g, self.gps_weight
            )
            places_per.append(
                distinct_places(
                    coords,
                    w,
                    src,
                    top_k=n_places,
                    merge_km=self.merge_km,
                    support_km=self.support_km,
                    by_weight=g is not None,
                )
            )
        t = self._tick("refine", t)
        named = self._names([(p.lat, p.lon) for ps in places_per for p in ps])
        t = self._tick("places", t)
        preds = []
        pos = 0
        for i, ps in enumerate(places_per):
            guesses = [
                Guess(p.lat, p.lon, p.confidence, named[pos + j], p.uncertainty_km, p.source)
                for j, p in enumerate(ps)
            ]
            pos += len(ps)
            preds.append(
                Prediction(
                    image=str(ids[i]),
                    guesses=guesses,
                    exif_gps=None if exif is None else exif[i],
                    neighbours=nb.subset(slice(i, i + 1)),
                )
            )
        if self.lmm is not None:
            for i, p in enumerate(preds):
                if self.lmm is None:
                    break
                self._ask_lmm(p, None if images is None else images[i])
            t = self._tick("lmm", t)
        for p in preds:
            del p.guesses[self.top_k :]
        return preds

    def _names(self, points: list[tuple[float, float]]) -> list[Any]:
        if self.gazetteer is None or not points:
            return [None] * len(points)
        lat = np.array([p[0] for p in points])
        lon = np.array([p[1] for p in points])
        return list(self.gazetteer.reverse_geocode(lat, lon))

    def _ask_lmm(self, pred: Prediction, image: Any) -> None:
        """Let the multimodal model choose; its answer becomes guess 1."""
        from geolocus.geo import haversine_km
        from geolocus.refine.lmm import Candidate

        if image is None:
            return
        near = [Candidate(g.lat, g.lon, g.label, g.confidence) for g in pred.guesses]
        far_pts = pred.neighbours.far[0][:LMM_FAR] if pred.neighbours is not None else []
        far_names = self._names([(float(a), float(b)) for a, b in far_pts])
        far = [
            Candidate(float(a), float(b), "" if pl is None else pl.label)
            for (a, b), pl in zip(far_pts, far_names, strict=True)
        ]
        t = time.perf_counter()
        try:
            ans = self.lmm.ask(image, near, far)
        except ServiceError as e:
            if not self.lmm_fallback:
                raise
            self.warn(f"{e}; using the geometric answer for this and the remaining photos")
            pred.notes.append(f"lmm failed: {e}")
            self.lmm = None
            return
        finally:
            self.timing["lmm"] += time.perf_counter() - t
        for j, g in enumerate(pred.guesses):
            if haversine_km(g.lat, g.lon, ans.lat, ans.lon) < self.merge_km:
                g.source = "lmm" if g.source == "lmm" else f"{g.source}+lmm"
                pred.guesses.insert(0, pred.guesses.pop(j))
                break
        else:
            place = self._names([(ans.lat, ans.lon)])[0]
            pred.guesses.insert(0, Guess(ans.lat, ans.lon, None, place, None, "lmm"))
        if ans.reason:
            pred.notes.append(f"lmm: {ans.reason}")


def expand_inputs(
    args: Iterable[str | os.PathLike[str]],
    on_skip: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Photo arguments as a list of paths: files as given, folders expanded to their photos,
    ``.txt``/``.lst`` files read as one path per line (relative to the list's folder).

    What a folder holds that cannot be used (link loops, unreadable sub-folders) goes to
    ``on_skip(path, reason)`` (see :func:`~geolocus.data.images.list_images`)."""
    from geolocus.data.images import list_images
    from geolocus.errors import InputError

    out: list[str] = []
    for a in args:
        if not str(a).strip():  # Path("") is ".": an empty argument must not list the cwd
            raise InputError("an empty photo path was given")
        p = Path(a)
        if p.is_dir():
            out += [str(x) for x in list_images(p, on_skip=on_skip)]
        elif p.suffix.lower() in (".txt", ".lst", ".list") and p.is_file():
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"cannot read the list of photos {p}: {e}") from None
            for line in lines:
                s = line.strip()
                if s and not s.startswith("#"):
                    q = Path(s).expanduser()
                    out.append(str(q if q.is_absolute() else p.parent / q))
        else:
            out.append(str(p))
    return out
