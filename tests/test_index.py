"""The retrieval database: add/search, persistence, far neighbours, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geolocus.errors import InputError, InvalidCoordinatesError
from geolocus.index import Database


def _data(n=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    ll = np.column_stack([rng.uniform(-80, 80, n), rng.uniform(-179, 179, n)])
    return x, [f"img{i}.jpg" for i in range(n)], ll


def test_exact_search_matches_brute_force_cosine(tmp_path):
    x, ids, ll = _data()
    db = Database.create(tmp_path / "db", dim=16, model="test")
    assert db.add(x, ids, ll) == 200
    q = np.random.default_rng(1).normal(size=(5, 16))
    nb = db.search(q, k=10, k_far=4)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ xn.T
    for i in range(5):
        order = np.argsort(-sims[i])
        assert list(nb.near_ids[i]) == [ids[j] for j in order[:10]]
        np.testing.assert_allclose(nb.near_scores[i], sims[i, order[:10]], atol=1e-5)
        np.testing.assert_allclose(nb.near[i], ll[order[:10]])
        # far neighbours: the least similar photos, most dissimilar first
        assert list(nb.far_ids[i]) == [ids[j] for j in order[::-1][:4]]
        np.testing.assert_allclose(nb.far_scores[i], sims[i, order[::-1][:4]], atol=1e-5)


def test_save_open_round_trip_and_add_skips_known_ids(tmp_path):
    x, ids, ll = _data()
    db = Database.create(tmp_path / "db", dim=16, model="enc", model_version="w1")
    db.add(x[:150], ids[:150], ll[:150])
    db.save()
    db2 = Database.open(tmp_path / "db")
    assert len(db2) == 150 and db2.manifest.model == "enc" and db2.manifest.model_version == "w1"
    assert db2.add(x[100:], ids[100:], ll[100:]) == 50  # 100..149 already present
    db2.save()
    db3 = Database.open(tmp_path / "db")
    assert len(db3) == 200 and list(db3.ids) == ids
    man = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert man["count"] == 200 and man["dim"] == 16 and man["generation"] == 2
    # only the current generation's files remain
    names = sorted(p.name for p in (tmp_path / "db").iterdir())
    assert names == [".lock", "manifest.json", "meta-2.parquet", "vectors-2.faiss"]


def test_exclude_self_for_leave_one_out(tmp_path):
    x, ids, ll = _data(50)
    db = Database.create(tmp_path / "db", dim=16, model="t")
    db.add(x, ids, ll)
    nb = db.search(x[:10], k=5, query_ids=ids[:10], exclude_self=True)
    for i in range(10):
        assert ids[i] not in nb.near_ids[i]
    # without exclusion each photo finds itself first
    nb = db.search(x[:10], k=5, query_ids=ids[:10])
    assert [r[0] for r in nb.near_ids] == ids[:10]


def test_k_larger_than_database_pads(tmp_path):
    x, ids, ll = _data(3)
    db = Database.create(tmp_path / "db", dim=16, model="t")
    db.add(x, ids, ll)
    nb = db.search(x[:1], k=5)
    assert nb.near.shape == (1, 5, 2)
    assert len(set(nb.near_ids[0])) == 3


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16,Flat"])
def test_other_faiss_factories(tmp_path, factory):
    x, ids, ll = _data(300)
    db = Database.create(tmp_path / "db", dim=16, model="t", factory=factory)
    db.add(x, ids, ll)
    db.save()
    db = Database.open(tmp_path / "db")
    ivf = factory.startswith("IVF")
    nb = db.search(x[:5], k=3, nprobe=4 if ivf else None, ef_search=None if ivf else 64)
    assert [r[0] for r in nb.near_ids] == ids[:5]
    with pytest.raises(InputError, match="applies to"):
        db.search(x[:1], k=3, ef_search=64) if ivf else db.search(x[:1], k=3, nprobe=4)


def test_bad_input(tmp_path):
    x, ids, ll = _data(10)
    with pytest.raises(InputError, match="invalid FAISS factory"):
        Database.create(tmp_path / "a", dim=16, model="t", factory="Nonsense42")
    db = Database.create(tmp_path / "db", dim=16, model="t")
    with pytest.raises(InputError, match=r"shape \(n, 16\)"):
        db.add(x[:, :8], ids, ll)
    with pytest.raises(InvalidCoordinatesError):
        db.add(x, ids, ll * np.array([[3.0, 1.0]]))
    with pytest.raises(InputError, match="empty"):
        db.search(x[:1])
    db.add(x, ids, ll)
    db.save()
    with pytest.raises(InputError, match="already exists"):
        Database.create(tmp_path / "db", dim=16, model="t")
    with pytest.raises(InputError, match="no geolocus database"):
        Database.open(tmp_path / "nothing")
    with pytest.raises(InputError, match="at least"):
        Database.create(tmp_path / "ivf", dim=16, model="t", factory="IVF64,Flat").add(x, ids, ll)


def test_inconsistent_database_is_detected(tmp_path):
    x, ids, ll = _data(10)
    db = Database.create(tmp_path / "db", dim=16, model="t")
    db.add(x, ids, ll)
    db.save()
    man = json.loads((tmp_path / "db" / "manifest.json").read_text())
    man["count"] = 11
    (tmp_path / "db" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match="inconsistent"):
        Database.open(tmp_path / "db")
