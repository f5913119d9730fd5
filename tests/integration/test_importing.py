"""Features computed elsewhere, imported as imported:NAME: every accepted format, matching by
id / relative path / file name, the restricted unpickler, and the imported model searched,
fused and evaluated like an extracted one."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.engine import Engine
from cbir.errors import CBIRError
from cbir.importing import FeatureImportError, import_features
from cbir.store_format import load_store
from tests.conftest import COLLECTION, ROOT, api_login

LITE0 = ROOT / "features" / "image.orig" / "efficientnet_lite0"


@pytest.fixture(scope="module")
def wang():
    store = load_store(LITE0)
    return scan_collection(COLLECTION), store.ids.tolist(), np.asarray(store.embeddings, dtype=np.float64)


def _features(tmp_path):
    features = tmp_path / "features"
    (features / "image.orig").mkdir(parents=True)
    os.symlink(LITE0, features / "image.orig" / "efficientnet_lite0")
    return features


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cbir-pwned",))


def test_every_format_gives_the_same_store(tmp_path, wang):
    collection, ids, vectors = wang
    files = {}
    np.savez(files.setdefault("npz", tmp_path / "f.npz"), ids=np.array(ids), vectors=vectors)
    structured = np.zeros(len(ids), dtype=[("id", "U16"), ("vector", "f4", (vectors.shape[1],))])
    structured["id"], structured["vector"] = ids, vectors
    np.save(files.setdefault("npy", tmp_path / "f.npy"), structured)
    frame = pd.DataFrame(vectors[:, :8], columns=[f"f{i}" for i in range(8)])
    frame.insert(0, "path", [f"{i}.jpg" for i in ids])  # by file name
    frame.to_csv(files.setdefault("csv", tmp_path / "f.csv"), index=False)
    pd.DataFrame({"id": ids, "vector": list(vectors)}).to_parquet(files.setdefault("parquet", tmp_path / "f.parquet"))
    with open(files.setdefault("pkl", tmp_path / "legacy.pkl"), "wb") as fh:  # the course project's format
        pickle.dump([(str(COLLECTION / f"{i}.jpg"), v.astype(np.float32)) for i, v in zip(ids, vectors)], fh)
    for kind, path in files.items():
        report = import_features(path, kind, collection, tmp_path / "features")
        store = load_store(report.path)
        assert report.model == f"imported:{kind}" and report.vectors == 1000 and not report.unmatched and not report.missing
        width = 8 if kind == "csv" else vectors.shape[1]
        rows = [ids.index(i) for i in store.ids.tolist()]
        np.testing.assert_allclose(store.embeddings, vectors[rows, :width].astype(np.float32), rtol=1e-6, err_msg=kind)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, wang):
    collection, _, _ = wang
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([("0.jpg", Evil())]))
    with pytest.raises(FeatureImportError, match=r"refused: the pickle asks for (posix|os)\.system"):
        import_features(tmp_path / "evil.pkl", "evil", collection, tmp_path / "features")
    assert not os.path.exists("/tmp/cbir-pwned")


def test_bad_files_are_one_clear_error(tmp_path, wang):
    collection, ids, vectors = wang
    cases = {
        "nan": ({"ids": np.array(ids[:3]), "vectors": np.array([[1.0, np.nan], [1, 2], [3, 4]])}, "NaN or infinity"),
        "dupes": ({"ids": np.array(["3", "3.jpg"]), "vectors": np.ones((2, 4))}, "two keys name the same image '3'"),
        "nomatch": ({"ids": np.array(["cat.png", "dog.png"]), "vectors": np.ones((2, 4))}, "no key of nomatch.npz matches"),
        "shape": ({"ids": np.array(ids[:3]), "vectors": np.ones((2, 4))}, r"one vector per key"),
        "noids": ({"names": np.array(ids[:3]), "vectors": np.ones((3, 4))}, "no ids array found"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(FeatureImportError, match=message):
            import_features(tmp_path / f"{name}.npz", name, collection, tmp_path / "features")
    with pytest.raises(FeatureImportError, match="name is 1-40"):
        import_features(tmp_path / "nan.npz", "Bad Name!", collection, tmp_path / "features")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FeatureImportError, match="unknown features file type .txt"):
        import_features(tmp_path / "f.txt", "txt", collection, tmp_path / "features")


def test_imported_model_is_searched_fused_evaluated_and_never_extracted(tmp_path, wang):
    collection, ids, vectors = wang
    keep = ids[:900]  # 100 images without imported features
    np.savez(tmp_path / "part.npz", ids=np.array([f"./{i}.jpg" for i in keep] + ["stranger.jpg"]),
             vectors=np.vstack([vectors[:900] ** 0.5, np.ones((1, vectors.shape[1]))]))
    features = _features(tmp_path)
    report = import_features(tmp_path / "part.npz", "sqrt", collection, features)
    assert (report.vectors, report.unmatched, len(report.missing)) == (900, ["stranger.jpg"], 100)
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features, var_dir=tmp_path / "var"))
    info = {m["name"]: m for m in engine.model_info()}
    assert info["imported:sqrt"]["searchable"] and info["imported:sqrt"]["indexed"] == 900 and info["imported:sqrt"]["dim"] == 1280
    hits = engine.search("imported:sqrt", image_id="412").per_model["imported:sqrt"].hits
    assert hits[0].label == "dinosaurs"
    fused = engine.search(["imported:sqrt", "efficientnet_lite0"], image_id="412", method="rrf")
    assert len(fused.inputs.ids) == 900  # the images both models have
    assert engine.evaluate(["imported:sqrt"]).n_queries == 900
    with pytest.raises(CBIRError, match="no extractor here"):
        engine.search("imported:sqrt", image=(COLLECTION / "412.jpg").read_bytes())
    out = subprocess.run([sys.executable, "-m", "cbir", "index", "-q", "-m", "imported:sqrt"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, CBIR_FEATURES_DIR=str(features)), timeout=120)
    assert out.returncode == 2 and "never re-extracted" in out.stderr


def test_cli_import(tmp_path, wang):
    _, ids, vectors = wang
    np.savez(tmp_path / "f.npz", ids=np.array(ids), vectors=vectors[:, :16])
    out = subprocess.run([sys.executable, "-m", "cbir", "import-features", str(tmp_path / "f.npz"), "--name", "tiny",
                          "--features", str(tmp_path / "features")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported 1000 vectors of d=16 as imported:tiny; 0 key(s) of the file matched no image")
    out = subprocess.run([sys.executable, "-m", "cbir", "import-features", str(tmp_path / "missing.npz"), "--name", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("cbir: error: no file")


@pytest.mark.redis
def test_api_import_sweep_and_csv(fresh_redis, tmp_path, wang):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import make_settings

    _, ids, vectors = wang
    features = _features(tmp_path)
    np.savez(tmp_path / "f.npz", ids=np.array(ids), vectors=vectors[:, :64])
    with TestClient(create_app(make_settings(fresh_redis.url, tmp_path, features_dir=features), warm_up=False)) as c:
        def auth(user, password):
            return api_login(c, user, password)

        researcher, student = auth("researcher", "umons2024"), auth("student", "multimedia")
        upload = {"file": ("f.npz", (tmp_path / "f.npz").read_bytes(), "application/octet-stream")}
        r = c.post("/api/import_features", data={"name": "head64"}, files=upload, headers=student)
        assert r.status_code == 403 and "researchers and admins" in r.json()["error"]
        r = c.post("/api/import_features", data={"name": "head64"}, files=upload, headers=researcher)
        assert r.status_code == 201 and r.json()["model"] == "imported:head64" and r.json()["dim"] == 64
        r = c.post("/api/import_features", data={"name": "x"}, files={"file": ("f.exe", b"MZ", "application/octet-stream")}, headers=researcher)
        assert r.status_code == 400 and "unknown features file type .exe" in r.json()["error"]
        assert "imported:head64" in [m["name"] for m in c.get("/api/models", headers=student).json()["models"]]
        r = c.post("/api/tune_weights", json={"models": ["imported:head64", "efficientnet_lite0"], "step": 0.5}, headers=student)
        assert r.status_code == 200 and len(r.json()["points"]) == 3 and r.json()["queries"] == 1000
        r = c.post("/api/tune_weights", json={"models": ["efficientnet_lite0"]}, headers=student)
        assert r.status_code == 422
        r = c.post("/api/search?format=csv", json={"image_id": "412", "models": ["imported:head64"], "top_k": 3}, headers=student)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.text.splitlines()[0].startswith("query_id,query_label") and len(r.text.splitlines()) == 4
        # only its owner (or an admin) deletes an imported model; its store and derived indexes go
        r = c.delete("/api/import_features/head64", headers=student)
        assert r.status_code == 403 and "only researcher or an admin" in r.json()["error"]
        assert (features / "image.orig" / "imported:head64" / "manifest.json").exists()
        r = c.delete("/api/import_features/head64", headers=researcher)
        assert r.status_code == 200 and r.json() == {"deleted": "imported:head64"}
        assert "imported:head64" not in [m["name"] for m in c.get("/api/models", headers=student).json()["models"]]
        assert not (features / "image.orig" / "imported:head64").exists()
        r = c.delete("/api/import_features/head64", headers=researcher)
        assert r.status_code == 400 and "no imported model imported:head64" in r.json()["error"]
