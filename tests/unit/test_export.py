"""Exports: search results and evaluation reports as CSV / JSON, PR figures as HTML / PNG."""

import csv
import io
import json
import subprocess
import sys

import pytest

from cbir.config import Settings
from cbir.engine import Engine
from cbir.errors import CBIRError
from cbir.export import pr_html, pr_png, report_curves, reports_csv, search_csv, search_json, write_figure
from tests.conftest import COLLECTION, ROOT

LITE = ["efficientnet_lite0", "efficientnet_lite1"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=ROOT / "features", var_dir=tmp_path_factory.mktemp("var")))


def test_search_results_as_csv_and_json(engine):
    result = engine.search(LITE, top_k=5, image_id="412", method="weighted", weights={LITE[0]: 1, LITE[1]: 3}).to_dict()
    rows = list(csv.DictReader(io.StringIO(search_csv(result))))
    assert len(rows) == 15 and [r["list"] for r in rows[::5]] == [*LITE, "combined"]
    assert rows[0]["query_id"] == "412" and rows[0]["query_label"] == "dinosaurs" and rows[0]["method"] == "weighted"
    assert [r["id"] for r in rows[10:]] == [h["id"] for h in result["combined"]["results"]]
    back = json.loads(search_json({**result, "_inputs": object()}))  # the in-memory rows never leak into a file
    assert back["weights"] == {LITE[0]: 1, LITE[1]: 3} and "_inputs" not in back and back["top_k"] == 5


def test_reports_and_figures(engine, tmp_path):
    reports = [engine.evaluate(m).to_dict() for m in LITE]
    table = list(csv.reader(io.StringIO(reports_csv(reports))))
    assert table[0][:7] == ["name", "metric", "queries", "mAP", "P@10", "P@20", "R-precision"] and len(table[0]) == 22
    assert table[0][10] == "collection" and table[1][10] == "image.orig"  # every export names its collection
    assert table[0][11] == "centred" and table[1][11] == "True"  # and whether its vectors were centred
    assert [r[0] for r in table[1:]] == LITE and float(table[1][3]) == pytest.approx(reports[0]["mAP"])
    curves = report_curves(reports)
    assert pr_png(curves).startswith(b"\x89PNG\r\n\x1a\n")
    page = pr_html(curves, "PR of two models")
    assert "PR of two models" in page and "efficientnet_lite1" in page and "<script src=" not in page  # plotly inside: offline
    with pytest.raises(CBIRError, match=r"\.html or \.png"):
        write_figure(str(tmp_path / "pr.svg"), curves, "x")


@pytest.mark.slow
def test_cli_writes_every_format(tmp_path):
    run = [sys.executable, "-m", "cbir"]
    out = subprocess.run([*run, "evaluate", "-q", "-m", LITE[0], "--queries", "100", "--csv", str(tmp_path / "r.csv"),
                          "--plot", str(tmp_path / "pr.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.csv").read_text().startswith("name,metric") and (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
    out = subprocess.run([*run, "search", "--id", "3", "-m", LITE[0], "-k", "4", "--csv", str(tmp_path / "s.csv")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 5
    out = subprocess.run([*run, "evaluate", "-m", LITE[0], "--plot", "figure.svg"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == "cbir: error: --plot writes .html or .png, not figure.svg"
