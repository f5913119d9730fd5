import subprocess
import sys

import numpy as np
import pytest

from cbir.errors import UnknownNameError, WeightsUnavailableError
from cbir.extractors import MODELS, build_extractor, get_spec, model_status
from cbir.images import load_resized


@pytest.mark.slow
def test_import_cbir_does_not_import_keras():
    code = (
        "import sys, cbir, cbir.engine, cbir.request, cbir.ranking, cbir.cli, cbir.extractors\n"
        "bad = [m for m in ('keras', 'tensorflow', 'torch', 'streamlit') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="efficientnet_lite0, efficientnet_lite1"):
        get_spec("alexnet")


def test_missing_imagenet_weights_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    ok, reason = model_status("vgg16")
    assert not ok
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in reason and str(tmp_path) in reason
    assert "cbir weights download" in reason


@pytest.mark.slow
def test_missing_weights_raise_naming_file_and_folder(monkeypatch, tmp_path):
    """No network here: Keras cannot download, the error names the file and folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"mobilenet_1_0_224_tf_no_top\.h5"):
        build_extractor("mobilenet", "imagenet")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.family == "keras"])
def test_keras_models_random_init_on_real_images(name, collection_dir):
    ex = build_extractor(name, "none")
    batch = np.stack([load_resized(collection_dir / f"{i}.jpg", ex.input_size) for i in (0, 150, 420)])
    f = ex.features(batch)
    assert f.shape == (3, MODELS[name].dim)
    assert f.dtype == np.float32 and np.isfinite(f).all()
    assert (f >= 0).all()  # ReLU + average pooling
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)  # random-init activations can be tiny
    assert np.abs(unit[0] - unit[1]).max() > 1e-3


@pytest.mark.slow
def test_weights_file_path(tmp_path, collection_dir):
    ex = build_extractor("mobilenet", "none")
    path = tmp_path / "mine.weights.h5"
    ex.model.save_weights(path)
    again = build_extractor("mobilenet", str(path))
    batch = load_resized(collection_dir / "5.jpg", 224)[None]
    np.testing.assert_allclose(again.features(batch), ex.features(batch), atol=1e-5)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_extractor("mobilenet", str(tmp_path / "absent.h5"))
