"""The geolocator: photos in, top-k places with confidence, place names and a radius out.

>>> geo = Geolocator.from_database("my-db", refine="dualgeo", places=PlaceSettings(top_k=5))
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
refiner) is loaded by :meth:`Geolocator.from_database`, not per photo; the
constructor only stores what it is given. The settings come in small frozen
groups: :class:`RetrievalSettings`, :class:`PlaceSettings`,
:class:`GallerySettings` and :class:`LMMSettings`.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.images import list_images, load_photo, to_rgb
from geolocus.data.neighbours import Neighbours
from geolocus.errors import ImageError, InputError, ServiceError
from geolocus.geo import haversine_km
from geolocus.index.build import check_embedder, embedder_for
from geolocus.index.database import Database
from geolocus.models.embedder import Embedder
from geolocus.models.gallery import top_k as gallery_top_k
from geolocus.pipeline.candidates import MERGE_KM, SUPPORT_KM, distinct_places, pool_candidates
from geolocus.pipeline.fitting import fit_on_database
from geolocus.pipeline.results import Guess, Heatmap, Prediction
from geolocus.places import Gazetteer
from geolocus.refine import DEFAULT_REFINER, Refiner, create_refiner
from geolocus.refine.lmm import Candidate, LMMClient
from geolocus.refine.procedures import (
    CHOOSE,
    G3,
    GALLERY,
    RETRIEVED,
    Generator,
    Procedure,
    run_dualgeo,
    run_g3,
)

if TYPE_CHECKING:
    from geolocus.places import Gazetteer
    from geolocus.refine.lmm import Chooser

#: How many candidate places the multimodal model is shown, and far neighbours.
LMM_CANDIDATES = 10
LMM_FAR = 10


#: One input as read: (pixels, the image kept for the LMM, EXIF GPS, error).
_Loaded = tuple["np.ndarray | None", Any, Any, "str | None"]


def _warn(msg: str) -> None:
    print(f"geolocus: warning: {msg}", file=sys.stderr)


def _name_of(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return str(getattr(item, "filename", "") or getattr(item, "name", "") or f"<image {i + 1}>")


@dataclass(frozen=True)
class RetrievalSettings:
    """Stage 1: ``k`` near and ``k_far`` far neighbours per photo, ``nprobe`` inverted lists
    searched (IVF indexes; None: the database's default), photos per forward pass and
    threads decoding the next batch meanwhile."""

    k: int = 20
    k_far: int = 20
    nprobe: int | None = None
    batch_size: int = 16
    loader_threads: int = 1

    def __post_init__(self) -> None:
        if self.k < 1 or self.k_far < 0:
            raise InputError("k must be at least 1, k_far at least 0")
        if self.batch_size < 1 or self.loader_threads < 1:
            raise InputError("batch_size and loader_threads must be at least 1")

    def within(self, n: int) -> RetrievalSettings:
        """These settings for a database of ``n`` photos: it cannot fill more than ``n``
        neighbours, and padded repeats would count as extra votes."""
        n = max(1, n)
        return replace(self, k=min(self.k, n), k_far=min(self.k_far, n))


@dataclass(frozen=True)
class PlaceSettings:
    """Candidates to places: ``top_k`` places returned, candidates closer than ``merge_km``
    are one place, ``support_km`` bounds its radius; ``names``: name the places offline."""

    top_k: int = 5
    merge_km: float = MERGE_KM
    support_km: float = SUPPORT_KM
    names: bool = True

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise InputError("top_k must be at least 1")


@dataclass(frozen=True)
class GallerySettings:
    """A location head's GPS-gallery candidates: ``k`` per photo (0: none) and their share
    of the weight against the retrieved neighbours; ``heatmap``: keep each photo's
    probability of every gallery location (:attr:`Prediction.heatmap`, for maps)."""

    k: int = 10
    weight: float = 0.5
    heatmap: bool = False


#: The worldwide models that answer without a database (:meth:`Geolocator.worldwide`).
WORLD_MODELS = ("geoclip", "streetclip")
#: Gallery candidates of a worldwide model alone: enough to fill the top-k distinct places.
WORLD_GALLERY = GallerySettings(k=100)


@dataclass(frozen=True)
class LMMSettings:
    """A multimodal model in stage 2 (e.g. a :class:`geolocus.refine.lmm.LMMClient`), used
    as ``procedure`` says (:mod:`geolocus.refine.procedures`): ``choose`` (the default:
    ``client.ask`` chooses among the places), ``g3`` (geo-diversification, then
    geo-verification under the embedder's location head) or ``dualgeo`` (the cluster
    re-ranked neighbours in the prompt, samples merged). With ``fallback`` a server failure
    warns once and keeps the geometric answer instead of raising :class:`ServiceError`."""

    client: Chooser
    fallback: bool = False
    procedure: Procedure = field(default_factory=Procedure)

    def __post_init__(self) -> None:
        if self.procedure.name != CHOOSE and not callable(getattr(self.client, "generate", None)):
            raise InputError(f"the {self.procedure.name} procedure needs a client that generates")

    @classmethod
    def from_url(
        cls,
        url: str,
        model: str = "default",
        fallback: bool = False,
        procedure: Procedure | None = None,
    ) -> LMMSettings:
        """An OpenAI-compatible server at ``url`` (nothing is sent until a photo is asked)."""

        return cls(LMMClient(url, model), fallback, procedure or Procedure())


class Geolocator:
    """Stage 1 (retrieval) and stage 2 (refinement) over one database (see module doc), or
    a worldwide model alone.

    Made by :meth:`from_database`, which opens the database, creates or checks the
    embedder, fits the refiner (cached in the database) and loads the gazetteer, or by
    :meth:`worldwide`. The constructor only stores what it is given, ready to use: a
    :class:`Database` (None: the embedder's gallery candidates are the whole answer), the
    :class:`Embedder` it was built with (checked), a :class:`Refiner` already fitted if
    it learns, and the gazetteer that names places (None: unnamed).
    """

    def __init__(
        self,
        database: Database | None,
        embedder: Embedder,
        refiner: Refiner | None,
        *,
        retrieval: RetrievalSettings = RetrievalSettings(),
        places: PlaceSettings = PlaceSettings(),
        gallery: GallerySettings = GallerySettings(),
        lmm: LMMSettings | None = None,
        gazetteer: Gazetteer | None = None,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        if database is None:
            if not embedder.has_gps or gallery.k < 1:
                raise InputError(
                    f"{embedder.name} has no gallery to answer from without a database"
                )
        else:
            check_embedder(database, embedder)  # the manifest in memory: no file is read
            retrieval = retrieval.within(len(database))
            if refiner is None:
                raise InputError("a database needs a refiner")
        g3 = lmm is not None and lmm.procedure.name == G3
        if g3 and not getattr(embedder, "has_location_head", False):
            raise InputError(
                f"G3's geo-verification needs a model with a location head; {embedder.name} "
                "has none (use geoclip, or a database built with a GeoCLIP, DualGeo or "
                "TransGeoCLIP model file)"
            )
        self.database, self.embedder, self.refiner = database, embedder, refiner
        self.retrieval = retrieval
        self.places, self.gallery, self.lmm = places, gallery, lmm
        self.gazetteer = gazetteer if places.names else None
        self.warn = warn
        self.timing: dict[str, float] = {}
        self.reset_timing()

    @classmethod
    def from_database(
        cls,
        database: Database | str | os.PathLike[str],
        refine: Refiner | str = DEFAULT_REFINER,
        *,
        embedder: Embedder | None = None,
        model: str | None = None,
        retrieval: RetrievalSettings = RetrievalSettings(),
        places: PlaceSettings = PlaceSettings(),
        gallery: GallerySettings = GallerySettings(),
        lmm: LMMSettings | None = None,
        fit_groups: Callable[[str], str] | None = None,
        cache_refiner: bool = True,
        warmup: bool = True,
        warn: Callable[[str], None] = _warn,
    ) -> Geolocator:
        """A geolocator over ``database`` (a :class:`Database` or its folder), everything
        loaded once.

        - ``embedder``: the model the database was built with; default: made from the
          manifest (``model``, if given, must be that one).
        - ``refine``: a name (``nearest``, ``dualgeo``, ``kde``, ``best``) or a
          :class:`Refiner`; one named that learns is fitted on the database by
          leave-one-out (grouped by ``fit_groups`` if given) and cached there
          (``cache_refiner``); an instance is used as given unless it requires fitting
          and is not fitted.
        - ``warmup``: run one blank photo through at once (see :meth:`warmup`).
        """
        db = database if isinstance(database, Database) else Database.open(database)
        if embedder is None:
            embedder = embedder_for(db, model)
        near = retrieval.within(len(db))
        refiner = create_refiner(refine) if isinstance(refine, str) else refine
        if isinstance(refine, str) or (refiner.requires_fit and not refiner.is_fitted()):
            # a refiner given fitted (or configured by hand) is used as it is
            refiner = fit_on_database(
                refiner,
                db,
                near.k,
                near.k_far,
                groups=fit_groups,
                cache=cache_refiner,
                nprobe=near.nprobe,
            )
        return cls._assemble(
            db, embedder, refiner, retrieval, places, gallery, lmm, warmup=warmup, warn=warn
        )

    @classmethod
    def worldwide(
        cls,
        model: str = "geoclip",
        *,
        embedder: Embedder | None = None,
        pretrained: bool = True,
        retrieval: RetrievalSettings = RetrievalSettings(),
        places: PlaceSettings = PlaceSettings(),
        gallery: GallerySettings = WORLD_GALLERY,
        lmm: LMMSettings | None = None,
        warmup: bool = True,
        warn: Callable[[str], None] = _warn,
    ) -> Geolocator:
        """A geolocator that needs no database: a worldwide model answers alone.

        - ``geoclip``: CLIP ViT-L/14 → GeoCLIP's published image head → its 100K-location
          gallery (GeoCLIP's own prediction; each answer's confidence is its probability).
        - ``streetclip``: StreetCLIP zero-shot, countries then their cities
          (:mod:`geolocus.pipeline.worldwide`).

        Their CLIP weights come from ``geolocus download`` (a one-line error names it
        when they are missing); ``pretrained=False`` builds them with random weights
        (tests); ``embedder`` replaces the model outright.
        """
        if embedder is None:
            from geolocus.pipeline.worldwide import world_embedder

            embedder = world_embedder(model, pretrained=pretrained)
        return cls._assemble(
            None, embedder, None, retrieval, places, gallery, lmm, warmup=warmup, warn=warn
        )

    @classmethod
    def from_model(
        cls,
        path: str | os.PathLike[str],
        *,
        pretrained: bool = True,
        **settings: Any,
    ) -> Geolocator:
        """A geolocator where a trained model file answers alone, without a database: any
        head with a location output (GeoCLIP's gallery, PlaNet's or PIGEON's cells, PLONK's
        samples; :mod:`geolocus.models`). ``settings`` are :meth:`worldwide`'s."""
        from geolocus.models.embedder import create_embedder

        embedder = create_embedder(path, pretrained=pretrained)
        if not embedder.has_gps:
            raise InputError(
                f"{path}: this model has no location output, so it cannot answer alone; "
                "build a database with it ('geolocus index build --model') and give --db"
            )
        return cls.worldwide(str(path), embedder=embedder, **settings)

    @classmethod
    def _assemble(
        cls,
        db: Database | None,
        embedder: Embedder,
        refiner: Refiner | None,
        retrieval: RetrievalSettings,
        places: PlaceSettings,
        gallery: GallerySettings,
        lmm: LMMSettings | None,
        *,
        warmup: bool,
        warn: Callable[[str], None],
    ) -> Geolocator:
        """The factories' common end: the gazetteer loaded (its k-d tree built now, not
        per photo) when answers are named, the geolocator made and warmed up."""
        gazetteer = None
        if places.names:
            gazetteer = Gazetteer.load()
            gazetteer.reverse_geocode(0.0, 0.0)
        geo = cls(
            db,
            embedder,
            refiner,
            retrieval=retrieval,
            places=places,
            gallery=gallery,
            lmm=lmm,
            gazetteer=gazetteer,
            warn=warn,
        )
        if warmup:
            geo.warmup()
        return geo

    def warmup(self) -> None:
        """One blank photo through every stage, so that one-time costs (lazy imports,
        kernel selection, k-d trees) are paid when the geolocator is made, not per photo;
        the clocks are zeroed after it."""
        from PIL import Image

        size = self.embedder.encoder.image_size
        lmm, self.lmm = self.lmm, None
        try:
            self.predict([Image.new("RGB", (size, size), (128, 128, 128))])
        finally:
            self.lmm = lmm
            self.reset_timing()

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

    def _load(self, item: Any, i: int) -> _Loaded:
        """(pixels, image kept for the LMM, EXIF GPS, error) of one input."""
        from PIL import Image

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
        self,
        images: Any,
        progress: bool = False,
        on_result: Callable[[Prediction], None] | None = None,
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
        bs = self.retrieval.batch_size
        batches = [range(s, min(n, s + bs)) for s in range(0, n, bs)]

        def load_batch(rows: range) -> list[_Loaded]:
            return [self._load(items[i], i) for i in rows]

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="geolocating", unit="img")
        with ThreadPoolExecutor(max_workers=self.retrieval.loader_threads) as pool:
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
                    gps, heat = self._gallery_candidates(feats.embedding, tok)
                    queries = None
                    if self.lmm is not None and self.lmm.procedure.name == G3:
                        # optional beyond the Embedder protocol: a location head has it
                        queries = self.embedder.location_queries(  # type: ignore[attr-defined]
                            feats.embedding, tok
                        )
                    self._tick("embed", t)
                    kept = [r for r in loaded if r[0] is not None]
                    preds = self.locate(
                        vec,
                        [_name_of(items[i], i) for i in good],
                        gps=gps,
                        images=[r[1] for r in kept],
                        exif=[r[2] for r in kept],
                        heatmaps=heat,
                        location_queries=queries,
                    )
                    for i, p in zip(good, preds, strict=True):
                        out[i] = p
                done = [out[i] for i in rows]
                if on_result is not None:
                    for pred in done:
                        if pred is not None:  # every row of the batch is answered by now
                            on_result(pred)
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        self.timing["total"] += time.perf_counter() - t_start
        return [p for p in out if p is not None]

    __call__ = predict

    def _gallery_candidates(
        self, embedding: Any, tokens: Any
    ) -> tuple[tuple[np.ndarray, np.ndarray] | None, list[Heatmap] | None]:
        """The embedder's gallery candidates, and with ``gallery.heatmap`` each photo's
        probability of every gallery location (its top k are the candidates)."""
        if not self.embedder.has_gps or self.gallery.k < 1:
            return None, None
        dist = None
        # optional beyond the Embedder protocol: only a gallery model has it
        whole = getattr(self.embedder, "gps_distribution", None)
        if self.gallery.heatmap and whole is not None:
            dist = whole(embedding, tokens)
        if dist is None:
            return self.embedder.gps_candidates(embedding, tokens, self.gallery.k), None
        coords, probs = dist
        heat = [Heatmap(coords, p) for p in probs]
        return gallery_top_k(coords, probs, min(self.gallery.k, probs.shape[1])), heat

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
        heatmaps: Sequence[Heatmap] | None = None,
        location_queries: np.ndarray | None = None,
    ) -> list[Prediction]:
        """Stage 1 and 2 for embedded photos: ``vectors`` ``(N, dim)`` from the embedder,
        ``gps`` its gallery candidates ``(N, G, 2)`` and probabilities ``(N, G)`` (the
        whole answer without a database); ``location_queries`` ``(N, D)``: the photos in
        the location head's space (G3's verification)."""
        t = time.perf_counter()
        r = self.retrieval
        nb = None
        if self.database is not None and self.refiner is not None:
            nb = self.database.search(
                vectors, k=r.k, k_far=r.k_far, query_ids=list(ids), nprobe=r.nprobe
            )
            self._tick("search", t)
        return self.place(
            nb,
            ids,
            gps=gps,
            images=images,
            exif=exif,
            heatmaps=heatmaps,
            location_queries=location_queries,
        )

    def place(
        self,
        nb: Neighbours | None,
        ids: Sequence[str],
        gps: tuple[np.ndarray, np.ndarray] | None = None,
        images: Sequence[Any] | None = None,
        exif: Sequence[Any] | None = None,
        heatmaps: Sequence[Heatmap] | None = None,
        location_queries: np.ndarray | None = None,
    ) -> list[Prediction]:
        """Stage 2 for photos whose neighbours are retrieved already (``nb``; None: gallery
        candidates alone): what :meth:`locate` does after the search, so that a benchmark
        retrieving by leave-one-out places photos exactly as they are placed for users."""
        t = time.perf_counter()
        no_ranking = (np.zeros((0, 2)), np.zeros(0))
        ranked = [no_ranking] * len(ids)
        if nb is not None and self.refiner is not None:
            ranking = self.refiner.rank(nb)
            ranked = [(ranking.candidates[i], ranking.scores[i]) for i in range(len(nb))]
        top_k = self.places.top_k
        n_places = max(top_k, LMM_CANDIDATES if self.lmm is not None else 0)
        places_per = []
        for i in range(len(ids)):
            g = None if gps is None else (gps[0][i], gps[1][i])
            coords, w, src = pool_candidates(ranked[i][0], ranked[i][1], g, self.gallery.weight)
            places_per.append(
                distinct_places(
                    coords,
                    w,
                    src,
                    top_k=n_places,
                    merge_km=self.places.merge_km,
                    support_km=self.places.support_km,
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
                    neighbours=None if nb is None else nb.subset(slice(i, i + 1)),
                    heatmap=None if heatmaps is None else heatmaps[i],
                )
            )
        if self.lmm is not None:
            for i, p in enumerate(preds):
                if self.lmm is None:
                    break
                image = None if images is None else images[i]
                if self.lmm.procedure.name == CHOOSE:
                    self._ask_lmm(p, image)
                else:
                    self._run_procedure(
                        p,
                        image,
                        None if gps is None else gps[0][i],
                        None if location_queries is None else location_queries[i],
                    )
            t = self._tick("lmm", t)
        for p in preds:
            del p.guesses[top_k:]
        return preds

    def _names(self, points: list[tuple[float, float]]) -> list[Any]:
        if self.gazetteer is None or not points:
            return [None] * len(points)
        lat = np.array([p[0] for p in points])
        lon = np.array([p[1] for p in points])
        return list(self.gazetteer.reverse_geocode(lat, lon))

    def _ask_lmm(self, pred: Prediction, image: Any) -> None:
        """Let the multimodal model choose; its answer becomes guess 1."""

        if image is None:
            return
        near = [Candidate(g.lat, g.lon, g.label, g.confidence) for g in pred.guesses]
        far_pts = pred.neighbours.far[0][:LMM_FAR] if pred.neighbours is not None else []
        far_names = self._names([(float(a), float(b)) for a, b in far_pts])
        far = [
            Candidate(float(a), float(b), "" if pl is None else pl.label)
            for (a, b), pl in zip(far_pts, far_names, strict=True)
        ]
        if self.lmm is None:
            return
        t = time.perf_counter()
        try:
            ans = self.lmm.client.ask(image, near, far)
        except ServiceError as e:
            self._lmm_failed(pred, e)
            return
        finally:
            self.timing["lmm"] += time.perf_counter() - t
        self._promote(pred, ans.lat, ans.lon)
        if ans.reason:
            pred.notes.append(f"lmm: {ans.reason}")

    def _lmm_failed(self, pred: Prediction, e: ServiceError) -> None:
        """Raise, or with ``fallback`` warn once and stop asking: the geometric answer stays."""
        if self.lmm is None or not self.lmm.fallback:
            raise e
        self.warn(f"{e}; using the geometric answer for this and the remaining photos")
        pred.notes.append(f"lmm failed: {e}")
        self.lmm = None

    def _promote(self, pred: Prediction, lat: float, lon: float) -> None:
        """The model's answer becomes guess 1: a place already there moves up (its source
        gains ``+lmm``), else a new guess without a confidence is put first."""
        for j, g in enumerate(pred.guesses):
            if haversine_km(g.lat, g.lon, lat, lon) < self.places.merge_km:
                g.source = "lmm" if g.source == "lmm" else f"{g.source}+lmm"
                pred.guesses.insert(0, pred.guesses.pop(j))
                return
        place = self._names([(lat, lon)])[0]
        pred.guesses.insert(0, Guess(lat, lon, None, place, None, "lmm"))

    def _run_procedure(
        self, pred: Prediction, image: Any, gallery: np.ndarray | None, query: np.ndarray | None
    ) -> None:
        """G3 or DualGeo for one photo (:mod:`geolocus.refine.procedures`): the prompts list
        the retrieved near and far neighbours (without a database, the gallery's places
        in order of probability); the answer becomes guess 1 and a note says what was
        generated, skipped and chosen."""
        if image is None or self.lmm is None:
            return
        proc = self.lmm.procedure
        nb = pred.neighbours
        none = np.zeros((0, 2))
        near_pts = nb.near[0] if nb is not None else (none if gallery is None else gallery)
        far_pts = nb.far[0] if nb is not None else none
        near = [Candidate(float(a), float(b)) for a, b in near_pts]
        far = [Candidate(float(a), float(b)) for a, b in far_pts]
        client: Generator = self.lmm.client  # type: ignore[assignment]  # checked: generates
        t = time.perf_counter()
        try:
            if proc.name == G3:
                embed = getattr(self.embedder, "location_embeddings", None)
                if query is None or embed is None:
                    raise InputError(f"{self.embedder.name} has no location head to verify with")
                pool = [] if nb is None else [(nb.near[0], RETRIEVED)]
                if gallery is not None:
                    pool.append((gallery, GALLERY))
                g3 = run_g3(client, image, near, far, pool, embed, query, proc)
                lat, lon, note = g3.verified.lat, g3.verified.lon, g3.note()
            else:
                dg = run_dualgeo(client, image, near, far, proc)
                lat, lon, note = dg.lat, dg.lon, dg.note()
        except ServiceError as e:
            self._lmm_failed(pred, e)
            return
        finally:
            self.timing["lmm"] += time.perf_counter() - t
        self._promote(pred, lat, lon)
        pred.notes.append(note)


def expand_inputs(
    args: Iterable[str | os.PathLike[str]],
    on_skip: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Photo arguments as a list of paths: files as given, folders expanded to their photos,
    ``.txt``/``.lst`` files read as one path per line (relative to the list's folder).

    What a folder holds that cannot be used (link loops, unreadable sub-folders) goes to
    ``on_skip(path, reason)`` (see :func:`~geolocus.data.images.list_images`)."""

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
