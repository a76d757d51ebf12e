"""Who embeds the shards: this process, a local process pool, or a Ray cluster.

All three run :func:`geolocus.index.shards.embed_shard` on every shard given and
hand each finished :class:`ShardOutput` to ``on_done`` in this process, which
stages it; so whatever the executor, the same shards give the same database.
Workers build the embedder once, from a picklable spec (the model name or file
given to :func:`geolocus.models.embedder.create_embedder`, or any picklable
callable returning an embedder), and share the machine's cores: torch threads
per worker = cores / workers.

Ray is optional (``pip install 'geolocus[ray]'``) and imported only for
``--ray``: one actor per CPU slot (or per GPU with ``gpus``), each holding the
model, shards handed out one at a time as tasks; an actor that dies is
restarted by Ray and its shard run again (and resubmitted here, a bounded number of
times, if Ray gives up: a shard that kills every worker ends the build with one line).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from geolocus.data.sources import ShardSpec
from geolocus.errors import InputError
from geolocus.index.compressed import PartEncoder, encode_parts_here
from geolocus.index.shards import ShardOutput, embed_shard

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

#: A model name or file (for create_embedder), or a picklable callable making the embedder.
EmbedderSpec: TypeAlias = "str | Callable[[], Embedder]"
OnDone = Callable[[ShardSpec, ShardOutput], None]

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'geolocus[ray]'"


def make_embedder(spec: EmbedderSpec) -> Embedder:
    """The embedder a spec names (in a worker: loaded once, kept for every shard)."""
    if isinstance(spec, str):
        from geolocus.models.embedder import create_embedder

        return create_embedder(spec)
    return spec()


class Progress:
    """One bar: photos (or shards, when the photo count is not known up front) with an
    ETA, and the shards done in its postfix."""

    def __init__(self, shards: int, photos: int | None, done: int = 0, enabled: bool = True):
        from tqdm.auto import tqdm

        self.by_photos = photos is not None
        self.shards, self.done, self.photos = shards, done, 0
        self.bar = tqdm(
            total=photos if self.by_photos else shards,
            initial=0 if self.by_photos else done,
            desc="embedding",
            unit="photo" if self.by_photos else "shard",
            disable=not enabled,
            smoothing=0.1,
        )
        self._post()

    def _post(self) -> None:
        self.bar.set_postfix_str(f"shards {self.done}/{self.shards}, photos {self.photos}")

    def skip(self, photos: int) -> None:
        """Photos of shards staged by an earlier run."""
        if self.by_photos:
            self.bar.update(photos)

    def photos_seen(self, n: int) -> None:
        """Called from within a shard (the local executor) for a smoother bar."""
        self.photos += n
        if self.by_photos:
            self.bar.update(n)
        self._post()

    def shard_done(self, out: ShardOutput, counted: int = 0, size: int | None = None) -> None:
        """A shard finished; ``counted``: its photos already shown; ``size``: photos read."""
        self.done += 1
        n = size if size is not None else len(out) + len(out.problems)
        if counted < n:
            self.photos += n - counted
            if self.by_photos:
                self.bar.update(n - counted)
        if not self.by_photos:
            self.bar.update(1)
        self._post()

    def close(self) -> None:
        self.bar.close()


class Executor(Protocol):
    """Embeds every shard given; ``on_done`` receives each one's output as it finishes."""

    def run(self, shards: Sequence[ShardSpec], on_done: OnDone, progress: Progress) -> None: ...

    def encoder(self) -> PartEncoder | None:
        """Who encodes a new compressed index's parts: None for this process."""
        ...


@dataclass
class LocalExecutor:
    """This process, with the prefetching loader (decoding the next batch meanwhile)."""

    embedder: Embedder
    batch_size: int = 32
    loader_threads: int = 1
    workers: int = 1

    def encoder(self) -> PartEncoder | None:
        return None  # FAISS already encodes on every core of this machine

    def run(self, shards: Sequence[ShardSpec], on_done: OnDone, progress: Progress) -> None:
        for spec in shards:
            seen = [0]

            def tick(n: int, seen: list[int] = seen) -> None:
                seen[0] += n
                progress.photos_seen(n)

            out = embed_shard(self.embedder, spec, self.batch_size, self.loader_threads, tick)
            on_done(spec, out)
            progress.shard_done(out, counted=seen[0], size=seen[0])


