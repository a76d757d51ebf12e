"""Compressed search for large databases: IVF lists of fast-scan PQ codes, then exact
re-ranking of the best few hundred candidates from the float16 vectors.

An exact ``Flat`` index keeps every vector in memory as float32 (20 GB for 10 M
512-d photos) and scans all of them per query. Above :data:`AUTO_THRESHOLD`
vectors the database instead keeps 32-byte PQ codes in IVF lists (the index
proper, small enough to hold in memory) and the vectors themselves as a
memory-mapped float16 file that is only read for the candidates being re-ranked.
The search settings (lists probed, candidates re-ranked) are chosen at build time
as the cheapest that reach recall@20 ≥ :data:`TARGET_RECALL` against exact search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.errors import InputError
from geolocus.files import atomic_path
from geolocus.index.columns import read_rows, release
from geolocus.index.lists import Lists, scan_search

#: Above this many vectors ``auto`` chooses a compressed index; at or below, exact ``Flat``.
AUTO_THRESHOLD = 200_000
#: The most IVF lists ``auto`` chooses (reached at about 1 M vectors).
MAX_NLIST = 4096
#: Recall@20 against exact search the search settings are chosen to reach. 0.99, not 0.95:
#: at 1 M photos, settings tuned for 0.95 changed stage 2's top answer for 3 % of queries
#: (DualGeo's clusters flip when one of 20 neighbours changes), for 0.99 for 0.5 %, at
#: 7.3 ms a photo instead of 5.4 (docs/scale.md).
TARGET_RECALL = 0.99
RECALL_K = 20
#: Lists probed and candidates re-ranked that tuning tries, cheapest first.
NPROBES = (4, 8, 16, 32, 64, 128, 256)
RERANKS = (50, 100, 200, 400, 800, 1600, 3200)
#: The ``rerank`` of a setting that scans the probed lists exactly (list-ordered vectors,
#: :mod:`geolocus.index.lists`) instead of re-ranking PQ candidates.
SCAN = 0
#: Queries a tuning search is timed with at once: a batch of ``predict`` (16 photos), not
#: all 1,000 held-out ones, whose lists overlap so much that a list scanned once serves
#: tens of queries (at 1 M photos that timed 32 far lists at 0.8 ms a query; searched 16
#: at a time they cost ~4 ms).
TUNE_BATCH = 16
#: Lists probed that tuning tries when scanning (each list is ~N/4096 rows read).
SCAN_NPROBES = (1, 2, 4, 8, 16, 32)
#: When no setting reaches the target recall (far neighbours), tuning keeps the cheapest
#: whose recall is within this of the best found, not the best at any cost.
RECALL_SLACK = 0.02
#: The far neighbours may cost this share of the near ones' time (and at least
#: :data:`FAR_MIN_BUDGET_MS` a query): their recall is out of reach at any setting (0.74
#: at 1 M photos, at 40x the near search's time), and stage 2's answer hardly depends on
#: them (at 10 M photos, 1, 2 or 4 far lists scanned gave the same top answers; 16 did
#: not change them either: docs/scale.md).
FAR_BUDGET = 0.5
FAR_MIN_BUDGET_MS = 1.0
#: k-means iterations of the coarse quantiser (FAISS's default, 25, costs 2.5x for little).
KMEANS_ITER = 10
#: Vectors read at a time when adding to the index or scanning exactly (bounded memory).
CHUNK = 65536
#: Candidate rows re-ranked at a time (x dim x 4 bytes: 8 MB at 512-d).
RERANK_ROWS = 4096


def _faiss() -> Any:
    import faiss

    return faiss


def auto_factory(n: int, dim: int) -> str:
    """The compressed factory for ``n`` vectors: about 4·√n lists, ``dim/8`` 4-bit PQ
    sub-quantisers (32 bytes a vector for 512-d) in FAISS's fast-scan layout.

    At most :data:`MAX_NLIST` lists: adding costs n × lists × dim on the CPU (finding
    each vector's list), which at 10 M vectors and 4·√n = 12,600 lists would be most of
    the build; fewer, longer lists cost little at search time, where tuning raises
    the lists probed and reading the re-ranked rows dominates anyway. (An HNSW graph
    over the centroids was no faster at 4,096 lists on this CPU: 5.7 s against 1.6 s
    to place 20 K vectors.)"""
    nlist = int(min(MAX_NLIST, max(16, round(4 * math.sqrt(max(n, 1)) / 16) * 16)))
    m = max(2, dim // 8)
    while dim % m or m % 2:
        m -= 1
    if m < 2:
        return f"IVF{nlist},Flat"
    return f"IVF{nlist},PQ{m}x4fs"


def is_compressed(factory: str) -> bool:
    """Whether a database with this factory keeps codes plus re-ranking vectors (format 2)."""
    return factory.startswith("IVF") and "PQ" in factory


def nlist_of(index: Any) -> int:
    return int(_faiss().extract_index_ivf(index).nlist)


def training_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """Which rows train the quantisers: a sorted random sample of ~40 per list
    (at least 20 K where there are, at most 256 K)."""
    want = int(min(n, max(40 * nlist, 20_000), 256_000))
    rows = np.random.default_rng(seed).choice(n, want, replace=False)
    return np.sort(rows)


def gather(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a (memory-mapped) array as float32, read in file order."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
    for r in chunks(len(rows)):
        out[order[r.start : r.stop]] = read_rows(vectors, rows[order[r.start : r.stop]])
    return out


def train(factory: str, dim: int, vectors: np.ndarray, seed: int = 0) -> Any:
    """A new index of ``factory``, its quantisers trained on a sample of ``vectors``."""
    faiss = _faiss()
    index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    nlist = nlist_of(index)
    if len(vectors) < nlist:
        raise InputError(
            f"FAISS index {factory!r} must be trained on at least {nlist} vectors, "
            f"got {len(vectors)}; use 'Flat' for small databases"
        )
    sample = gather(vectors, training_rows(len(vectors), nlist, seed))
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = KMEANS_ITER
    ivf.cp.seed = seed
    index.train(sample)
    return index


def chunks(n: int, start: int = 0, size: int = CHUNK) -> Iterator[range]:
    for s in range(start, n, size):
        yield range(s, min(n, s + size))


def add_rows(
    index: Any,
    vectors: np.ndarray,
    start: int = 0,
    ids: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> None:
    """Encode rows ``start:`` of ``vectors`` into ``index``, a chunk at a time
    (``ids``: with their row numbers as ids, for shards merged later; ``on_rows``:
    told how many rows each chunk encoded, for a progress bar)."""
    for r in chunks(len(vectors), start):
        x = np.ascontiguousarray(vectors[r.start : r.stop], dtype=np.float32)
        if ids:
            index.add_with_ids(x, np.arange(r.start, r.stop, dtype=np.int64))
        else:
            index.add(x)
        release(vectors)
        if on_rows is not None:
            on_rows(len(r))


def exact_topk(
    vectors: np.ndarray, q: np.ndarray, k: int, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products by brute force over (memory-mapped) ``vectors``."""
    n = len(vectors)
    k = min(k, n)
    chunk = max(1024, min(chunk, (1 << 24) // max(1, len(q))))  # score block ≤ 64 MB
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for r in chunks(n, 0, chunk):
        s = q @ np.asarray(vectors[r.start : r.stop], dtype=np.float32).T
        release(vectors)
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + r.start], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, axis=1)
        best_i = np.take_along_axis(cand_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def reranked_search(
    index: Any, vectors: np.ndarray, q: np.ndarray, k: int, nprobe: int, rerank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by exact inner product among the ``rerank`` best candidates of the
    compressed index (``nprobe`` lists visited). Rows it cannot fill are -1.

    Candidates are read a block of queries at a time, row by row (:func:`read_rows`),
    so re-ranking a thousand queries at depth 800 costs tens of MB, not gigabytes."""
    faiss = _faiss()
    depth = max(k, rerank)
    params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    q = np.ascontiguousarray(q, dtype=np.float32)
    _, cand = index.search(q, depth, params=params)
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    block = max(1, RERANK_ROWS // depth)
    for b in range(0, len(q), block):
        c = cand[b : b + block]
        ok = c >= 0
        uniq, inverse = np.unique(c[ok], return_inverse=True)
        rows_v = read_rows(vectors, uniq)  # sorted: read in file order
        pos = np.full(c.shape, -1, dtype=np.int64)
        pos[ok] = inverse
        for i in range(len(c)):
            m = ok[i]
            scores[b + i, m] = rows_v[pos[i, m]] @ q[b + i]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(cand, order, axis=1)
    top = np.take_along_axis(scores, order, axis=1)
    rows[~np.isfinite(top)] = -1
    return top, rows


@dataclass(frozen=True)
class Tuning:
    """Search settings chosen at build time, with what they achieved."""

    nprobe: int
    rerank: int
    recall_at_20: float
    ms_per_query: float
    queries: int
    target: float = TARGET_RECALL

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {
            f"{prefix}nprobe": self.nprobe,
            f"{prefix}rerank": self.rerank,
            f"{prefix}recall_at_20": round(self.recall_at_20, 4),
            f"{prefix}ms_per_query": round(self.ms_per_query, 3),
            "tuned_on": self.queries,
            "target_recall_at_20": self.target,
        }


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found among its returned top-k."""
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.sum(hits) / truth.size)


def tune(
    index: Any,
    vectors: np.ndarray,
    n_queries: int = 1000,
    target: float = TARGET_RECALL,
    seed: int = 1,
    nprobes: Iterable[int] = NPROBES,
    reranks: Iterable[int] = RERANKS,
    far: bool = False,
    lists: Lists | None = None,
    budget_ms: float | None = None,
) -> Tuning:
    """The cheapest setting reaching recall@20 ≥ ``target`` on held-out database
    vectors (each query's own row excluded from both answers), by measured time:
    (nprobe, rerank) re-ranking PQ candidates, and with ``lists`` also (nprobe,
    :data:`SCAN`) scanning the probed lists exactly. When none reaches it, the cheapest
    within :data:`RECALL_SLACK` of the best recall found: paying twice the time for the
    last hundredth of an unreachable target is a poor trade. ``far``: for the far
    neighbours (the negated queries), which lie in other lists than the near.
    ``budget_ms``: only settings at most this slow a query (when any is)."""
    n = len(vectors)
    k = min(RECALL_K, n - 1)
    n_queries = min(n_queries, max(100, n // 20), n)  # small databases: fewer, still held out
    rows = np.sort(np.random.default_rng(seed).choice(n, n_queries, replace=False))
    q = gather(vectors, rows)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    if far:
        q = -q
    _, ex = exact_topk(vectors, q, k + 1)
    truth = _drop_self(ex, rows, k)
    nlist = nlist_of(index)
    grid: list[tuple[int, tuple[int, ...]]] = [(rr, tuple(nprobes)) for rr in reranks]
    if lists is not None:
        grid.insert(0, (SCAN, SCAN_NPROBES))
    tried: list[Tuning] = []
    fastest = math.inf  # ms a query of the fastest setting reaching the target so far
    for rr, probes in grid:
        for npb in probes:
            if npb > nlist:
                continue
            t0 = time.perf_counter()
            parts = []
            for s in range(0, len(q), TUNE_BATCH):  # timed as photos are searched
                b = q[s : s + TUNE_BATCH]
                if rr == SCAN:
                    assert lists is not None
                    parts.append(scan_search(index, lists, b, k + 1, npb)[1])
                else:
                    parts.append(reranked_search(index, vectors, b, k + 1, npb, max(rr, k + 1))[1])
            found = np.concatenate(parts)
            ms = (time.perf_counter() - t0) * 1000 / len(q)
            tried.append(Tuning(npb, rr, recall(_drop_self(found, rows, k), truth), ms,
                                len(q), target))  # fmt: skip
            if tried[-1].recall_at_20 >= target:
                fastest = min(fastest, ms)
                break  # more lists only cost more at this depth
            if ms > fastest or (budget_ms is not None and ms > 2 * budget_ms):
                break  # slower than a setting that reaches the target, or over budget
    return choose(tried, target, budget_ms)


def choose(tried: list[Tuning], target: float, budget_ms: float | None = None) -> Tuning:
    """The fastest setting reaching ``target``; when none does, the fastest within
    :data:`RECALL_SLACK` of the best recall tried; only settings within ``budget_ms``
    when there are any."""
    if budget_ms is not None:
        affordable = [t for t in tried if t.ms_per_query <= budget_ms]
        tried = affordable or [min(tried, key=lambda t: t.ms_per_query)]
    good = [t for t in tried if t.recall_at_20 >= target]
    if not good:
        top = max(t.recall_at_20 for t in tried)
        good = [t for t in tried if t.recall_at_20 >= top - RECALL_SLACK]
    return min(good, key=lambda t: t.ms_per_query)


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(found), k), -1, dtype=np.int64)
    for i, (f, r) in enumerate(zip(found, rows, strict=True)):
        keep = f[(f != r) & (f >= 0)][:k]
        out[i, : len(keep)] = keep
    return out


def for_parts(trained: Any) -> Any:
    """The index parts are encoded with: ``trained`` itself, except that a fast-scan
    IVF-PQ becomes the plain IVF-PQ with the same quantisers, whose codes are the same.
    FAISS's merge of fast-scan indexes crashed (SIGSEGV, FAISS 1.15.1, merging the 4th
    of 10 parts of 1 M vectors); plain IVF-PQ lists merge safely and are packed into the
    fast-scan layout after (:func:`merge_shards`)."""
    faiss = _faiss()
    if not isinstance(trained, faiss.IndexIVFPQFastScan):
        return trained
    q = faiss.clone_index(trained.quantizer)
    plain = faiss.IndexIVFPQ(
        q, trained.d, trained.nlist, trained.pq.M, trained.pq.nbits, trained.metric_type
    )
    plain.pq = trained.pq
    plain.by_residual = trained.by_residual
    plain.is_trained = True
    return faiss.clone_index(plain)  # owns its own copy of the quantiser


def merge_shards(trained: Any, shards: Iterable[Any]) -> Any:
    """One index from shards encoded with the same trained quantisers (see
    :func:`write_shard`, row numbers as ids): FAISS's IVF merge, then, for a fast-scan
    ``trained``, its layout."""
    faiss = _faiss()
    base = for_parts(trained)
    out = faiss.clone_index(base)
    if out.ntotal:
        raise InputError("merge_shards: the trained index must be empty")
    for shard in shards:
        out.merge_from(shard, 0)
    if base is not trained:
        out = faiss.IndexIVFPQFastScan(out, int(trained.bbs))
    return out


def write_shard(
    trained: Any,
    vectors: np.ndarray,
    rows: range,
    path: str | Path,
    on_rows: Callable[[int], None] | None = None,
) -> Path:
    """Encode ``rows`` of ``vectors`` with the trained quantisers (:func:`for_parts`)
    into the shard file ``path`` (atomically); a shard already written is kept, so a
    job resumes where it stopped. Merge the shards with :func:`merge_shard_files`."""
    path = Path(path)
    if path.is_file():
        return path
    shard = _faiss().clone_index(for_parts(trained))
    x = vectors[rows.start : rows.stop]
    for r in chunks(len(x)):
        shard.add_with_ids(
            np.ascontiguousarray(x[r.start : r.stop], dtype=np.float32),
            np.arange(rows.start + r.start, rows.start + r.stop, dtype=np.int64),
        )
        release(vectors)
        if on_rows is not None:
            on_rows(len(r))
    with atomic_path(path) as tmp:
        _faiss().write_index(shard, str(tmp))
    return path


def merge_shard_files(trained: Any, paths: Iterable[str | Path]) -> Any:
    """The index of all shard files (see :func:`write_shard`), in row order."""
    return merge_shards(trained, (_faiss().read_index(str(p)) for p in paths))


#: Rows a part of a save's encoding holds: the unit that is resumed, and one task on Ray.
PART_ROWS = 1 << 20

#: Encodes the given row ranges of the vectors file into part files of a folder:
#: ``(trained index file, vectors .npy, ranges, folder, on_rows)``. The default runs
#: here (:func:`encode_parts_here`); the Ray executor spreads the ranges over its workers.
PartEncoder = Callable[[Path, Path, list[range], Path, Callable[[int], None]], None]


def part_path(folder: Path, rows: range) -> Path:
    return folder / f"part-{rows.start:012d}-{rows.stop:012d}.faiss"


def encode_parts_here(
    trained_file: Path,
    vectors_file: Path,
    ranges: list[range],
    folder: Path,
    on_rows: Callable[[int], None],
) -> None:
    """:data:`PartEncoder` in this process."""
    trained = _faiss().read_index(str(trained_file))
    vectors = np.load(vectors_file, mmap_mode="r")
    for r in ranges:
        write_shard(trained, vectors, r, part_path(folder, r), on_rows)


def encode_in_parts(
    trained: Any,
    vectors_file: Path,
    folder: Path,
    encoder: PartEncoder | None = None,
    on_rows: Callable[[int], None] | None = None,
    part_rows: int | None = None,
) -> Any:
    """Every row of ``vectors_file`` encoded with the ``trained`` quantisers, as part
    files in ``folder`` merged into one index (FAISS's IVF merge). Parts already in
    the folder are kept, so an interrupted save resumes where it stopped; the caller
    names the folder after the vectors and the training, so parts never mix."""
    folder.mkdir(parents=True, exist_ok=True)
    trained_file = folder / "trained.faiss"
    if not trained_file.is_file():
        with atomic_path(trained_file) as tmp:
            _faiss().write_index(trained, str(tmp))
    n = int(np.load(vectors_file, mmap_mode="r").shape[0])
    ranges = list(chunks(n, 0, part_rows or PART_ROWS))
    todo = [r for r in ranges if not part_path(folder, r).is_file()]
    tell = on_rows if on_rows is not None else (lambda k: None)
    tell(n - sum(len(r) for r in todo))
    if todo:
        (encoder or encode_parts_here)(trained_file, vectors_file, todo, folder, tell)
    return merge_shard_files(trained, [part_path(folder, r) for r in ranges])


def read_index(path: str, mmap: bool = True) -> Any:
    """An index file, its inverted lists memory-mapped where FAISS can."""
    faiss = _faiss()
    if mmap:
        try:
            return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            pass
    return faiss.read_index(path)
