"""The index at scale, in miniature: ``auto`` switches to a compressed index above its
threshold; recall against exact search, memory-mapped reopen, add, shard merge, damage."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from geolocus.errors import InputError
from geolocus.index import Database
from geolocus.index import compressed as cp

DIM = 32


def _corpus(n: int, seed: int = 0, centres: int = 60) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Clustered vectors (near places, near vectors) with positions per cluster."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, DIM))
    lab = rng.integers(0, centres, n)
    x = (c[lab] + 0.35 * rng.normal(size=(n, DIM))).astype(np.float32)
    pos = np.column_stack([rng.uniform(-60, 60, centres), rng.uniform(-170, 170, centres)])
    ll = pos[lab] + rng.normal(scale=0.05, size=(n, 2))
    return x, [f"p{seed}-{i}.jpg" for i in range(n)], ll


def _compressed_db(path, n=3000, threshold=1000, chunk=700):
    x, ids, ll = _corpus(n)
    db = Database.create(path, dim=DIM, model="t", auto_threshold=threshold)
    for s in range(0, n, chunk):  # a streaming build: chunk by chunk
        db.add(x[s : s + chunk], ids[s : s + chunk], ll[s : s + chunk], source="exif")
    db.save()
    return db, x, ids, ll


def test_auto_is_flat_when_small_and_compressed_above_the_threshold(tmp_path):
    x, ids, ll = _corpus(500)
    small = Database.create(tmp_path / "small", dim=DIM, model="t", auto_threshold=1000)
    small.add(x, ids, ll)
    small.save()
    assert small.manifest.factory == "Flat" and small.manifest.format == 1
    assert not small.is_compressed
    db, *_ = _compressed_db(tmp_path / "big")
    man = Database.open(tmp_path / "big").manifest
    assert man.format == 2 and man.factory.startswith("IVF") and "PQ" in man.factory
    assert man.search["choice"] == "auto" and man.count == 3000 == len(db)
    assert man.search["recall_at_20"] >= 0.95 and man.search["nprobe"] >= 1
    names = sorted(p.name for p in (tmp_path / "big").iterdir())
    assert names == [".lock", "coords-1.npy", "exact-1.npy", "ids-1.npy", "listoff-1.npy",
                     "listrows-1.npy", "lists-1.npy", "manifest.json", "meta-1.parquet",
                     "vectors-1.faiss"]  # fmt: skip


def test_compressed_recall_against_exact_search(tmp_path):
    db, x, _, ll = _compressed_db(tmp_path / "db")
    q = x[:200] + 0.3 * np.random.default_rng(5).normal(size=(200, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.argsort(-(q @ xn.T), axis=1)[:, :20]
    nb = db.search(q, k=20, k_far=3)
    found = np.vectorize(lambda s: int(s.split("-")[1].split(".")[0]))(nb.near_ids)
    assert cp.recall(found, truth) >= 0.9
    np.testing.assert_allclose(nb.near, ll[found])
    # scores are exact (re-ranked from the float16 vectors), best first
    np.testing.assert_allclose(nb.near_scores[:, 0], np.sum(q * xn[found[:, 0]], axis=1), atol=2e-3)
    assert (np.diff(nb.near_scores, axis=1) <= 1e-6).all()
    assert (nb.far_scores[:, 0] < nb.near_scores[:, -1]).all()


def test_reopen_is_memory_mapped_and_searches_the_same(tmp_path):
    db, x, ids, _ = _compressed_db(tmp_path / "db")
    q = x[:40]
    before = db.search(q, k=10, k_far=2, query_ids=ids[:40], exclude_self=True)
    again = Database.open(tmp_path / "db")
    assert isinstance(again._columns.exact, np.memmap)
    after = again.search(q, k=10, k_far=2, query_ids=ids[:40], exclude_self=True)
    assert (before.near_ids == after.near_ids).all() and (before.far_ids == after.far_ids).all()
    assert not (after.near_ids == np.asarray(ids[:40], dtype=object)[:, None]).any()
    assert ids[7] in again and "nope" not in again
    assert list(again.meta.columns) == ["id", "lat", "lon", "path", "source"]
    assert set(again.meta["source"]) == {"exif"}
    assert again.check_vectors().startswith("vectors: 3000 read back")


def test_add_to_a_compressed_database_uses_its_quantisers(tmp_path):
    _compressed_db(tmp_path / "db")
    db = Database.open(tmp_path / "db")
    nlist = cp.nlist_of(db.index)
    x2, ids2, ll2 = _corpus(300, seed=9)
    assert db.add(x2, ids2, ll2) == 300
    with pytest.raises(InputError, match="save the database"):
        db.search(x2[:2], k=3)
    db.save()
    again = Database.open(tmp_path / "db")
    assert len(again) == 3300 and cp.nlist_of(again.index) == nlist
    assert again.manifest.search["trained_at_count"] == 3000
    nb = again.search(x2[:20], k=1)
    assert list(nb.near_ids[:, 0]) == ids2[:20]
    # the list order holds the new rows too: scanning every list is exact search
    from geolocus.index.lists import scan_search

    q = x2[:10] / np.linalg.norm(x2[:10], axis=1, keepdims=True)
    _, rows = scan_search(again.index, again._columns.lists, q, 5, nlist)
    np.testing.assert_array_equal(rows, cp.exact_topk(again._columns.exact, q, 5)[1])
    assert again.add(x2[:5], ids2[:5], ll2[:5]) == 0  # known ids are skipped
    with pytest.raises(InputError, match="shape"):
        again.add(np.zeros((2, DIM + 1)), ["a", "b"], np.zeros((2, 2)))


def test_add_says_when_retraining_would_pay(tmp_path):
    x, ids, ll = _corpus(6000)
    db = Database.create(tmp_path / "db", dim=DIM, model="t", factory="IVF16,PQ8x4fs")
    db.add(x[:1000], ids[:1000], ll[:1000])
    db.save()
    db.add(x[1000:], ids[1000:], ll[1000:])
    with pytest.warns(UserWarning, match="retraining would pay"):
        db.save()


def test_shards_merged_equal_one_build():
    x = _corpus(4000)[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    v = x.astype(np.float16)
    trained = cp.train(cp.auto_factory(len(v), DIM), DIM, v)
    one = faiss.clone_index(trained)
    cp.add_rows(one, v)
    shards = []
    for s, e in ((0, 1500), (1500, 2600), (2600, 4000)):
        sh = faiss.clone_index(cp.for_parts(trained))  # plain IVF-PQ: fast-scan merges crash
        sh.add_with_ids(v[s:e].astype(np.float32), np.arange(s, e))
        shards.append(sh)
    merged = cp.merge_shards(trained, shards)
    assert merged.ntotal == one.ntotal == 4000
    assert type(merged) is type(trained) is faiss.IndexIVFPQFastScan  # packed back
    a = cp.reranked_search(one, v, x[:50], 20, 8, 100)
    b = cp.reranked_search(merged, v, x[:50], 20, 8, 100)
    np.testing.assert_array_equal(a[1], b[1])


def test_shard_files_resume_and_merge(tmp_path):
    x = _corpus(3000)[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    v = x.astype(np.float16)
    trained = cp.train(cp.auto_factory(len(v), DIM), DIM, v)
    one = faiss.clone_index(trained)
    cp.add_rows(one, v)
    paths = [cp.write_shard(trained, v, r, tmp_path / f"s{i}.faiss")
             for i, r in enumerate(cp.chunks(3000, 0, 1000))]  # fmt: skip
    stamp = paths[1].stat().st_mtime_ns
    cp.write_shard(trained, v, range(1000, 2000), paths[1])  # done already: kept
    assert paths[1].stat().st_mtime_ns == stamp
    merged = cp.merge_shard_files(trained, paths)
    np.testing.assert_array_equal(
        cp.reranked_search(one, v, x[:30], 10, 8, 100)[1],
        cp.reranked_search(merged, v, x[:30], 10, 8, 100)[1],
    )


def test_truncated_vector_file_is_named_as_damaged(tmp_path):
    _compressed_db(tmp_path / "db")
    f = tmp_path / "db" / "exact-1.npy"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(InputError, match=r"database .* is damaged: exact-1\.npy has \d+ bytes"):
        Database.open(tmp_path / "db")


def test_a_failed_save_keeps_the_good_generation(tmp_path, monkeypatch):
    db, *_ = _compressed_db(tmp_path / "db")
    x2, ids2, ll2 = _corpus(100, seed=3)
    db.add(x2, ids2, ll2)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cp, "tune", full)
    with pytest.raises(InputError, match=r"cannot write the database .*No space left"):
        db.save()
    again = Database.open(tmp_path / "db", verify=True)
    assert len(again) == 3000 and again.manifest.generation == 1
    assert sorted(p.name for p in (tmp_path / "db").glob("*-2.*")) == []


def test_predict_and_best_over_a_compressed_database(tmp_path):
    """The geolocator (and ``best``, fitted by leave-one-out) unchanged over a
    compressed database: a red photo is placed in Paris."""
    from fakes import PLACES, ColourEncoder, photo
    from geolocus import Geolocator, PlaceSettings
    from geolocus.models.embedder import BackboneEmbedder

    emb = BackboneEmbedder(ColourEncoder())
    names = list(PLACES)
    from PIL import Image

    files = [photo(tmp_path / f"{n}.jpg", PLACES[n][2]) for n in names]
    centres = emb.embed([Image.open(f).convert("RGB") for f in files])
    rng = np.random.default_rng(0)
    lab = rng.integers(0, len(names), 1500)
    x = centres[lab] + 0.15 * rng.normal(size=(1500, emb.dim))
    ll = np.array([PLACES[names[i]][:2] for i in lab]) + rng.normal(scale=0.01, size=(1500, 2))
    db = Database.create(tmp_path / "db", dim=emb.dim, model=emb.name,
                         model_version=emb.version, auto_threshold=1000)  # fmt: skip
    db.add(x, [f"{names[i]}-{j}.jpg" for j, i in enumerate(lab)], ll)
    db.save()
    assert Database.open(tmp_path / "db").is_compressed
    for refine in ("dualgeo", "best"):
        geo = Geolocator.from_database(
            tmp_path / "db", refine, embedder=emb, places=PlaceSettings(top_k=1, names=False)
        )
        (pred,) = geo([str(tmp_path / "paris.jpg")])
        assert pred.ok
        assert abs(pred.top.lat - PLACES["paris"][0]) < 0.5
        assert abs(pred.top.lon - PLACES["paris"][1]) < 0.5


def test_info_shows_the_search_settings_and_check_passes(tmp_path, capsys):
    from geolocus.cli.main import main

    _compressed_db(tmp_path / "db")
    assert main(["index", "info", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "format            2" in out and "positions from    exif 3000" in out
    assert "recall@20" in out and ("re-rank" in out or "scanned exactly" in out)
    assert "far search" in out
    assert main(["index", "info", str(tmp_path / "db"), "--check"]) == 0
    assert "is sound" in capsys.readouterr().out


def test_an_interrupted_save_resumes_its_training_and_finished_parts(tmp_path, monkeypatch):
    """Ctrl-C while encoding a new compressed index: the next save reuses the trained
    quantisers and the parts already written, and gives the uninterrupted database."""
    whole, x, ids, ll = _compressed_db(tmp_path / "whole")
    monkeypatch.setattr(cp, "PART_ROWS", 1000)
    trained, encoded = [], []
    real_train, real_write = cp.train, cp.write_shard
    monkeypatch.setattr(cp, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))

    def write(trained_index, vectors, rows, path, on_rows=None):
        if len(encoded) == 2 and not (tmp_path / "stopped").exists():
            (tmp_path / "stopped").touch()
            raise KeyboardInterrupt  # the third part: the user presses Ctrl-C
        encoded.append(rows.start)
        return real_write(trained_index, vectors, rows, path, on_rows)

    monkeypatch.setattr(cp, "write_shard", write)

    def build():
        db = Database.create(tmp_path / "db", dim=DIM, model="t", auto_threshold=1000,
                             overwrite=True)  # fmt: skip
        for s in range(0, len(x), 700):
            db.add(x[s : s + 700], ids[s : s + 700], ll[s : s + 700], source="exif")
        db.save()
        return db

    with pytest.raises(KeyboardInterrupt):
        build()
    assert not (tmp_path / "db" / "manifest.json").exists()  # nothing half-saved
    parts = list((tmp_path / "db" / ".index-parts").glob("*/part-*.faiss"))
    assert len(parts) == 2 and trained == [1]
    db = build()
    assert trained == [1] and encoded == [0, 1000, 2000]  # no part encoded twice
    assert not (tmp_path / "db" / ".index-parts").exists()
    # the same index (the search settings, tuned by measured time, may differ)
    q = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    for side in (q, -q):
        sa, ra = cp.reranked_search(whole.index, whole._columns.exact, side, 10, 8, 100)
        sb, rb = cp.reranked_search(db.index, db._columns.exact, side, 10, 8, 100)
        assert (ra == rb).all()
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.slow
def test_ray_encodes_the_parts_of_a_compressed_index_as_this_process_does(tmp_path, monkeypatch):
    """The save's encoding spread over Ray tasks (one a part, each reading the trained
    quantisers and the vectors from the folder) gives the index one process gives."""
    pytest.importorskip("ray")
    from fakes import colour_embedder
    from geolocus.index.executors import RayExecutor

    monkeypatch.setattr(cp, "PART_ROWS", 1000)
    here, x, ids, ll = _compressed_db(tmp_path / "here")
    db = Database.create(tmp_path / "ray", dim=DIM, model="t", auto_threshold=1000)
    for s in range(0, len(x), 700):
        db.add(x[s : s + 700], ids[s : s + 700], ll[s : s + 700], source="exif")
    ray_ex = RayExecutor(colour_embedder, workers=2)
    seen: list[int] = []
    real = ray_ex.encode_parts

    def encode(t, v, ranges, folder, on_rows):
        seen.extend(r.start for r in ranges)
        return real(t, v, ranges, folder, on_rows)

    db.save(encoder=encode)
    assert sorted(seen) == [0, 1000, 2000]  # three parts, all encoded on Ray
    ray_db = Database.open(tmp_path / "ray")
    q = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    for side in (q, -q):
        sa, ra = cp.reranked_search(here.index, here._columns.exact, side, 10, 8, 100)
        sb, rb = cp.reranked_search(ray_db.index, ray_db._columns.exact, side, 10, 8, 100)
        assert (ra == rb).all()
        np.testing.assert_array_equal(sa, sb)


def test_index_tune_chooses_new_settings_without_rebuilding(tmp_path, capsys):
    from geolocus.cli.main import main

    _compressed_db(tmp_path / "db")
    before = Database.open(tmp_path / "db").manifest
    assert main(["index", "tune", str(tmp_path / "db"), "--target-recall", "0.5"]) == 0
    out = capsys.readouterr().out
    after = Database.open(tmp_path / "db").manifest
    assert after.search["target_recall_at_20"] == 0.5 and "target 0.5" in out
    assert after.search["recall_at_20"] >= 0.5
    assert after.files == before.files and after.generation == before.generation
    assert main(["index", "info", str(tmp_path / "db"), "--check"]) == 0
    capsys.readouterr()
    # an exact database has nothing to tune; a target outside (0, 1] is refused
    x, ids, ll = _corpus(300)
    flat = Database.create(tmp_path / "flat", dim=DIM, model="t")
    flat.add(x, ids, ll)
    flat.save()
    for argv in (
        ["index", "tune", str(tmp_path / "flat")],
        ["index", "tune", str(tmp_path / "db"), "--target-recall", "1.5"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("geolocus: error: ") and err.count("\n") == 1, err


def test_read_rows_reads_a_memory_mapped_file_row_by_row_as_indexing_does(tmp_path):
    from geolocus.index.columns import read_rows

    a = np.random.default_rng(0).normal(size=(500, 24)).astype(np.float16)
    np.save(tmp_path / "v.npy", a)
    m = np.load(tmp_path / "v.npy", mmap_mode="r")
    rows = np.array([0, 3, 4, 250, 499])
    got = read_rows(m, rows)
    assert got.dtype == np.float32 and got.shape == (5, 24)
    np.testing.assert_array_equal(got, a[rows].astype(np.float32))
    np.testing.assert_array_equal(read_rows(a, rows), got)  # an array in memory too


# ---- list order: exact scans of the probed lists ----------------------------------------


def test_scanning_the_lists_is_exact_within_them_and_everywhere_with_all_lists(tmp_path):
    """The scan's answer is exact search restricted to the probed lists; probing every
    list, it is exact search, rows and scores."""
    from geolocus.index.lists import scan_search

    db, x, *_ = _compressed_db(tmp_path / "db")
    lists = db._columns.lists
    assert lists is not None
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    q = xn[:40] + 0.2 * np.random.default_rng(2).normal(size=(40, DIM)).astype(np.float32)
    nlist = cp.nlist_of(db.index)
    s_all, r_all = scan_search(db.index, lists, q, 20, nlist)
    s_ex, r_ex = cp.exact_topk(db._columns.exact, q, 20)
    np.testing.assert_array_equal(r_all, r_ex)
    np.testing.assert_allclose(s_all, s_ex, rtol=1e-5, atol=1e-5)
    # two lists: the exact top-20 of the rows of the two lists nearest each query
    _, probe = faiss.extract_index_ivf(db.index).quantizer.search(q, 2)
    s2, r2 = scan_search(db.index, lists, q, 20, 2)
    for i in range(len(q)):
        mine = np.concatenate(
            [lists.rows[lists.offsets[c] : lists.offsets[c + 1]] for c in probe[i]]
        )
        truth = mine[np.argsort(-(xn[mine] @ q[i]), kind="stable")][:20]
        assert set(r2[i][r2[i] >= 0]) == set(truth)
        assert np.all(np.diff(s2[i][r2[i] >= 0]) <= 1e-6)  # best first
    # every row is in exactly one list, and the list file holds its vector
    assert sorted(lists.rows.tolist()) == list(range(len(x)))
    pos = np.random.default_rng(3).choice(len(x), 50, replace=False)
    np.testing.assert_array_equal(
        np.asarray(lists.vectors[pos]), np.asarray(db._columns.exact[lists.rows[pos]])
    )


def _resident_kb(path) -> int:
    """This process's resident kB of the memory maps of ``path`` (Linux smaps)."""
    total, mine = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                mine = len(head) >= 6 and head[-1] == str(path)
            elif mine and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="Linux only")
