"""The weight sweep of fusion on the real Wang features."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cbir.config import Settings
from cbir.engine import Engine
from cbir.errors import CBIRError
from cbir.tuning import simplex_grid, sweep_weights
from tests.conftest import COLLECTION, ROOT

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=ROOT / "features", var_dir=tmp_path_factory.mktemp("var")))


def test_simplex_grid():
    two, three = simplex_grid(2, 0.1), simplex_grid(3, 0.1)
    assert two.shape == (11, 2) and three.shape == (66, 3)
    assert np.allclose(three.sum(1), 1.0) and (three >= 0).all() and len({tuple(p) for p in three.round(6)}) == 66
    assert simplex_grid(2, 0.5).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    for models, step, message in ((1, 0.1, "2 or 3 models"), (4, 0.1, "2 or 3 models"), (2, 0.3, "must divide 1"),
                                  (3, 0.01, "at most 2000")):
        with pytest.raises(CBIRError, match=message):
            simplex_grid(models, step)


def test_odd_steps_are_refused_in_plain_words():
    """5e-324 overflowed (1 / step is inf); 1e-300 put a 300-digit count in the message."""
    for step in (5e-324, 1e-300, 0.001, float("nan"), float("inf"), -0.1, 0.75):
        with pytest.raises(CBIRError, match=r"between 0\.01 and 0\.5") as caught:
            simplex_grid(2, step)
        assert len(str(caught.value)) < 100


def test_sweep_work_bound(engine):
    """points x models x labelled images² fused (x2 for RRF), plus the matrices: 3 x 2 x 1000² =
    6 million, plus 2 x 1280 x 1000² x 0.005 = 12.8 million for cosine, x40 for chi-square."""
    from cbir.errors import WorkLimitError
    from cbir.tuning import MAX_SWEEP_BYTES, check_sweep_work, grid_points, sweep_work

    two = [1280, 1280]
    assert sweep_work(grid_points(2, 0.5), two, 1000) == 6_000_000 + 12_800_000
    assert sweep_work(grid_points(2, 0.5), two, 1000, "rrf") == 12_000_000 + 12_800_000
    assert sweep_work(grid_points(2, 0.5), two, 1000, "weighted", "chi_square") == 6_000_000 + 512_000_000
    assert grid_points(3, 0.05) == 231 and grid_points(2, 0.01) == 101
    limited = Engine(COLLECTION, engine.settings.model_copy(update={"sweep_max_work": 15_000_000}))
    with pytest.raises(WorkLimitError, match=r"19 million .*15 million \(CBIR_SWEEP_MAX_WORK\)"):
        sweep_weights(limited, LITE[:2], "weighted", 0.5)
    default = Settings().sweep_max_work  # the page's finest grid on the Wang collection passes, RRF too
    three = [1280] * 3
    check_sweep_work(grid_points(3, 0.05), three, 1000, default, "rrf")
    check_sweep_work(grid_points(3, 0.05), three, 1000, default, "weighted", "chi_square")
    with pytest.raises(WorkLimitError):  # the review's 50 s chi-square sweep, made finer
        check_sweep_work(grid_points(3, 0.05), three, 1000, default, "rrf", "chi_square")
    with pytest.raises(WorkLimitError):
        check_sweep_work(grid_points(3, 0.025), three, 1000, default)
    images = int((MAX_SWEEP_BYTES / (5 * 8)) ** 0.5) + 1  # memory, whatever the work bound
    with pytest.raises(WorkLimitError, match="GiB"):
        check_sweep_work(3, three, images, 10**15)


@pytest.mark.slow
def test_cli_odd_step_is_one_line():
    out = subprocess.run([sys.executable, "-m", "cbir", "tune-weights", "-q", "-m", ",".join(LITE[:2]), "--step", "1e-300"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "between 0.01 and 0.5" in out.stderr and len(out.stderr) < 200, out.stderr


def test_sweep_endpoints_are_the_single_models_and_the_middle_is_equal_weights(engine):
    import time

    began = time.perf_counter()
    r = sweep_weights(engine, LITE[:2], "weighted", 0.5)
    assert 0 < r.seconds <= time.perf_counter() - began  # the sweep's own time (the block loop reused its timer)
    assert r.queries == 1000 and r.weights.tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    # weight 0: that model has no say (two paths: near ties may swap, so mAP within 1e-5)
    assert r.map[0] == pytest.approx(engine.evaluate(LITE[1]).map, abs=1e-5)
    assert r.map[2] == pytest.approx(engine.evaluate(LITE[0]).map, abs=1e-5)
    assert r.map[1] == pytest.approx(r.equal["mAP"]) == pytest.approx(engine.evaluate(LITE[:2], method="weighted").map)
    out = r.to_dict()
    assert out["best"]["mAP"] == pytest.approx(r.map.max(), abs=1e-6) and set(out["best"]["weights"]) == set(LITE[:2])
    with pytest.raises(CBIRError, match="ignores the weights"):
        sweep_weights(engine, LITE[:2], "average")


@pytest.mark.slow
def test_cli_three_models_rrf_json():
    out = subprocess.run([sys.executable, "-m", "cbir", "tune-weights", "-q", "-m", ",".join(LITE), "--method", "rrf",
                          "--step", "0.5", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["points"]) == 6 and data["method"] == "rrf" and data["queries"] == 1000
    assert data["best"]["mAP"] == max(p["mAP"] for p in data["points"])
    assert data["gain_over_equal"] == pytest.approx(data["best"]["mAP"] - data["equal_weights"]["mAP"], abs=1e-5)


def test_live_refusion_equals_a_new_search(engine):
    """What the Search page does when a slider moves: the rows of the last search, fused anew."""
    weights = {"efficientnet_lite0": 0.2, "efficientnet_lite1": 0.8}
    first = engine.search(LITE[:2], image_id="412", method="rrf")
    for method in ("weighted", "rrf", "average"):
        again = first.inputs.fuse(method, weights)
        fresh = engine.search(LITE[:2], image_id="412", method=method, weights=weights).fused
        assert [h.id for h in again.hits] == [h.id for h in fresh.hits]
        assert again.average_precision == pytest.approx(fresh.average_precision)
    assert "inputs" not in first.to_dict()  # the rows stay out of the JSON


def test_a_sweep_can_stop_inside_a_distance_matrix(engine):
    """The matrices are computed in blocks of rows with a cancellation point after each (a
    chi-square matrix takes ~15 s here): a client that goes stops the work within one block."""
    import math

    from cbir.tuning import MATRIX_ROWS

    calls = []
    sweep_weights(engine, LITE[:2], "weighted", 0.5, progress=lambda done, total: calls.append(done))
    blocks = math.ceil(1000 / MATRIX_ROWS)
    assert calls == [0] * (2 * blocks) + [1, 2, 3]


def test_a_sweep_names_each_model_once_whatever_its_spelling(engine):
    from cbir.errors import RequestError

    with pytest.raises(RequestError, match="2 to 3 different models"):
        sweep_weights(engine, [LITE[0], "EfficientNet-Lite0"], "weighted", 0.5)  # one model twice
    r = sweep_weights(engine, ["EfficientNet-Lite0", LITE[1]], "weighted", 0.5, metric="l2")
    assert r.models == LITE[:2] and r.metric == "euclidean"
