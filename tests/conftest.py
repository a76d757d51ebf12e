"""Shared fixtures. Tests that need ../shared/data skip with a message where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geolocus.data.im2gps3k import find_data_dir
from geolocus.files import CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def fresh_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every run builds its caches (gazetteer, place names, language model) from the code
    under test: a cache left by older code once hid a renamed key from the suite."""
    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("user-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = find_data_dir()
    if d is None or not (d / "im2gps3k" / "labels.csv").exists():
        pytest.skip("shared data (../shared/data/im2gps3k) not present; set GEOLOCUS_DATA")
    return d


@pytest.fixture(scope="session")
def im2gps3k(shared_data: Path) -> Path:
    return shared_data / "im2gps3k"


@pytest.fixture
def one_thread():
    """Tiny ops: thread hand-offs cost more than they save on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
