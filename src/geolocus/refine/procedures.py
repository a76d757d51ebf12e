"""Stage 2 with a multimodal model as the seed papers' public code runs it: G3's
geo-diversification and geo-verification, and DualGeo's LMM step. Any OpenAI-compatible
vision model answers (:class:`~geolocus.refine.lmm.LMMClient`).

What was followed (read to learn the procedure, not copied):

- **G3** (Jia et al., NeurIPS 2024; github.com/Applied-Machine-Learning-Lab/G3). Its LMM
  scripts ask the model once with no references (zero-shot) and once for each number k
  of neighbours, listing the coordinates of the k most similar database photos and of the
  k most dissimilar ones ("reverse" neighbours: the search for the negated query); k = 5,
  10, 15 in its results files. Each prompt is sampled several times (``n`` samples in one
  request; temperature 1.2 in its API script, 0.7 with LLaVA) and coordinates are read
  from each answer with a decimal-number pattern. Its evaluation then pools, per photo, 5
  samples of each of the four prompts with the top retrieved neighbour and keeps the
  candidate whose location embedding (location encoder, projection, unit length) has
  the highest dot product with the photo's unit embedding in the location space: the
  argmax of the cosine similarity (**geo-verification**).
- **DualGeo** (ICME 2026; github.com/CJ310177/DualGeo). ``rerank_geo_cluster.py`` runs
  DBSCAN with the haversine metric (eps 50 km, min_samples 2) over the top 20 retrieved
  positions and re-ranks them by their distance to the centre of the most populous
  cluster; ``lmms.py`` then asks an OpenAI-compatible model with the re-ranked similar
  and the dissimilar coordinates, temperature 1.2, n = 4 samples (its ``--n`` allows
  1 to 4), and extracts the coordinates of every sample. How the samples become one
  answer is not in the public code: geolocus merges them by their spherical medoid
  (:func:`~geolocus.refine.lmm.medoid`), as its one-prompt chooser does. The re-ranking is
  the project's :class:`~geolocus.refine.rules.DualGeoRefiner` (cluster members by
  distance to the cluster's spherical mean, then the others in retrieval order; DualGeo's
  script sorts all candidates by distance to the mean of the members' degrees).

Numbers of neighbours, samples and temperature are settings (:class:`Procedure`); the
defaults are the papers'. The photo's embedding and the candidates' location embeddings
come from the caller (the pipeline's embedder), so this module needs no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError, ServiceError
from geolocus.refine.lmm import Candidate, Generation, medoid
from geolocus.refine.rules import DualGeoRefiner

#: The procedures: the one-prompt chooser (``LMMClient.ask``), G3's and DualGeo's.
CHOOSE, G3, DUALGEO = "choose", "g3", "dualgeo"
PROCEDURES = (CHOOSE, G3, DUALGEO)

#: Kinds of candidate G3's verification chooses among.
RETRIEVED, GALLERY, GENERATED = "retrieved", "gallery", "generated"


class Generator(Protocol):
    """What generates coordinates for a photo: :class:`~geolocus.refine.lmm.LMMClient`."""

    def generate(
        self,
        image: Any,
        near: Sequence[Candidate],
        far: Sequence[Candidate],
        samples: int,
        temperature: float,
    ) -> Generation:
        """``samples`` answers to one prompt listing ``near`` and ``far``; raises
        :class:`ServiceError` when the server fails."""
        ...


@dataclass(frozen=True)
class Procedure:
    """How the multimodal model is used: ``name`` (:data:`PROCEDURES`), the numbers of
    near (and far) neighbours listed in each prompt, samples per prompt, the sampling
    temperature, and DualGeo's DBSCAN radius and minimum cluster size."""

    name: str = CHOOSE
    prompts: tuple[int, ...] = ()
    samples: int = 1
    temperature: float = 0.7
    eps_km: float = 50.0
    min_samples: int = 2

    def __post_init__(self) -> None:
        if self.name not in PROCEDURES:
            raise InputError(
                f"unknown LMM procedure {self.name!r}; choose one of: {', '.join(PROCEDURES)}"
            )
        if self.name != CHOOSE and not self.prompts:
            raise InputError(f"the {self.name} procedure needs at least one prompt")
        if any(k < 0 for k in self.prompts):
            raise InputError("neighbours per prompt must be 0 or more")
        if self.samples < 1:
            raise InputError("samples per prompt must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be between 0 and 2, got {self.temperature}")
        if self.eps_km <= 0 or self.min_samples < 1:
            raise InputError("the DBSCAN radius must be positive and min_samples at least 1")

    @classmethod
    def named(
        cls,
        name: str,
        *,
        prompts: Sequence[int] | None = None,
        samples: int | None = None,
        temperature: float | None = None,
    ) -> Procedure:
        """The procedure ``name`` with the papers' defaults for what is not given: G3 asks
        with 0, 5, 10 and 15 neighbours, 5 samples each, at 1.2; DualGeo with 15
        re-ranked neighbours (G3's script default; DualGeo's leaves it to its caller),
        4 samples at 1.2."""
        defaults = {CHOOSE: ((), 1, 0.7), G3: ((0, 5, 10, 15), 5, 1.2), DUALGEO: ((15,), 4, 1.2)}
        if name not in defaults:
            cls(name)  # the one-line error listing the choices
        p, s, t = defaults[name]
        return cls(
            name,
            tuple(p if prompts is None else prompts),
            s if samples is None else samples,
            t if temperature is None else temperature,
        )

    def describe(self) -> str:
        """One line for notes: what was run."""
        if self.name == CHOOSE:
            return CHOOSE
        ks = ",".join(str(k) for k in self.prompts)
        return f"{self.name} (neighbours {ks}; {self.samples} samples at {self.temperature:g})"


