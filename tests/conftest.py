from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "image.orig"

# Keep the tests' converted weights and state out of the work tree.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="cbir-tests-"))
os.environ.setdefault("KERAS_HOME", str(_SESSION_TMP / "models_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("CBIR_REDIS_URL", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def collection_dir() -> Path:
    return COLLECTION


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture
def small_collection(tmp_path) -> Path:
    """Twelve real Wang images in three classes, with a labels.csv."""
    root = tmp_path / "small"
    root.mkdir()
    lines = ["id,label"]
    for cls, start in (("africa", 0), ("buses", 300), ("dinosaurs", 400)):
        for i in range(start, start + 4):
            shutil.copy(COLLECTION / f"{i}.jpg", root / f"{i}.jpg")
            lines.append(f"{i},{cls}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def indexed_features(session_tmp):
    """Index image.orig with the three bundled models once per session (real inference)."""
    from cbir.collection import scan_collection
    from cbir.indexing import index_collection

    features = session_tmp / "features"
    collection = scan_collection(COLLECTION)
    reports = {}

    def get(model: str):
        if model not in reports:
            reports[model] = index_collection(collection, model, features, batch_size=32, threads=2)
        return features

    return get


@pytest.fixture
def rng():
    return np.random.default_rng(0)