# ------------------------------------------------------------------- process pool

_WORKER: dict[str, Any] = {}


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(spec: EmbedderSpec, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["embedder"] = make_embedder(spec)


def _pool_task(shard: ShardSpec, batch_size: int, loader_threads: int) -> tuple[ShardOutput, int]:
    seen = [0]

    def tick(n: int) -> None:
        seen[0] += n

    out = embed_shard(_WORKER["embedder"], shard, batch_size, loader_threads, tick)
    return out, seen[0]


@dataclass
class PoolExecutor:
    """A local pool of ``workers`` processes (spawned: no fork of a process holding torch
    threads), each loading the model once; at most two shards in flight per worker."""

    spec: EmbedderSpec
    workers: int = 2
    batch_size: int = 32
    loader_threads: int = 1

    def encoder(self) -> PartEncoder | None:
        return None  # FAISS already encodes on every core of this machine

    def run(self, shards: Sequence[ShardSpec], on_done: OnDone, progress: Progress) -> None:
        if not shards:
            return
        todo = list(shards)[::-1]
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.spec, _threads(self.workers)),
        )
        running: dict[Future[tuple[ShardOutput, int]], ShardSpec] = {}
        try:
            while todo or running:
                while todo and len(running) < 2 * self.workers:
                    s = todo.pop()
                    f = pool.submit(_pool_task, s, self.batch_size, self.loader_threads)
                    running[f] = s
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    spec = running.pop(f)
                    out, size = f.result()
                    on_done(spec, out)
                    progress.shard_done(out, size=size)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------- Ray


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


class RayShardWorker:
    """A Ray actor's state: the model, loaded once."""

    def __init__(self, spec: EmbedderSpec, threads: int, batch_size: int, loader_threads: int):
        import torch

        torch.set_num_threads(threads)
        self.embedder = make_embedder(spec)
        self.batch_size, self.loader_threads = batch_size, loader_threads

    def embed(self, shard: ShardSpec) -> tuple[ShardOutput, int]:
        seen = [0]

        def tick(n: int) -> None:
            seen[0] += n

        out = embed_shard(self.embedder, shard, self.batch_size, self.loader_threads, tick)
        return out, seen[0]

    def pid(self) -> int:
        return os.getpid()