def parse_prompts(text: str) -> tuple[int, ...]:
    """``"0,5,10,15"`` as neighbours per prompt (a one-line error for anything else)."""
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(
            f"--lmm-prompts takes numbers of neighbours separated by commas, got {text!r}"
        ) from None
    if not out or any(k < 0 for k in out):
        raise InputError(f"--lmm-prompts needs numbers of neighbours of 0 or more, got {text!r}")
    return out


# -- G3: geo-diversification -------------------------------------------------------------------


@dataclass
class Diversified:
    """The coordinates generated for one photo: ``coords`` ``(M, 2)``, the neighbours listed
    in the prompt that generated each (``prompt``), answers received and malformed ones."""

    coords: np.ndarray
    prompt: np.ndarray
    answers: int = 0
    malformed: int = 0


def diversify(
    generator: Generator,
    image: Any,
    near: Sequence[Candidate],
    far: Sequence[Candidate],
    procedure: Procedure,
) -> Diversified:
    """G3's geo-diversification: one prompt per number ``k`` in ``procedure.prompts``
    listing the first ``k`` near and ``k`` far neighbours (``k = 0``: the photo alone),
    ``procedure.samples`` samples each; every valid coordinate is a candidate, malformed
    answers are counted. A server failure raises :class:`ServiceError`."""
    coords: list[tuple[float, float]] = []
    source: list[int] = []
    answers = malformed = 0
    for k in procedure.prompts:
        got = generator.generate(
            image, list(near[:k]), list(far[:k]), procedure.samples, procedure.temperature
        )
        coords += got.coords
        source += [k] * len(got.coords)
        answers += got.answers
        malformed += got.malformed
    return Diversified(
        np.asarray(coords, dtype=float).reshape(-1, 2), np.asarray(source, int), answers, malformed
    )


# -- G3: geo-verification ----------------------------------------------------------------------


@dataclass
class Verified:
    """The candidate G3's verification kept: its position, index among the candidates,
    kind (:data:`RETRIEVED`, :data:`GALLERY` or :data:`GENERATED`) and cosine similarity,
    with every candidate's similarity."""

    lat: float
    lon: float
    index: int
    kind: str
    similarity: float
    similarities: np.ndarray = field(repr=False)


def verify(coords: np.ndarray, kinds: Sequence[str], similarities: np.ndarray) -> Verified:
    """The candidate of highest similarity to the photo (the first of equals: candidates
    come retrieved, gallery, generated, so a tie keeps the database's answer)."""
    c = np.asarray(coords, dtype=float).reshape(-1, 2)
    s = np.asarray(similarities, dtype=float).reshape(-1)
    if len(c) == 0 or len(c) != len(s) or len(kinds) != len(c):
        raise ValueError(f"{len(c)} candidates, {len(kinds)} kinds, {len(s)} similarities")
    i = int(np.argmax(s))
    return Verified(float(c[i, 0]), float(c[i, 1]), i, kinds[i], float(s[i]), s)


