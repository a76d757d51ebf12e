"""The vectors of a compressed database in IVF list order, for exact scans of the lists
a query probes.

Re-ranking the PQ index's candidates reads each candidate row on its own (a ``pread``
of 1 KB, ~6 µs at 10 M rows): at the depth 4-bit codes need for recall@20 ≥ 0.95 at
10 M photos (1,600 rows), that alone is ~10 ms a query. Kept in list order, the rows
of the few lists a query probes lie in a few contiguous ranges, scored in place in the
memory map by FAISS's float16 scanner (AVX-512): all ~10,000 rows of 4 lists cost
~2 ms, and the answer is the exact top-k of those lists, not of a PQ shortlist.
Three files a generation: ``lists-<gen>.npy`` (float16 vectors, list order),
``listrows-<gen>.npy`` (the database row of each) and ``listoff-<gen>.npy`` (where
each list starts; ``nlist + 1`` offsets).
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
#: Bytes of scored lists a scan leaves mapped before releasing them (a madvise a list
#: cost more than scanning a short list; releasing only at the end of a call let a
#: 1,000-query tuning scan map most of a 10 GB file).
RELEASE_BYTES = 64 << 20
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

    Each list is scored where it lies in the memory map: a FAISS float16 scanner
    (float32 sums of the float16 rows, as re-ranking does) is pointed at the list's
    bytes instead of owning a copy, once for all the queries that probe it. Copying a
    list first (one ``pread`` a list) moved every byte twice: 4.6 ms a photo at 10 M
    rows against 2.1 ms in place (the same answers; docs/scale.md, run 6). Scored lists'
    pages are dropped from the process's resident set every :data:`RELEASE_BYTES` and at
    the end (they stay in the page cache), so neither a long run of searches nor one
    search of many queries maps the whole file."""
    faiss = _faiss()
    q = np.ascontiguousarray(q, dtype=np.float32)
    nq, dim = q.shape
    ivf = faiss.extract_index_ivf(index)
    npb = int(min(nprobe, ivf.nlist))
    flat = np.asarray(ivf.quantizer.search(q, npb)[1]).ravel()
    order = np.argsort(flat, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(flat[order])) + 1)
    width = dim * lists.vectors.dtype.itemsize
    raw = np.asarray(lists.vectors).reshape(-1).view(np.uint8)
    off = np.asarray(lists.offsets)
    scanner = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    codes = scanner.codes
    at: list[np.ndarray] = []  # entries of ``flat`` (query * npb + slot) scored
    found_s: list[np.ndarray] = []
    found_p: list[np.ndarray] = []  # positions in the list-ordered file, -1 for none
    pending: list[tuple[int, int]] = []  # scored lists whose pages are still mapped
    held = 0
    try:
        for g in groups:
            lst = int(flat[g[0]])
            s, e = (int(off[lst]), int(off[lst + 1])) if lst >= 0 else (0, 0)
            if e == s:
                continue
            codes.is_owned = False
            codes.view_data = codes.c_ptr = faiss.swig_ptr(raw[s * width : e * width])
            codes.view_size = codes.c_size = (e - s) * width
            scanner.ntotal = e - s
            d, j = scanner.search(q[g // npb], k)  # k beyond the list: -1 rows
            pending.append((s, e))
            held += (e - s) * width
            if held >= RELEASE_BYTES:  # a thousand queries must not map the whole file
                release(lists.vectors, pending)
                pending, held = [], 0
            at.append(g)
            found_s.append(d)
            found_p.append(np.where(j >= 0, j + s, -1))
    finally:
        codes.view_size = codes.c_size = 0
        scanner.ntotal = 0
        release(lists.vectors, pending)
    cand_s = np.full((nq * npb, k), -np.inf, dtype=np.float32)
    cand_p = np.full((nq * npb, k), -1, dtype=np.int64)
    if at:
        where = np.concatenate(at)
        cand_s[where] = np.concatenate(found_s)
        cand_p[where] = np.concatenate(found_p)
    cand_s[cand_p < 0] = -np.inf
    cand_s, cand_p = cand_s.reshape(nq, npb * k), cand_p.reshape(nq, npb * k)
    top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    pos = np.take_along_axis(cand_p, top, axis=1)
    rows = np.where(pos >= 0, np.asarray(lists.rows)[np.maximum(pos, 0)], -1)
    return np.take_along_axis(cand_s, top, axis=1), rows
