"""Shared fixtures. Tests that need ../shared/data skip with a message where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from geolocus.data.im2gps3k import find_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = find_data_dir()
    if d is None or not (d / "im2gps3k" / "labels.csv").exists():
        pytest.skip("shared data (../shared/data/im2gps3k) not present; set GEOLOCUS_DATA")
    return d


@pytest.fixture(scope="session")
def im2gps3k(shared_data: Path) -> Path:
    return shared_data / "im2gps3k"