def test_a_scan_reads_the_lists_in_place_and_leaves_them_out_of_the_resident_set(
    tmp_path, monkeypatch
):
    """The scan points FAISS at the mapped file instead of copying it; afterwards the
    pages it touched are no longer this process's (a long run of searches must not map
    the whole 10 GB file); lists shorter than k fill their tail with -1."""
    from geolocus.index import lists as lists_mod
    from geolocus.index.lists import scan_search

    db, x, *_ = _compressed_db(tmp_path / "db")
    lists = db._columns.lists
    assert lists is not None
    path = (tmp_path / "db" / "lists-1.npy").resolve()
    nlist = cp.nlist_of(db.index)
    seen = []  # resident kB of the file whenever the scan lets pages go
    real = lists_mod.release

    def spy(a, rows=None):
        if rows:
            seen.append(_resident_kb(path))
        real(a, rows)

    monkeypatch.setattr(lists_mod, "release", spy)
    monkeypatch.setattr(lists_mod, "RELEASE_BYTES", 1)  # at 10 M: 64 MB, ~25 lists
    _, rows = scan_search(db.index, lists, x[:16], 20, nlist)
    assert (rows >= 0).all()
    # a list at a time leaves the resident set, never all the lists the queries probe
    # (the kernel maps up to 64 KB around a fault: a list's pages and their neighbours)
    assert len(seen) == int((np.diff(lists.offsets) > 0).sum())
    assert max(seen) <= 2 * 64 + 4 < lists.vectors.nbytes // 1024
    monkeypatch.undo()
    np.asarray(lists.vectors).sum()  # every page mapped in
    assert _resident_kb(path) >= lists.vectors.nbytes // 1024 - 4
    scan_search(db.index, lists, x[:16], 20, nlist)
    assert _resident_kb(path) <= 8  # at most a page or two at the edges
    # one list, k larger than it: its rows, then -1 with -inf
    sizes = np.diff(lists.offsets)
    k = int(sizes.max()) + 5
    s1, r1 = scan_search(db.index, lists, x[:3], k, 1)
    for i in range(3):
        filled = int((r1[i] >= 0).sum())
        assert filled in set(sizes.tolist()) and filled < k
        assert np.isneginf(s1[i, filled:]).all() and (r1[i, filled:] == -1).all()