def cosine_to(query: np.ndarray, location_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of one photo's location-space vector to each candidate's location
    embedding (both normalised here, so any scale goes in)."""
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    e = np.asarray(location_embeddings, dtype=np.float64)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.asarray(e @ q)


@dataclass
class G3Answer:
    """G3's answer for one photo: the verified candidate and what was generated."""

    verified: Verified
    generated: Diversified

    def note(self) -> str:
        """One line on what happened, for the answer's notes."""
        g, v = self.generated, self.verified
        return (
            f"g3: {len(g.coords)} coordinates generated from {g.answers} answers "
            f"({g.malformed} malformed, skipped); verified a {v.kind} candidate, "
            f"similarity {v.similarity:.3f}"
        )


def run_g3(
    generator: Generator,
    image: Any,
    near: Sequence[Candidate],
    far: Sequence[Candidate],
    pool: Sequence[tuple[np.ndarray, str]],
    embed_locations: Callable[[np.ndarray], np.ndarray],
    query: np.ndarray,
    procedure: Procedure,
) -> G3Answer:
    """G3 for one photo: diversify, then verify among ``pool`` (``(coords (n, 2), kind)``
    groups: retrieved neighbours, gallery places) and the generated coordinates, under the
    location head (``embed_locations``: positions to location embeddings; ``query``: the
    photo's vector in that space)."""
    gen = diversify(generator, image, near, far, procedure)
    groups = [*pool, (gen.coords, GENERATED)]
    coords = np.concatenate([np.asarray(c, float).reshape(-1, 2) for c, _ in groups])
    kinds = [kind for c, kind in groups for _ in range(len(np.asarray(c).reshape(-1, 2)))]
    if len(coords) == 0:
        raise ServiceError("G3 had no candidate to verify: nothing retrieved or generated")
    sims = cosine_to(query, embed_locations(coords))
    return G3Answer(verify(coords, kinds, sims), gen)


# -- DualGeo's LMM step ------------------------------------------------------------------------


def cluster_order(near: np.ndarray, eps_km: float = 50.0, min_samples: int = 2) -> np.ndarray:
    """DualGeo's re-ranking of one photo's near neighbours ``(K, 2)``: the order (indices)
    that puts the DBSCAN cluster first (:class:`~geolocus.refine.rules.DualGeoRefiner`)."""
    pts = np.asarray(near, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, dtype=int)
    nb = Neighbours(ids=np.array(["q"]), near=pts[None], far=np.zeros((1, 0, 2)))
    scores = DualGeoRefiner(eps_km, min_samples).scores(nb)[0]
    return np.argsort(-scores, kind="stable")


@dataclass
class DualGeoAnswer:
    """DualGeo's answer for one photo: the merged position, every valid sample, answers
    received and malformed ones."""

    lat: float
    lon: float
    samples: np.ndarray
    answers: int
    malformed: int

    def note(self) -> str:
        return (
            f"dualgeo: merged {len(self.samples)} sampled coordinates of {self.answers} "
            f"answers ({self.malformed} malformed, skipped) by their medoid"
        )


def run_dualgeo(
    generator: Generator,
    image: Any,
    near: Sequence[Candidate],
    far: Sequence[Candidate],
    procedure: Procedure,
) -> DualGeoAnswer:
    """DualGeo for one photo: re-rank ``near`` by the DBSCAN cluster, ask with the first
    ``k`` re-ranked and ``k`` far neighbours for each ``k`` in ``procedure.prompts``
    (``procedure.samples`` samples each), merge every valid sample by the medoid. No valid
    sample at all raises :class:`ServiceError` (as a failed server does)."""
    pts = np.array([(c.lat, c.lon) for c in near], dtype=float).reshape(-1, 2)
    ranked = [near[i] for i in cluster_order(pts, procedure.eps_km, procedure.min_samples)]
    gen = diversify(generator, image, ranked, far, procedure)
    if len(gen.coords) == 0:
        raise ServiceError(f"none of the model's {gen.answers} answers held valid coordinates")
    best = medoid(gen.coords)
    lat, lon = gen.coords[best]
    return DualGeoAnswer(float(lat), float(lon), gen.coords, gen.answers, gen.malformed)
