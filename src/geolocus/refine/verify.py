"""Spatial verification: do two photos show the same physical scene?

The classic re-ranking of visual place recognition: local features (SIFT or ORB,
OpenCV's) are matched between the query and each of its most similar candidates
(Lowe's ratio test), and a homography is fitted to the matches by RANSAC. The
number of matches consistent with it (inliers) says "the same facade, the same
landmark" far more sharply than a global similarity, which also rewards the same
weather, light or kind of scene. The counts become candidate features of the
``collection`` refiner (:mod:`geolocus.refine.collection`).

OpenCV is optional (``pip install 'geolocus[verify]'``, the ``opencv-python-headless``
wheel); it is imported only when a :class:`Verifier` first runs. Keypoints are
computed once per photo and kept in memory, and on disk under ``cache`` if given
(keyed by the photo's path, size and modification time), so a rerun is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.errors import ImageError, InputError

#: Longest side (px) photos are reduced to before detection.
MAX_SIDE = 512
#: Lowe's ratio test threshold.
RATIO = 0.8
#: RANSAC reprojection threshold (px at :data:`MAX_SIDE`).
RANSAC_PX = 8.0
#: Matches needed before a homography is fitted at all.
MIN_MATCHES = 8

Keypoints = tuple[np.ndarray, np.ndarray]  # (n, 2) float32 positions, (n, d) descriptors


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise InputError(
            "spatial verification needs OpenCV: pip install 'geolocus[verify]' "
            "(opencv-python-headless)"
        ) from None
    return cv2


class Verifier:
    """Inlier counts between each query and its ``top`` most similar candidates.

    ``resolve`` maps a photo id (``Neighbours.ids`` / ``near_ids``) to its file, or None
    where the file is not known (that pair is left unverified: NaN). ``kind``: ``sift``
    (default: more repeatable) or ``orb`` (faster).
    """

    def __init__(
        self,
        resolve: Callable[[str], str | None],
        top: int = 10,
        kind: str = "sift",
        features: int = 1000,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        if kind not in ("sift", "orb"):
            raise InputError(f"unknown local features {kind!r}: sift or orb")
        self.resolve, self.top, self.kind, self.features = resolve, top, kind, features
        self.cache = None if cache is None else Path(cache) / kind
        self._mem: dict[str, Keypoints | None] = {}
        self._pairs: dict[tuple[str, str], float] = {}
        self._load_pairs()
        self._detector: Any = None
        self._matcher: Any = None

    def _pairs_file(self) -> Path | None:
        return None if self.cache is None else self.cache / f"pairs-{self.features}.json"

    def _load_pairs(self) -> None:
        f = self._pairs_file()
        if f is None or not f.is_file():
            return
        try:
            saved = json.loads(f.read_text())
            pairs = {}
            for k, v in saved.items():
                a, b = k.split("\t", 1)
                pairs[(a, b)] = float(v)
            self._pairs = pairs
        except (OSError, ValueError, AttributeError):
            self._pairs = {}  # a damaged cache is recomputed

    def save_pairs(self) -> None:
        """Keep the inlier counts computed so far (under ``cache``) for the next run (pairs
        are keyed by both photos' path, size and modification time)."""
        f = self._pairs_file()
        if f is None or not self._pairs:
            return
        from geolocus.files import write_text_atomic

        f.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(f, json.dumps({f"{a}\t{b}": v for (a, b), v in self._pairs.items()}))

    def _setup(self) -> None:
        if self._detector is not None:
            return
        cv2 = _cv2()
        cv2.setNumThreads(1)
        if self.kind == "sift":
            self._detector = cv2.SIFT_create(nfeatures=self.features)
            self._matcher = cv2.BFMatcher(cv2.NORM_L2)
        else:
            self._detector = cv2.ORB_create(nfeatures=self.features)
            self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def _cache_file(self, path: str) -> Path | None:
        if self.cache is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.features}|{MAX_SIDE}"
        return self.cache / (hashlib.sha1(key.encode()).hexdigest() + ".npz")

    def _key(self, path: str) -> str:
        f = self._cache_file(path)
        return path if f is None else f.stem

    def keypoints(self, path: str) -> Keypoints | None:
        """Positions and descriptors of one photo's local features (None: unreadable)."""
        if path in self._mem:
            return self._mem[path]
        f = self._cache_file(path)
        kp: Keypoints | None = None
        if f is not None and f.is_file():
            try:
                with np.load(f) as z:
                    kp = (z["xy"], z["desc"])
            except (OSError, ValueError, KeyError):
                kp = None
        if kp is None:
            kp = self._detect(path)
            if kp is not None and f is not None:
                from geolocus.files import atomic_path

                f.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, xy=kp[0], desc=kp[1])
        self._mem[path] = kp
        return kp

    def _detect(self, path: str) -> Keypoints | None:
        from geolocus.data.images import load_image

        self._setup()
        try:
            im = load_image(path)
        except (ImageError, OSError):
            return None
        im = im.convert("L")
        scale = MAX_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        kps, desc = self._detector.detectAndCompute(np.asarray(im), None)
        if desc is None or len(kps) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, 1), np.uint8)
        return np.array([k.pt for k in kps], dtype=np.float32), desc

    def inliers(self, a: Keypoints | None, b: Keypoints | None) -> float:
        """Matches between two photos consistent with one homography (0: none)."""
        if a is None or b is None or len(a[0]) < 2 or len(b[0]) < 2:
            return 0.0
        cv2 = _cv2()
        self._setup()
        pairs = self._matcher.knnMatch(a[1], b[1], k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
        if len(good) < MIN_MATCHES:
            return 0.0
        pa = a[0][[m.queryIdx for m in good]]
        pb = b[0][[m.trainIdx for m in good]]
        _, mask = cv2.findHomography(pa, pb, cv2.RANSAC, RANSAC_PX, maxIters=500)
        return 0.0 if mask is None else float(mask.sum())

    def __call__(self, nb: Neighbours) -> np.ndarray:
        """``(N, K)`` inlier counts of each query's ``top`` first candidates (NaN: others)."""
        out = np.full(nb.near.shape[:2], np.nan)
        if nb.near_ids is None:
            return out
        for i, q in enumerate(nb.ids):
            qp = self.resolve(str(q))
            if qp is None:
                continue
            kq = self.keypoints(qp)
            for j in range(min(self.top, nb.k)):
                cid = str(nb.near_ids[i, j])
                cp = self.resolve(cid) if cid else None
                if cp is not None and np.isfinite(nb.near[i, j]).all():
                    pair = (self._key(qp), self._key(cp))
                    if pair not in self._pairs:
                        self._pairs[pair] = self.inliers(kq, self.keypoints(cp))
                    out[i, j] = self._pairs[pair]
        return out


__all__ = ["Verifier"]