def test_far_neighbours_take_their_own_lists_visited(tmp_path):
    """``far_nprobe`` sets the lists visited for the far neighbours alone: every list finds
    (nearly: PQ re-ranking here) the least similar photos, one list far fewer; the near ones do not
    change."""
    db, x, ids, _ = _compressed_db(tmp_path / "db")
    q = x[:40] / np.linalg.norm(x[:40], axis=1, keepdims=True)
    tuned = db.search(q, k=10, k_far=10)
    _, far_rows = cp.exact_topk(db._columns.exact, -q, 10)
    truth = np.asarray(ids, dtype=object)[far_rows]

    def far_recall(far_nprobe: int) -> float:
        nb = db.search(q, k=10, k_far=10, far_nprobe=far_nprobe)
        assert (nb.near_ids == tuned.near_ids).all()
        return float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nb.far_ids, truth, strict=True)])
        )

    wide, narrow = far_recall(cp.nlist_of(db.index)), far_recall(1)
    assert wide >= 0.9 and narrow < wide - 0.2


def _saved_before_list_order(path):
    """A compressed database as saved before list order existed (no list files,
    PQ re-ranking in its manifest); returns its vectors."""
    import json

    _, x, *_ = _compressed_db(path)
    man = json.loads((path / "manifest.json").read_text())
    for name in ("lists-1.npy", "listrows-1.npy", "listoff-1.npy"):
        man["files"].pop(name)
        (path / name).unlink()
    man["search"].update(rerank=400, far_rerank=400)
    (path / "manifest.json").write_text(json.dumps(man))
    return x


