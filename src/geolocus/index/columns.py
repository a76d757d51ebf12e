"""Column files of a compressed database, memory-mapped, and the spool that feeds them.

A compressed (format 2) database keeps, per generation, beside its FAISS index:
``exact-<gen>.npy`` (float16 vectors, ``(n, dim)``, read only for the candidates
being re-ranked), ``coords-<gen>.npy`` (float64 latitude and longitude) and
``ids-<gen>.npy`` (UTF-8 ids, fixed width). All three open with
``np.load(mmap_mode="r")``: opening costs no reading, and a search touches only
the rows it returns, so resident memory stays far below the size on disk.

Rows added before a save go to a :class:`Spool` on disk, a chunk at a time, so a
build of millions of photos never holds them all in memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:  # lists.py imports this module
    from geolocus.index.lists import Lists

#: Column files of one generation: kind -> file name pattern.
PATTERNS = {"exact": "exact-{gen}.npy", "coords": "coords-{gen}.npy", "ids": "ids-{gen}.npy"}


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as a fixed-width UTF-8 byte array (what ``ids-<gen>.npy`` holds)."""
    return np.char.encode(np.asarray(ids, dtype=str), "utf-8")


def decode_ids(raw: np.ndarray) -> np.ndarray:
    """Ids read back as an object array of ``str`` (what :class:`Neighbours` holds)."""
    if raw.size == 0:
        return np.zeros(raw.shape, dtype=object)
    return np.asarray(np.char.decode(np.asarray(raw), "utf-8"), dtype=object)


#: How far beyond the bytes it touched a page fault may map a file (2 MiB: one page table).
FAULT_REACH = 2 << 20


def release(a: np.ndarray, rows: list[tuple[int, int]] | None = None) -> None:
    """Drop the pages of a memory-mapped array (all, or those of the ``[start, stop)``
    row ranges in ``rows``) from this process's resident set; they stay in the page
    cache: a pass over a 10 GB file then costs a chunk, not 10 GB."""
    m = getattr(a, "_mmap", None)
    if not isinstance(m, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(OSError, ValueError):
        if rows is None:
            m.madvise(mmap.MADV_DONTNEED)
            return
        offset = int(getattr(a, "offset", 0))
        base = offset - offset % mmap.ALLOCATIONGRANULARITY  # where numpy's map starts
        width = a.strides[0]  # bytes a row (a .npy map is C-ordered)
        # each range widened by what a fault inside it may map around it (the kernel's
        # fault-around and large folios stay within one page table's 2 MiB), then the
        # overlapping ones merged: one madvise a stretch of the file
        spans: list[list[int]] = []
        for start, stop in sorted(rows):
            lo = max(0, offset - base + start * width - FAULT_REACH)
            hi = min(len(m), offset - base + stop * width + FAULT_REACH)
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo - lo % mmap.PAGESIZE, hi])
        for lo, hi in spans:
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def read_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of ``a`` as float32 (``rows`` sorted, so the file is read in order).

    From a memory-mapped ``.npy`` each row is read with ``pread`` rather than through
    the map: with the kernel's fault-around of large page-cache folios, touching 4,096
    random 1 KB rows of a 10 GB map mapped 1.4 GB into the process, and reading 12,800
    rows took 150-1,100 ms through the map against 38-90 ms with ``pread``."""
    rows = np.asarray(rows, dtype=np.int64)
    name = getattr(a, "filename", None)
    if not isinstance(a, np.memmap) or not name or a.ndim != 2 or not a.flags.c_contiguous:
        return np.asarray(a[rows], dtype=np.float32)
    width = a.shape[1] * a.itemsize
    buf = bytearray(len(rows) * width)
    view = memoryview(buf)
    base = int(a.offset)
    fd = os.open(name, os.O_RDONLY)
    try:
        for i, r in enumerate(rows.tolist()):
            got = os.preadv(fd, [view[i * width : (i + 1) * width]], base + r * width)
            if got != width:
                raise OSError(f"{name}: short read at row {r}")
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=a.dtype).reshape(len(rows), a.shape[1]).astype(np.float32)


class NpyWriter:
    """An ``.npy`` file of known shape written row chunks at a time, in order, through
    the file (not a writable map, whose dirty pages would all count as resident)."""

    def __init__(
        self, fh: BinaryIO, dtype: Any, shape: tuple[int, ...], hasher: Any = None
    ) -> None:
        """``hasher`` (a :mod:`hashlib` object), when given, sees every row's bytes."""
        self.fh, self.dtype, self.shape, self.rows = fh, np.dtype(dtype), shape, 0
        self.hasher = hasher
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape}  # fmt: skip
        np.lib.format.write_array_header_2_0(fh, header)

    def write(self, rows: np.ndarray) -> None:
        a = np.ascontiguousarray(rows, dtype=self.dtype)
        if a.shape[1:] != self.shape[1:] or self.rows + len(a) > self.shape[0]:
            raise ValueError(f"rows of shape {a.shape} do not fit {self.shape}")
        data = a.tobytes()
        self.fh.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self.rows += len(a)

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.rows} rows written of {self.shape[0]}")
        self.fh.flush()


@dataclass
class Columns:
    """The memory-mapped columns of one saved generation."""

    exact: np.ndarray  # (n, dim) float16
    coords: np.ndarray  # (n, 2) float64
    ids: np.ndarray  # (n,) |S<width>
    lists: Lists | None = None  # the list-ordered vectors, when the generation has them

    def __len__(self) -> int:
        return int(self.exact.shape[0])


@dataclass
class Part:
    """One chunk of spooled rows."""

    vectors: Path
    coords: Path
    ids: Path
    paths: Path
    sources: Path
    count: int


class Spool:
    """Rows added but not yet saved, on disk beside the database (``.spool-*``):
    removed after a save; left by a crash, it is removed by the next save."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".spool-", dir=root))
        self.parts: list[Part] = []

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    def append(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        coords: np.ndarray,
        paths: np.ndarray,
        sources: np.ndarray,
    ) -> None:
        i = len(self.parts)
        names = {k: self.dir / f"{i:06d}.{k}.npy" for k in ("v", "c", "i", "p", "s")}
        arrays: dict[str, np.ndarray] = {
            "v": np.asarray(vectors, dtype=np.float16),
            "c": np.asarray(coords, dtype=np.float64),
            "i": encode_ids(ids),
            "p": np.asarray(paths, dtype=str),
            "s": np.asarray(sources, dtype=str),
        }
        for k, a in arrays.items():
            with open(names[k], "wb") as fh:
                np.save(fh, a)
        self.parts.append(
            Part(names["v"], names["c"], names["i"], names["p"], names["s"], len(arrays["v"]))
        )

    def iter_parts(self) -> Iterator[tuple[Part, dict[str, np.ndarray]]]:
        for p in self.parts:
            yield (
                p,
                {
                    "vectors": np.load(p.vectors, mmap_mode="r"),
                    "coords": np.load(p.coords),
                    "ids": np.load(p.ids),
                    "paths": np.load(p.paths),
                    "sources": np.load(p.sources),
                },
            )

    def id_width(self) -> int:
        return max((np.load(p.ids, mmap_mode="r").dtype.itemsize for p in self.parts), default=1)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.parts = []


def clear_spools(root: Path, keep: Path | None = None) -> None:
    """Remove spools left by interrupted writers (the caller holds the database lock)."""
    for d in root.glob(".spool-*"):
        if keep is None or d != keep:
            shutil.rmtree(d, ignore_errors=True)
