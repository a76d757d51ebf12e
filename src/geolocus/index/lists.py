"""The vectors of a compressed database in IVF list order, for exact scans of the lists
a query probes.

Re-ranking the PQ index's candidates reads each candidate row on its own (a ``pread``
of 1 KB, ~6 µs at 10 M rows): at the depth 4-bit codes need for recall@20 ≥ 0.95 at
10 M photos (1,600 rows), that alone is ~10 ms a query. Kept in list order, the rows
of the few lists a query probes lie in a few contiguous ranges: read in one ``pread``
a list and scored exactly by FAISS's float16 scanner (AVX-512), all ~10,000 rows of 4
lists cost ~3 ms, and the answer is the exact top-k of those lists, not of a PQ
shortlist. Three files a generation: ``lists-<gen>.npy`` (float16 vectors, list
order), ``listrows-<gen>.npy`` (the database row of each) and ``listoff-<gen>.npy``
(where each list starts; ``nlist + 1`` offsets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.index.columns import release

#: File name patterns of the list-ordered files of one generation.
LIST_PATTERNS = {
    "lists": "lists-{gen}.npy",
    "listrows": "listrows-{gen}.npy",
    "listoff": "listoff-{gen}.npy",
}
#: Rows read from the row-ordered file at a time while writing the list-ordered one.
CHUNK = 65536


def _faiss() -> Any:
    import faiss

    return faiss


@dataclass(frozen=True)
class Lists:
    """The list-ordered vectors (memory-mapped; read with ``pread``), the database row
    of each, and where each list starts."""

    vectors: np.memmap
    rows: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, vectors: Path, rows: Path, offsets: Path) -> Lists:
        mapped = np.load(vectors, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.memmap) or mapped.ndim != 2:
            raise ValueError(f"{vectors.name} is not a 2-d array")
        return cls(
            mapped,
            np.load(rows, mmap_mode="r", allow_pickle=False),
            np.asarray(np.load(offsets, allow_pickle=False), dtype=np.int64),
        )

    def agrees_with(self, index: Any, n: int, dim: int) -> str | None:
        """Why these files do not belong with ``index`` and ``n`` rows of ``dim``, or None."""
        nlist = int(_faiss().extract_index_ivf(index).nlist)
        if self.vectors.shape != (n, dim) or self.rows.shape != (n,):
            return f"shape {self.vectors.shape} and {self.rows.shape}, expected {(n, dim)}"
        if self.offsets.shape != (nlist + 1,) or self.offsets[0] != 0 or self.offsets[-1] != n:
            return f"{len(self.offsets)} list offsets ending at {self.offsets[-1]}, expected " \
                f"{nlist + 1} ending at {n}"  # fmt: skip
        return None


def list_order(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ids of ``index`` (database rows) in list order, and where each list starts."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    sizes = np.array([inv.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = np.empty(int(offsets[-1]), dtype=np.int64)
    for i in np.flatnonzero(sizes).tolist():
        ptr = inv.get_ids(i)
        try:
            rows[offsets[i] : offsets[i + 1]] = faiss.rev_swig_ptr(ptr, int(sizes[i]))
        finally:
            inv.release_ids(i, ptr)
    return rows, offsets


def write_lists(
    index: Any,
    vectors: np.ndarray,
    paths: tuple[Path, Path, Path],
    on_rows: Callable[[int], None] | None = None,
) -> None:
    """Write ``vectors`` (row order, memory-mapped) in the list order of ``index`` to
    ``paths`` (vectors, rows, offsets; the caller makes them atomic). The row file is
    read once, in order; each row is written to its place (``pwrite``), so memory stays
    at a chunk plus two row-number arrays (16 bytes a row)."""
    rows, offsets = list_order(index)
    n, dim = vectors.shape
    if len(rows) != n or (n and (rows.min() < 0 or rows.max() >= n)):
        raise ValueError(f"the index holds {len(rows)} ids that are not the rows 0..{n - 1}")
    dest = np.empty(n, dtype=np.int64)
    dest[rows] = np.arange(n, dtype=np.int64)
    for path, arr in ((paths[1], rows), (paths[2], offsets)):
        with open(path, "wb") as fh:  # a file, not a name: np.save would add ".npy"
            np.save(fh, arr)
    dtype = np.dtype(np.float16)
    width = dim * dtype.itemsize
    with open(paths[0], "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (n, dim)}  # fmt: skip
        np.lib.format.write_array_header_2_0(fh, header)
        base = fh.tell()
        fh.truncate(base + n * width)
    fd = os.open(paths[0], os.O_WRONLY)
    try:
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            block = np.ascontiguousarray(vectors[start:stop], dtype=dtype)
            view = block.data.cast("B")
            for i, d in enumerate(dest[start:stop].tolist()):
                os.pwrite(fd, view[i * width : (i + 1) * width], base + d * width)
            release(vectors)
            if on_rows is not None:
                on_rows(stop - start)
        os.fsync(fd)
    finally:
        os.close(fd)


def scan_search(
    index: Any, lists: Lists, q: np.ndarray, k: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products among the rows of the ``nprobe`` lists nearest
    each query (the index's coarse quantiser chooses them). Rows it cannot fill are -1.

    Each list is one ``pread`` straight into the codes of a FAISS float16 scanner,
    which scores them exactly (float32 sums of the float16 rows, as re-ranking does)."""
    faiss = _faiss()
    q = np.ascontiguousarray(q, dtype=np.float32)
    nq, dim = q.shape
    ivf = faiss.extract_index_ivf(index)
    _, probe = ivf.quantizer.search(q, int(min(nprobe, ivf.nlist)))
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    rows = np.full((nq, k), -1, dtype=np.int64)
    width = dim * lists.vectors.dtype.itemsize
    base = int(lists.vectors.offset)
    off = lists.offsets
    scanner = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    fd = os.open(str(lists.vectors.filename), os.O_RDONLY)
    try:
        for i in range(nq):
            ls = probe[i][probe[i] >= 0]
            starts, stops = off[ls], off[ls + 1]
            total = int(np.sum(stops - starts))
            if total == 0:
                continue
            scanner.codes.resize(total * width)
            buf = faiss.rev_swig_ptr(scanner.codes.data(), total * width)
            at = 0
            for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
                size = (e - s) * width
                if size and os.preadv(fd, [buf[at : at + size]], base + s * width) != size:
                    raise OSError(f"{lists.vectors.filename}: short read at row {s}")
                at += size
            scanner.ntotal = total
            kk = min(k, total)
            d, j = scanner.search(q[i : i + 1], kk)
            # position in the concatenated lists -> position in the list-ordered file
            ends = np.cumsum(stops - starts)
            which = np.searchsorted(ends, j[0], side="right")
            pos = starts[which] + j[0] - (ends[which] - (stops - starts)[which])
            scores[i, :kk] = d[0]
            rows[i, :kk] = lists.rows[pos]
    finally:
        os.close(fd)
        scanner.codes.resize(0)
        scanner.ntotal = 0
    return scores, rows