def test_a_database_saved_without_list_order_searches_and_tune_adds_it(tmp_path, capsys):
    """Databases saved before list order existed open and search by re-ranking;
    ``index tune`` writes the list-ordered files and may then choose to scan."""
    from geolocus.cli.main import main

    path = tmp_path / "db"
    x = _saved_before_list_order(path)
    old = Database.open(path)
    assert old._columns.lists is None
    before = old.search(x[:10], k=5, k_far=5)
    assert main(["index", "tune", str(path)]) == 0
    assert "recall@20" in capsys.readouterr().out
    new = Database.open(path, verify=True)
    assert new._columns.lists is not None
    assert {"lists-1.npy", "listrows-1.npy", "listoff-1.npy"} <= set(new.manifest.files)
    after = new.search(x[:10], k=5, k_far=5)
    assert (after.near_ids[:, 0] == before.near_ids[:, 0]).all()  # each photo finds itself


def test_a_damaged_list_file_is_named(tmp_path):
    path = tmp_path / "db"
    _compressed_db(path)
    with open(path / "listoff-1.npy", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(InputError, match=r"listoff-1.npy"):
        Database.open(path)


def test_tuning_keeps_the_cheapest_setting_near_the_best_when_the_target_is_out_of_reach():
    t = [
        cp.Tuning(4, 0, 0.40, 1.0, 100),
        cp.Tuning(32, 0, 0.49, 8.0, 100),
        cp.Tuning(16, 0, 0.48, 4.0, 100),
        cp.Tuning(32, 3200, 0.50, 20.0, 100),
    ]
    assert cp.choose(t, 0.95) == t[2]  # within 0.02 of 0.50, and the cheapest such
    assert cp.choose(t, 0.45) == t[2]  # reached: the cheapest that reaches it
    assert cp.choose(t, 0.30) == t[0]
    assert cp.choose(t, 0.95, budget_ms=5.0) == t[2]  # the best within 5 ms
    assert cp.choose(t, 0.95, budget_ms=2.0) == t[0]
    assert cp.choose(t, 0.95, budget_ms=0.5) == t[0]  # none affordable: the cheapest


def test_tune_on_a_full_disk_leaves_the_database_as_it_was(tmp_path, capsys, monkeypatch):
    """``index tune`` writing the list order of an older database runs out of space: one
    line, exit 2, no list file left, and the database opens and searches as before."""
    from geolocus.cli.main import main
    from geolocus.index import lists as lists_mod

    path = tmp_path / "db"
    x = _saved_before_list_order(path)
    real = lists_mod.write_lists

    def full(index, vectors, paths, on_rows=None):
        real(index, vectors, paths, on_rows)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("geolocus.index.database.write_lists", full)
    assert main(["index", "tune", str(path)]) == 2
    full = capsys.readouterr().err
    err = full.strip().splitlines()[-1].split("\r")[-1]  # the line after the progress bar
    assert err.startswith("geolocus: error: cannot write the database")
    assert "No space left" in err and "Traceback" not in full
    assert sorted(p.name for p in path.glob("list*")) == []
    again = Database.open(path, verify=True)
    assert again._columns.lists is None and again.manifest.search["rerank"] == 400
    assert again.search(x[:3], k=2).near_ids.shape == (3, 2)
