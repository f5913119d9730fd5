import json
import os
import subprocess
import sys

import pytest


def run(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "cbir", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "alexnet"], "unknown model 'alexnet'; choose one of: efficientnet_lite0, "),
        (["evaluate", "--model", "alexnet"], "or a stored recipe (MODEL~category, MODEL~near_duplicate) or imported "
                                             "features (imported:NAME); `cbir models` lists this collection's models"),
        (["search", "--id", "0", "--metric", "manhattan"], "unknown metric 'manhattan'"),
        (["index", "--collection", "/does/not/exist"], "does not exist"),
        (["search", "--id", "0", "--collection", "/does/not/exist"], "does not exist"),
        (["evaluate", "--compare", "colour=red"], "'colour=red' is not KEY=VALUE with KEY one of model, recipe, metric"),
        (["evaluate", "--compare", "model=alexnet"], "unknown model 'alexnet'"),
        (["explain", "7", "--id", "0", "--model", "alexnet"], "unknown model 'alexnet'"),
        (["explain", "7", "--id", "0", "--out", "why.jpg"], "--out writes a PNG picture: name it .png, not why.jpg"),
        (["explain", "7", "--image", "/tmp"], "/tmp is a folder: give an image file"),
    ],
)
def test_bad_input_one_line_non_zero(args, message):
    r = run(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_empty_collection(tmp_path):
    r = run("index", "--collection", str(tmp_path))
    assert r.returncode != 0 and "holds no images" in r.stderr


def test_evaluate_needs_labels(tmp_path, collection_dir, session_tmp):
    import shutil

    for i in (0, 1, 2):
        shutil.copy(collection_dir / f"{i}.jpg", tmp_path / f"{i}.jpg")
    env = {"CBIR_FEATURES_DIR": str(session_tmp / "cli-features")}
    assert run("index", "-q", "--collection", str(tmp_path), "-m", "efficientnet_lite0", env=env).returncode == 0
    r = run("evaluate", "-q", "--collection", str(tmp_path), "-m", "efficientnet_lite0", env=env)
    assert r.returncode != 0 and "has no labels" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_output_cut_short_by_its_reader_is_quiet():
    """`cbir evaluate | head -1`: the reader goes away before the output is written; the
    command ended with a BrokenPipeError traceback, and now ends quietly with status 1."""
    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "cbir", "evaluate", "-q", "-m", "efficientnet_lite0", "--queries", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone
    try:
        err = proc.stderr.read().decode()
        assert proc.wait(300) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_help_for_every_command():
    for cmd in ("index", "search", "evaluate", "models", "explain"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage: cbir" in r.stdout


def test_models_json():
    r = run("models", "--json")
    data = json.loads(r.stdout)
    names = {m["name"]: m for m in data["models"]}
    assert names["efficientnet_lite0"]["available"]
    assert set(names) >= {"vgg16", "resnet50", "mobilenet", "efficientnet_lite0"}


@pytest.mark.slow
def test_index_search_evaluate_small(small_collection, tmp_path):
    env = {"CBIR_FEATURES_DIR": str(tmp_path / "f")}
    r = run("index", "--collection", str(small_collection), "-m", "efficientnet_lite0", env=env)
    assert r.returncode == 0, r.stderr
    assert "12 extracted" in r.stdout and "images/s" in r.stdout
    assert "12/12" in r.stderr  # tqdm progress bar
    r = run("search", "--collection", str(small_collection), "-m", "efficientnet_lite0", "--id", "300", "-k", "3", "--json", env=env)
    data = json.loads(r.stdout)
    hits = data["models"]["efficientnet_lite0"]["results"]
    assert [h["label"] for h in hits] == ["buses"] * 3 and "300" not in [h["id"] for h in hits]
    out = tmp_path / "report.json"
    r = run("evaluate", "-q", "--collection", str(small_collection), "-m", "efficientnet_lite0", "--json", str(out), env=env)
    assert r.returncode == 0 and "mAP=" in r.stdout and "R-precision" in r.stdout and "buses" in r.stdout
    assert json.loads(out.read_text())["mAP"] > 0.9
    r = run("search", "--collection", str(small_collection), "-m", "efficientnet_lite0", "--image", str(small_collection / "401.jpg"), "-k", "2", env=env)
    assert r.returncode == 0 and "dinosaurs" in r.stdout


def test_weights_download_offline_fails_cleanly(tmp_path):
    r = run("weights", "download", "mobilenet", env={"KERAS_HOME": str(tmp_path)})
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "mobilenet_1_0_224_tf_no_top.h5" in r.stderr


def test_evaluate_a_tiny_collection_with_a_singleton_class(tmp_path):
    """Five Wang images, one alone in its class, with the shipped features: the singleton query
    is left out of every figure and the output says so; P@10 has k = 10 in its denominator."""
    import shutil

    from tests.conftest import COLLECTION, ROOT

    root = tmp_path / "image.orig"  # the shipped store's folder name
    root.mkdir()
    for i in (0, 1, 300, 301, 400):
        shutil.copy(COLLECTION / f"{i}.jpg", root / f"{i}.jpg")
    (root / "labels.csv").write_text("id,label\n0,africa\n1,africa\n300,buses\n301,buses\n400,dinosaurs\n")
    features = tmp_path / "features" / "image.orig"
    shutil.copytree(ROOT / "features" / "image.orig" / "efficientnet_lite0", features / "efficientnet_lite0",
                    ignore=shutil.ignore_patterns("map-*", "centred_*", "dba-*", "faiss*"))
    env = {"CBIR_FEATURES_DIR": str(tmp_path / "features"), "CBIR_COLLECTION": str(root)}  # its own default image.orig
    out = tmp_path / "report.json"
    r = run("evaluate", "-q", "--collection", str(root), "-m", "efficientnet_lite0", "--json", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert "queries=5 (scored 4, 1 left out: singleton classes)" in r.stdout and "note: 1 of 5 queries left out" in r.stdout
    report = json.loads(out.read_text())
    assert report["singleton_queries_left_out"] == 1 and report["queries_scored"] == 4 and report["mAP"] == 1.0
    assert report["P@10"] == 0.1 and "dinosaurs" not in report["per_class_AP"]


@pytest.mark.slow
def test_a_named_collection_from_add_to_remove(small_collection, tmp_path):
    """`cbir collections add` names a folder; every command then takes the name (stores under
    features/<name>/), `list` shows it indexed, `remove` takes its stores and leaves its images."""
    env = {"CBIR_FEATURES_DIR": str(tmp_path / "features"), "CBIR_VAR_DIR": str(tmp_path / "var")}
    added = run("collections", "add", "wang-12", str(small_collection), env=env)
    assert added.returncode == 0 and "added wang-12" in added.stdout, added.stderr
    indexed = run("index", "-q", "--collection", "wang-12", "-m", "efficientnet_lite0", env=env)
    assert indexed.returncode == 0, indexed.stderr
    assert (tmp_path / "features" / "wang-12" / "efficientnet_lite0" / "manifest.json").exists()
    found = run("search", "--collection", "wang-12", "--id", "300", "-k", "3", "--json", env=env)
    hits = json.loads(found.stdout)["models"]["efficientnet_lite0"]["results"]
    assert [h["label"] for h in hits] == ["buses"] * 3, found.stderr
    listed = {r["name"]: r for r in json.loads(run("collections", "list", "--json", env=env).stdout)}
    assert listed["wang-12"]["images"] == 12 and listed["wang-12"]["models"] == ["efficientnet_lite0"]
    assert listed["image.orig"]["default"]
    removed = run("collections", "remove", "wang-12", env=env)
    assert removed.returncode == 0 and not (tmp_path / "features" / "wang-12").exists()
    assert len(list(small_collection.glob("*.jpg"))) == 12  # a server folder's images stay
    gone = run("search", "--collection", "wang-12", "--id", "300", env=env)
    assert gone.returncode == 2 and "unknown collection 'wang-12'" in gone.stderr


def test_evaluate_compare_says_whether_a_difference_is_significant(tmp_path):
    """--compare evaluates a second run on the same queries and judges the paired difference:
    αQE against plain cosine on Lite0 (+0.049 mAP here), RRF of Lite0+1 (+0.029)."""
    out = tmp_path / "report.json"
    r = run("evaluate", "--quiet", "--compare", "rerank=aqe", "--compare", "model=efficientnet_lite0,efficientnet_lite1 method=rrf",
            "--json", str(out), "--csv", str(tmp_path / "r.csv"))
    assert r.returncode == 0, r.stderr
    body = json.loads(out.read_text())
    gain, fused = body["comparisons"]
    assert gain["report"]["name"].startswith("efficientnet_lite0 + αQE") and gain["queries_paired"] == body["queries_scored"]
    assert fused["report"]["name"] == "rrf(efficientnet_lite0+efficientnet_lite1)"
    for c in (gain, fused):
        assert abs(c["delta_mAP"] - (c["report"]["mAP"] - body["mAP"])) < 2e-6  # the mean paired difference is the mAP gap
        assert c["ci95"][0] < c["delta_mAP"] < c["ci95"][1] and c["significant"] and c["p_value"] < 0.001
    assert r.stdout.count("significantly better") == 2
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 4  # a header and a row per run


@pytest.mark.parametrize("compare, words", [
    ("metric=cosine", "changes nothing of the evaluation it is compared with"),  # the same run: Δ 0 said as a finding
    ("normalisation=zscore", "changes nothing"),  # one model: nothing to normalise
    ("depth=0", "depth must be between 1 and 100,000, got 0"),  # was a traceback
    ("rerank=bogus", "unknown re-ranking method 'bogus'"),  # was "rerank_n is a whole number"
    ("metric=chi2 rerank=aqe", "cosine"),  # refused before the baseline ran, not after
    ("recipe=avg,pca=²", "'pca=²' is not one of"),  # int('²') was a traceback
    ("recipe=avg,scales=2+1.9+1.8,flip", "the most is 8"),  # hours of CPU in one request
    # a weight that overflows the weighted sum (figures with no meaning), refused before the baseline ran
    ("model=efficientnet_lite0,efficientnet_lite1 method=weighted weights=1e308,1", "0 or between 1e-06 and 1e+06"),
])
def test_a_bad_compare_is_one_line_before_any_work(compare, words):
    r = run("evaluate", "--quiet", "--compare", compare)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0] and r.stdout == "", (r.stdout, r.stderr)
