"""Where geolocus keeps files: outputs written atomically, and the user cache folder."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from geolocus.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions for new files: what ``open()`` would give (mkstemp's 0600 would hide outputs).
_FILE_MODE = 0o666 & ~_umask()


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Refuse, before any long work starts, an output file that could not be written: a
    folder, a path under a file, or a place where no file can be created (read-only,
    /proc, no permission). Creates nothing: missing parent folders of ``path`` (and only
    those) are created when the file is written."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file path")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor is where folders get made
    if not folder.is_dir():
        raise InputError(f"{what} {p}: {folder} is not a folder")
    try:  # the only reliable test (root ignores modes, read-only mounts ignore os.access)
        fd, probe = tempfile.mkstemp(prefix=".geolocus-probe.", dir=folder)
    except OSError as e:
        raise InputError(f"cannot write {what} {p}: {e.strerror or e} (in {folder})") from None
    os.close(fd)
    os.unlink(probe)
    return p


def _temp_beside(target: Path) -> tuple[int, str]:
    """A new temporary file in ``target``'s folder (made with its missing parents), as
    (fd, path). Failures stay OSErrors (callers of caches suppress them) but name
    ``target``, not the temporary file, so that the CLI's one line makes sense."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file path", str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(target)) from None
    os.fchmod(fd, _FILE_MODE)
    return fd, tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    The rename is atomic on POSIX, so readers see either the old file or the
    complete new one, never a partial write.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary path beside ``path`` for writers that need a filename
    (numpy, pyarrow, safetensors); it replaces ``path`` only on success."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Path]:
        target = Path(path)
        fd, tmp = _temp_beside(target)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    return _cm()


#: Environment variable naming the user cache folder (parsed gazetteers, encoded galleries).
CACHE_ENV = "GEOLOCUS_CACHE"


def cache_dir(*parts: str) -> Path:
    """The user cache folder (``$GEOLOCUS_CACHE``, else ``$XDG_CACHE_HOME/geolocus``, else
    ``~/.cache/geolocus``), or a sub-folder of it. Nothing here is needed for correctness:
    every cached file can be rebuilt, so the folder may be deleted at any time."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "geolocus"
    return root.joinpath(*parts)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_arrays(
    path: str | os.PathLike[str], build: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Named numpy arrays from the ``.npz`` cache at ``path``, else ``build()`` and cache
    them there (atomically; an unreadable cache is rebuilt, an unwritable one only costs
    speed)."""
    import numpy as np

    path = Path(path)
    if path.is_file():
        with (
            contextlib.suppress(OSError, ValueError, KeyError),
            np.load(path, allow_pickle=False) as z,
        ):
            return {k: z[k] for k in z.files}
    arrays = build()
    with contextlib.suppress(OSError), atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return arrays
