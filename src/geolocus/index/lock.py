"""One writer per database: an exclusive OS file lock on ``DB/.lock``.

Two builds into the same folder once mixed their half-written features and
saved a database with all-zero vectors. Every writer (``index build``,
``index add``, :meth:`Database.save`) therefore holds :func:`database_lock`:
``fcntl.flock`` on ``DB/.lock``, which names the holder (pid, host, command,
since when) so that a second writer can say who is in the way. The kernel
releases the lock when its holder dies, however it dies, so a lock file left
by a crashed or killed process never blocks anyone: its text is just stale.
The file itself stays (deleting it would let a waiting writer lock a file no
longer in the folder). The lock is re-entrant within one process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from geolocus.errors import DatabaseBusyError, InputError

LOCK = ".lock"

_held: dict[str, int] = {}  # real path of a lock file -> nesting depth, in this process
_guard = threading.Lock()


def _command() -> str:
    """What this process is: ``geolocus index build ...`` for the CLI, else its argv."""
    argv = list(sys.argv) or ["python"]
    first = Path(argv[0])
    if first.name == "geolocus" or "geolocus" in first.parts[-3:-1]:
        return shlex.join(["geolocus", *argv[1:]])
    return shlex.join([Path(sys.executable).name, *argv])


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def holder(path: str | os.PathLike[str]) -> dict | None:
    """Who holds the lock of the database at ``path`` now (``pid``, ``host``, ``command``,
    ``since``), or None when nobody does. Reads only: creates nothing."""
    lock = Path(path) / LOCK
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def busy_message(path: Path, info: dict) -> str:
    """``database DIR is being written by process PID (COMMAND) since WHEN; ...``."""
    who = f"process {info.get('pid', '?')}"
    if info.get("host") and info["host"] != socket.gethostname():
        who += f" on {info['host']}"
    if info.get("command"):
        who += f" ({_short(str(info['command']))})"
    since = f" since {info['since']}" if info.get("since") else ""
    return f"database {path} is being written by {who}{since}; wait for it or pass --wait"


@contextlib.contextmanager
def database_lock(path: str | os.PathLike[str], wait: bool = False) -> Iterator[Path]:
    """Hold the database folder ``path`` (created if missing) for writing.

    Another process holding it raises :class:`DatabaseBusyError` at once, or,
    with ``wait``, blocks until it lets go. A folder that cannot be created or
    written is an :class:`InputError` here, before any long computation. A
    folder this call created is removed again if the work inside fails and
    leaves nothing in it but the lock file.
    """
    path = Path(path)
    key = os.path.realpath(path / LOCK)
    with _guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:  # this process holds it already (e.g. the CLI, then build_database, then save)
        try:
            yield path
        finally:
            with _guard:
                _held[key] -= 1
        return
    created = not path.exists()
    fd = _acquire(path, wait)
    with _guard:
        _held[key] = 1
    try:
        yield path
    except BaseException:
        if created and [f.name for f in path.iterdir()] == [LOCK]:
            with contextlib.suppress(OSError):  # unlinked while still locked: see _acquire
                (path / LOCK).unlink()
                path.rmdir()
        raise
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(path: Path, wait: bool) -> int:
    """A descriptor of ``path/.lock`` holding its exclusive flock, with our name written in it.

    Locks the file that is in the folder when the lock is granted: one removed
    meanwhile (by a holder that failed in a folder it created) is let go and
    the lock taken again.
    """
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a database folder")
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise InputError(
                f"cannot write the database folder {path}: {e.strerror or e}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = busy_message(path, _read(fd))
                if not wait:
                    raise DatabaseBusyError(busy) from None
                print(f"geolocus: {busy.split(';')[0]}; waiting for it", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                raise InputError(f"cannot lock the database folder {path}: {e.strerror}") from None
            try:
                same = os.stat(path / LOCK).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command(),
        "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):  # the text only informs; the flock is the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd
