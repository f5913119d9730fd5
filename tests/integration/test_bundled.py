"""The bundled EfficientNet-Lite models: parity with the PyTorch reference, retrieval
quality on Wang-1000 under the project protocol, and freshness of the shipped features."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.engine import Engine
from cbir.config import Settings
from cbir.extractors import BUNDLED, build_extractor, bundled_weights_path, default_model, get_spec
from cbir.extractors.efficientnet_lite import converted_path, preprocess
from cbir.images import load_resized
from cbir.store_format import load_store, store_dir

ROOT = Path(__file__).resolve().parents[2]
PARITY_IMAGES = [0, 105, 233, 342, 456, 571, 689, 777, 845, 960]


@pytest.mark.parity
@pytest.mark.parametrize("name", BUNDLED)
def test_parity_with_pytorch_reference(name, collection_dir):
    torch = pytest.importorskip("torch", reason="make test installs torch==2.13.0 for this test")
    from efficientnet_lite_pytorch import EfficientNet

    spec = get_spec(name)
    ref = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(bundled_weights_path(spec)))
    ref.eval()
    ours = build_extractor(name)
    batch = np.stack([load_resized(collection_dir / f"{i}.jpg", spec.input_size) for i in PARITY_IMAGES])
    x = torch.from_numpy(np.ascontiguousarray(preprocess(batch.astype(np.float32)).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        expected = ref.extract_features(x).mean((2, 3)).numpy()
    got = ours.features(batch)
    assert got.shape == expected.shape == (len(PARITY_IMAGES), 1280)
    diff = np.abs(got - expected).max()
    assert diff < 1e-3, f"max abs difference {diff}"


def test_runtime_does_not_import_torch(session_tmp, collection_dir):
    code = (
        "import sys\n"
        "class Block:\n"  # any import of torch fails
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from cbir.extractors import build_extractor\n"
        "from cbir.images import load_resized\n"
        "e = build_extractor('efficientnet_lite0')\n"
        f"f = e.features(load_resized({str(collection_dir / '3.jpg')!r}, 224)[None])\n"
        "assert f.shape == (1, 1280) and f.max() > 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ, "KERAS_HOME": str(session_tmp / "kh-notorch")})
    # the converted weights were kept in the models cache for the next start
    assert list((session_tmp / "kh-notorch" / "models").glob("efficientnet_lite0*.weights.h5"))


def test_bundled_model_is_default_without_keras_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert default_model() == "efficientnet_lite0"


@pytest.fixture(scope="module")
def lite_engine():
    """The shipped Lite0 features (test_shipped_features_are_fresh re-extracts and compares them)."""
    return Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))


@pytest.mark.slow
def test_quality_lite0(lite_engine):
    cos = lite_engine.evaluate("efficientnet_lite0", "cosine")
    assert cos.n_queries == 1000
    assert cos.map >= 0.85 and cos.p_at_20 >= 0.94, cos.to_dict()
    bha = lite_engine.evaluate("efficientnet_lite0", "bhattacharyya")
    assert bha.map >= 0.83, bha.to_dict()


@pytest.mark.slow
def test_fusion_of_three_bundled_models():
    """On the shipped features (test_shipped_features_are_fresh re-extracts and compares them)."""
    engine = Engine(scan_collection(ROOT / "image.orig"), Settings(features_dir=ROOT / "features"))
    singles = {m: engine.evaluate(m, "cosine").map for m in BUNDLED}
    assert singles["efficientnet_lite1"] >= 0.87 and singles["efficientnet_lite2"] >= 0.865, singles
    for method in ("average", "rrf"):
        fused = engine.evaluate(list(BUNDLED), "cosine", method=method)
        assert fused.map >= 0.89, (method, fused.map)
        assert fused.map > max(singles.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_shipped_features_are_fresh(name, collection_dir):
    """Re-extract 10 images and compare with features/ so they never go stale silently."""
    store = load_store(store_dir(ROOT / "features", "image.orig", name))
    assert len(store) == 1000 and store.dim == 1280
    collection = scan_collection(collection_dir)
    ids = [str(i) for i in PARITY_IMAGES]
    sig = dict(zip(store.ids.tolist(), store.signatures.tolist()))
    current = dict(zip(collection.ids, collection.signatures()))
    assert all(sig[i] == current[i] for i in collection.ids), "an image changed since features/ was written"
    ex = build_extractor(name)
    batch = np.stack([load_resized(collection_dir / f"{i}.jpg", ex.input_size) for i in ids])
    np.testing.assert_allclose(ex.features(batch), store.aligned(ids), atol=2e-4)