@dataclass
class RayExecutor:
    """Shards as tasks on Ray actors: a local runtime (``address`` None; ``workers`` CPUs)
    or an existing cluster (``address``: ``auto`` or ``HOST:PORT``)."""

    spec: EmbedderSpec
    workers: int | None = None
    address: str | None = None
    batch_size: int = 32
    loader_threads: int = 1
    gpus: bool = False
    retries: int = 3

    def __post_init__(self) -> None:
        self.ray = import_ray()  # fail before anything starts

    def run(self, shards: Sequence[ShardSpec], on_done: OnDone, progress: Progress) -> None:
        if not shards:
            return
        with self._session() as ray:
            self._run(ray, shards, on_done, progress)

    def encoder(self) -> PartEncoder | None:
        return self.encode_parts

    def encode_parts(
        self,
        trained_file: Path,
        vectors_file: Path,
        ranges: list[range],
        folder: Path,
        on_rows: Callable[[int], None],
    ) -> None:
        """:data:`~geolocus.index.compressed.PartEncoder` on Ray: one task a part, each
        reading the trained quantisers and the vectors from the database folder (which
        the workers must see: this machine, or storage the cluster shares). A task whose
        worker dies is retried by Ray; parts already written are never redone."""
        if not ranges:
            return
        with self._session() as ray:
            cpus = ray.cluster_resources().get("CPU", 1)
            threads = max(1, int(cpus // max(1, min(len(ranges), self.workers or cpus))))
            task = ray.remote(num_cpus=1, max_retries=self.retries)(encode_part_task)
            args = (str(trained_file), str(vectors_file))
            running = {task.remote(*args, r.start, r.stop, str(folder), threads): r for r in ranges}
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                r = running.pop(ready[0])
                try:
                    ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                    raise InputError(
                        f"encoding rows {r.start}-{r.stop} on Ray failed in each of "
                        f"{self.retries + 1} attempts ({type(e).__name__}); run again to resume"
                    ) from None
                on_rows(len(r))

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        """Ray, initialised for the time of the block: a new local runtime, or the
        cluster at ``address``; one already initialised by the caller is used as it is."""
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            kw: dict[str, Any] = {
                "runtime_env": {"env_vars": env},
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.address:
                kw["address"] = self.address
            else:  # "local": a new runtime, even where a cluster runs on this machine
                kw["address"] = "local"
                kw["num_cpus"] = self.workers or os.cpu_count() or 1
                kw["object_store_memory"] = 256 * 1024**2
            try:
                ray.init(**kw)
            except ConnectionError as e:
                raise InputError(f"cannot reach the Ray cluster at {self.address}: {e}") from None
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, shards: Sequence[ShardSpec], on_done: OnDone, progress: Progress):
        res = ray.cluster_resources()
        slots = int(res.get("GPU", 0)) if self.gpus else int(res.get("CPU", 1))
        n = max(1, min(self.workers or slots, slots or 1, len(shards)))
        cpus = res.get("CPU", n)
        # a dead actor is restarted and its task retried once by Ray, then resubmitted here
        # up to ``retries`` times: bounded, so a shard that always kills its worker ends
        opts: dict[str, Any] = {"num_cpus": 1, "max_restarts": -1, "max_task_retries": 1}
        if self.gpus:
            opts["num_gpus"] = 1
        actor_cls = ray.remote(**opts)(RayShardWorker)
        threads = max(1, int(cpus // n))
        actors = [
            actor_cls.remote(self.spec, threads, self.batch_size, self.loader_threads)
            for _ in range(n)
        ]
        todo = list(shards)[::-1]
        attempts: dict[str, int] = {}
        running: dict[Any, tuple[Any, ShardSpec]] = {}
        try:
            for a in actors:
                if todo:
                    s = todo.pop()
                    running[a.embed.remote(s)] = (a, s)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                ref = ready[0]
                actor, spec = running.pop(ref)
                try:
                    out, size = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                    attempts[spec.name] = attempts.get(spec.name, 0) + 1
                    if attempts[spec.name] > self.retries:
                        raise InputError(
                            f"shard {spec.name}: its Ray worker died in each of {self.retries + 1} "
                            f"attempts ({type(e).__name__}); giving up"
                        ) from None
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    actor = actor_cls.remote(
                        self.spec, threads, self.batch_size, self.loader_threads
                    )
                    actors.append(actor)
                    running[actor.embed.remote(spec)] = (actor, spec)
                    continue
                except ray.exceptions.RayTaskError as e:
                    cause = e.as_instanceof_cause()
                    raise cause from None
                on_done(spec, out)
                progress.shard_done(out, size=size)
                if todo:
                    s = todo.pop()
                    running[actor.embed.remote(s)] = (actor, s)
        finally:
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)


def encode_part_task(
    trained_file: str, vectors_file: str, start: int, stop: int, folder: str, threads: int
) -> int:
    """One part of a compressed index, encoded in a Ray worker (see
    :meth:`RayExecutor.encode_parts`)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    encode_parts_here(
        Path(trained_file), Path(vectors_file), [range(start, stop)], Path(folder), lambda n: None
    )
    return stop - start


def make_executor(
    embedder: Embedder,
    spec: EmbedderSpec,
    *,
    workers: int | None = None,
    ray: bool = False,
    ray_address: str | None = None,
    batch_size: int = 32,
    loader_threads: int = 1,
) -> Executor:
    """The executor the CLI options name: Ray, a pool of ``workers`` > 1, or this process."""
    if ray or ray_address:
        return RayExecutor(spec, workers, ray_address, batch_size, loader_threads)
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if workers and workers > 1:
        return PoolExecutor(spec, workers, batch_size, loader_threads)
    return LocalExecutor(embedder, batch_size, loader_threads)
