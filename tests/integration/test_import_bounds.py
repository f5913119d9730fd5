"""Imported features are bounded before anything is decompressed or allocated, every reader
error is one 400-class line, histogram metrics refuse negative features with an engine
error, and an imported store has one owner and one writer at a time.

Every bomb is built here, small on disk; its declared size is just over a default limit, so
that the code before these bounds imported it (tens of MB, not the issue's gigabytes)."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.config import Settings
from cbir.errors import CBIRError
from cbir.importing import FeatureImportError, ImportConflictError, ImportLimits, Importer, import_features
from cbir.store_format import load_store, store_lock
from tests.conftest import COLLECTION, ROOT, api_login

MiB = 1 << 20


@pytest.fixture(scope="module")
def collection():
    return scan_collection(COLLECTION)


def _peak_bytes(fn) -> tuple[int, object]:
    """(peak bytes traced by tracemalloc while ``fn`` runs, its exception or None); numpy
    reports its array buffers to tracemalloc, so a refused bomb's peak shows whether the
    declared arrays were allocated."""
    tracemalloc.start()
    try:
        fn()
        error = None
    except Exception as exc:  # noqa: BLE001 - returned to the test
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


# -- the bombs ------------------------------------------------------------------------
def _pickle_bytearray(tmp_path, n=1 << 24):
    """The issue's 44-byte pickle, [("0", bytearray(n))]: it calls bytearray(n)."""
    (tmp_path / "b.pkl").write_bytes(pickle.dumps([("0", _Allocates(n))], protocol=4))
    return tmp_path / "b.pkl"


class _Allocates:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return bytearray, (self.n,)


class _Reconstructs:
    """Pickles as numpy's own _reconstruct asked for an array of ``n`` bytes, never filled."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct
        return reconstruct, (np.ndarray, (self.n,), b"b")


def _pickle_reconstruct(tmp_path, n=1 << 24):
    (tmp_path / "r.pkl").write_bytes(pickle.dumps([("0", _Reconstructs(n))], protocol=4))
    return tmp_path / "r.pkl"


def _pickle_memo(tmp_path, rows=200, width=10):
    """200 rows all referencing one memoised list of ``width`` lists of 1000 floats."""
    inner = [float(i) for i in range(1000)]
    vector = [inner] * width
    (tmp_path / "m.pkl").write_bytes(pickle.dumps([(str(i), vector) for i in range(rows)], protocol=4))
    return tmp_path / "m.pkl"


def _npz_zeros(tmp_path, shape=(1000, 9000)):
    """Deflated zeros declaring ``shape`` float32 (36 MB decoded, 35 KB on disk)."""
    np.savez_compressed(tmp_path / "z.npz", ids=np.array([str(i) for i in range(shape[0])]), vectors=np.zeros(shape, np.float32))
    return tmp_path / "z.npz"


def _parquet_zeros(tmp_path, rows=200, width=9000):
    """A zstd Parquet of ``rows`` lists of ``width`` float64 zeros."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pa.array(np.zeros(rows * width))
    table = pa.table({"id": [str(i) for i in range(rows)], "vector": pa.FixedSizeListArray.from_arrays(values, width).cast(
        pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "z.parquet", compression="zstd")
    return tmp_path / "z.parquet"


def _csv_wide(tmp_path, rows=2, width=9000):
    """A CSV whose header declares ``width`` value columns (36 KB)."""
    lines = ["id," + ",".join(f"f{i}" for i in range(width))] + [f"{r}," + ",".join("0" * width) for r in range(rows)]
    (tmp_path / "w.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "w.csv"


def _pickle_ndarray_call(tmp_path, n=1 << 22):
    """48 bytes calling numpy.ndarray((n,), dtype('O')) through REDUCE: numpy allocates (and
    fills with None) n object pointers before anything can look at the result."""
    import struct

    data = (b"\x80\x02cnumpy\nndarray\n(J" + struct.pack("<i", n) + b"\x85cnumpy\ndtype\nX\x01\x00\x00\x00O\x85Rt"
            b"R.")
    (tmp_path / "o.pkl").write_bytes(data)
    return tmp_path / "o.pkl"


def _pickle_void_scalar(tmp_path, n=1 << 25):
    """65 bytes calling numpy's scalar(dtype('V<n>')): an n-byte scalar, allocated then read."""
    width = str(n).encode()
    data = (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX" + bytes([1 + len(width), 0, 0, 0]) + b"V" + width
            + b"\x85R\x85R.")
    (tmp_path / "v.pkl").write_bytes(data)
    return tmp_path / "v.pkl"


def _csv_quoted_header(tmp_path, width=9000):
    """A header whose first field holds a newline: its first physical line has one column,
    the logical record (what pandas reads) ``width`` + 1."""
    (tmp_path / "q.csv").write_text('id,"x\ny"' + "," * width + "\n0" + ",1" * (width + 1) + "\n")
    return tmp_path / "q.csv"


def _parquet_dictionary_ids(tmp_path, rows=300, chars=100_000):
    """300 ids of 100,000 characters, dictionary-encoded: about 1 KB on disk, 30 MB expanded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a" * chars] * rows, "vector": [[0.5] * 4] * rows})
    pq.write_table(table, tmp_path / "d.parquet", compression="zstd", use_dictionary=True)
    return tmp_path / "d.parquet"


def _npz_wide_ids(tmp_path, rows=200, chars=25_000):
    """200 ids of 25,000 characters, deflated: 20 MB of strings from a few KB."""
    np.savez_compressed(tmp_path / "i.npz", ids=np.array(["a" * chars] * rows), vectors=np.zeros((rows, 4)))
    return tmp_path / "i.npz"


BOMBS = {
    "pickle-ndarray-call": (_pickle_ndarray_call, r"calls numpy\.ndarray itself"),
    "pickle-void-scalar": (_pickle_void_scalar, r"CBIR_IMPORT_MAX_DIM"),
    "csv-quoted-header": (_csv_quoted_header, r"d = 9001; the limit is CBIR_IMPORT_MAX_DIM = 8192"),
    "parquet-dictionary-ids": (_parquet_dictionary_ids, r"over 4096 characters"),
    "npz-wide-ids": (_npz_wide_ids, r"characters wide; an id or path has at most 4096"),
    "pickle-bytearray": (_pickle_bytearray, r"refused: the pickle asks for builtins\.bytearray"),
    "pickle-memo": (_pickle_memo, r"CBIR_IMPORT_MAX_DIM"),
    "pickle-reconstruct": (_pickle_reconstruct, r"d = 16777216; the limit is CBIR_IMPORT_MAX_DIM"),
    "npz-deflated-zeros": (_npz_zeros, r"d = 9000; the limit is CBIR_IMPORT_MAX_DIM = 8192"),
    "parquet-zstd-zeros": (_parquet_zeros, r"CBIR_IMPORT_MAX_DIM = 8192"),
    "csv-wide": (_csv_wide, r"d = 9000; the limit is CBIR_IMPORT_MAX_DIM = 8192"),
}


@pytest.mark.parametrize("kind", BOMBS)
def test_a_bomb_is_refused_before_its_arrays_exist(tmp_path, collection, kind):
    make, message = BOMBS[kind]
    path = make(tmp_path)
    assert path.stat().st_size < 200_000
    peak, error = _peak_bytes(lambda: import_features(path, "bomb", collection, tmp_path / "features"))
    assert isinstance(error, FeatureImportError), f"{kind} was imported ({error!r})"
    assert error.http_status in (400, 413) and "\n" not in str(error)
    assert re.search(message, str(error)), str(error)
    assert peak < 4 * MiB, f"{kind}: {peak / MiB:.1f} MiB allocated before the refusal"
    assert not (tmp_path / "features").exists()


def test_memo_references_count_toward_the_element_cap(tmp_path, collection):
    """1000 rows of one memoised 1000-float list: 8 MB as float64 from a 9 KB pickle; with a
    1 MiB cap it is refused while unpickling (the rows reference, never copy, the list)."""
    inner = [float(i) for i in range(1000)]
    (tmp_path / "m.pkl").write_bytes(pickle.dumps([(str(i), inner) for i in range(1000)], protocol=4))
    limits = ImportLimits(max_dim=8192, max_rows=1000, max_bytes=MiB)
    peak, error = _peak_bytes(lambda: import_features(tmp_path / "m.pkl", "memo", collection, tmp_path / "f", limits=limits))
    assert isinstance(error, FeatureImportError) and error.http_status == 413
    assert "CBIR_IMPORT_MAX_BYTES" in str(error) and "1048576" in str(error)
    assert peak < 4 * MiB
    limits = ImportLimits(max_dim=8192, max_rows=1000, max_bytes=16 * MiB)  # within bounds it imports
    assert import_features(tmp_path / "m.pkl", "memo", collection, tmp_path / "f", limits=limits).vectors == 1000


def test_rows_and_bytes_limits_read_from_headers(tmp_path, collection):
    """A .npy header declaring 10**12 rows (24 bytes of data) and a .npz over the byte limit:
    both refused from the header, with the limit and its setting named."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}
    with open(tmp_path / "huge.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 24)
    peak, error = _peak_bytes(lambda: import_features(tmp_path / "huge.npy", "huge", collection, tmp_path / "f"))
    assert isinstance(error, FeatureImportError) and error.http_status == 413, repr(error)
    assert "10^12" in str(error) or "1000000000000" in str(error)
    assert "CBIR_IMPORT_MAX_ROWS" in str(error) and peak < 4 * MiB
    (tmp_path / "long.csv").write_text("id,a\n" + "".join(f"{i % 1000},1\n" for i in range(1500)))
    with pytest.raises(FeatureImportError, match=r"declares 1001 rows; the limit is CBIR_IMPORT_MAX_ROWS = 1000") as info:
        import_features(tmp_path / "long.csv", "long", collection, tmp_path / "f")  # parsing stops at the limit + 1
    assert info.value.http_status == 413
    np.savez(tmp_path / "wide.npz", ids=np.array([str(i) for i in range(1000)]), vectors=np.ones((1000, 300), np.float32))
    limits = ImportLimits(max_dim=8192, max_rows=1000, max_bytes=MiB)
    with pytest.raises(FeatureImportError, match=r"CBIR_IMPORT_MAX_BYTES = 1048576") as info:
        import_features(tmp_path / "wide.npz", "wide", collection, tmp_path / "f", limits=limits)
    assert info.value.http_status == 413


def test_limits_are_settings():
    s = Settings(_env_file=None)
    assert (s.import_max_dim, s.import_max_bytes, s.import_max_rows) == (8192, 1 << 30, 0)
    os.environ["CBIR_IMPORT_MAX_DIM"] = "16"
    try:
        assert Settings(_env_file=None).import_max_dim == 16
    finally:
        del os.environ["CBIR_IMPORT_MAX_DIM"]
    limits = ImportLimits.from_settings(s, collection_size=1000)
    assert (limits.max_dim, limits.max_rows, limits.max_bytes) == (8192, 1000, 1 << 30)  # 0 rows = the collection's size


def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zip(tmp_path, name, members: dict[str, bytes]):
    with zipfile.ZipFile(tmp_path / name, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return tmp_path / name


def test_every_reader_error_is_one_400_line(tmp_path, collection):
    ids = np.array([str(i) for i in range(3)])
    truncated = _npy_bytes(np.ones((1000, 8), np.float32))[:-100]
    cases = {
        "truncated.npy": (truncated, "truncated"),
        "truncated.npz": (_zip(tmp_path, "t.npz", {"ids.npy": _npy_bytes(ids), "vectors.npy": truncated[:2000]}), "truncated"),
        "objids.npz": (_zip(tmp_path, "o.npz", {"ids.npy": _object_npy(), "vectors.npy": _npy_bytes(np.ones((3, 4)))}), "object"),
        "notzip.npz": (b"hello, this is not a zip file at all", "not a .npz"),
        "npyasnpz.npz": (_npy_bytes(np.ones((3, 4))), "not a .npz"),
        "strings.npz": (_zip(tmp_path, "s.npz", {"ids.npy": _npy_bytes(ids), "vectors.npy": _npy_bytes(np.array([["a", "b"]] * 3))}),
                        "numbers"),
        "huge.npz": (_zip(tmp_path, "h.npz", {"ids.npy": _npy_bytes(ids), "vectors.npy": _header_only((10**15, 10**6))}), "CBIR_IMPORT_MAX"),
        "overflow.npz": (_zip(tmp_path, "x.npz", {"ids.npy": _npy_bytes(ids), "vectors.npy": _npy_bytes(np.full((3, 2), 1e300))}),
                         "float32 range"),
        "complex.npz": (_zip(tmp_path, "c.npz", {"ids.npy": _npy_bytes(ids), "vectors.npy": _npy_bytes(np.ones((3, 2), complex))}),
                        "complex"),
        "strings.parquet": (_parquet_strings(tmp_path), "numbers"),
        "garbage.parquet": (b"PAR1 not really", "not a readable Parquet"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content != path:
            content.rename(path)
        with pytest.raises(FeatureImportError, match=message) as info:
            import_features(path, "bad", collection, tmp_path / "features")
        assert 400 <= info.value.http_status < 500 and "\n" not in str(info.value), (name, str(info.value))
    assert not (tmp_path / "features").exists()


def _object_npy() -> bytes:
    """A .npy of object dtype (its data is a pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.array(["0", "1", "2"], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _header_only(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _parquet_strings(tmp_path):
    import pandas as pd

    pd.DataFrame({"id": ["0", "1"], "a": ["x", "y"], "b": ["1", "2"]}).to_parquet(tmp_path / "sp.parquet")
    return tmp_path / "sp.parquet"


def test_histogram_metrics_refuse_negative_features_with_an_engine_error():
    from cbir.distances import MetricError, pairwise_distances

    x = np.array([[0.5, 0.5], [-0.25, 1.25]])
    for metric in ("chi_square", "bhattacharyya"):
        with pytest.raises(MetricError, match="needs non-negative values") as info:
            pairwise_distances(x[:1], x, metric)
        assert isinstance(info.value, CBIRError) and info.value.http_status == 400
    assert pairwise_distances(x[:1], np.abs(x), "chi_square")[0, 0] == 0.0  # hand-worked: d(p, p) = 0


# -- owners and writers ---------------------------------------------------------------
def _small_npz(tmp_path, name, scale=1.0, d=8):
    np.savez(tmp_path / name, ids=np.array([str(i) for i in range(1000)]),
             vectors=np.random.default_rng(abs(int(scale * 10))).random((1000, d)) * scale)
    return tmp_path / name


def test_owner_and_replace(tmp_path, collection):
    features = tmp_path / "features"
    alice, bob, admin = Importer("alice"), Importer("bob"), Importer("root", admin=True)
    report = import_features(_small_npz(tmp_path, "a.npz"), "own", collection, features, by=alice)
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert manifest["imported_by"] == "alice" and manifest["imported_at"].endswith("Z") and not report.replaced
    with pytest.raises(ImportConflictError, match="imported:own exists .*alice.*replace") as info:
        import_features(_small_npz(tmp_path, "b.npz", 2.0), "own", collection, features, by=alice)
    assert info.value.http_status == 409
    with pytest.raises(ImportConflictError, match="only alice or an admin") as info:
        import_features(_small_npz(tmp_path, "b.npz", 2.0), "own", collection, features, by=bob, replace=True)
    assert info.value.http_status == 403
    assert import_features(tmp_path / "b.npz", "own", collection, features, by=alice, replace=True).replaced
    report = import_features(_small_npz(tmp_path, "c.npz", 3.0), "own", collection, features, by=admin, replace=True)
    assert json.loads((report.path / "manifest.json").read_text())["imported_by"] == "root"
    assert float(load_store(report.path).embeddings.max()) > 2.0


def test_eight_concurrent_imports_leave_one_complete_store(tmp_path, collection):
    """Eight threads import different files under one name: without replace exactly one
    wins and seven get 409; with replace all succeed one after another. Either way the store
    loads (every file its manifest names exists) and searches."""
    from cbir.distances import pairwise_distances

    features = tmp_path / "features"
    files = [_small_npz(tmp_path, f"r{i}.npz", 1.0 + i, d=64) for i in range(8)]

    def race(**kw):
        outcomes, barrier = [None] * 8, threading.Barrier(8)

        def run(i):
            barrier.wait()
            try:
                outcomes[i] = import_features(files[i], "race", collection, features, by=Importer("alice"), **kw)
            except Exception as exc:  # noqa: BLE001
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return outcomes

    outcomes = race()
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1 and all(isinstance(o, ImportConflictError) for o in outcomes if o not in winners), outcomes
    outcomes = race(replace=True)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    folder = winners[0].path
    store = load_store(folder)
    names = set(json.loads((folder / "manifest.json").read_text())["files"].values())
    assert {p.name for p in folder.glob("*.npy")} == names and len(store) == 1000
    assert pairwise_distances(store.embeddings[:1], store.embeddings, "cosine").shape == (1, 1000)


def test_index_and_import_share_one_writer_lock(tmp_path):
    """save_store (what `cbir index` and an import call) waits while another writer holds
    the store's lock."""
    from cbir.store import FeatureStore
    from cbir.store_format import save_store

    folder = tmp_path / "features" / "c" / "m"
    store = FeatureStore("m", "imagenet", np.ones((2, 3), np.float32), ["a", "b"], ["x", "y"])
    done = threading.Event()
    with store_lock(folder):
        t = threading.Thread(target=lambda: (save_store(store, folder), done.set()))
        t.start()
        assert not done.wait(0.5), "save_store wrote while another writer held the lock"
    t.join(30)
    assert done.is_set() and len(load_store(folder)) == 2


# -- the front ends -------------------------------------------------------------------
def test_cli_names_the_limit_and_needs_replace(tmp_path):
    path = _npz_zeros(tmp_path)
    env = dict(os.environ, CBIR_FEATURES_DIR=str(tmp_path / "features"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "cbir", "import-features", *map(str, a)], cwd=ROOT, capture_output=True,
                                   text=True, timeout=120, env=env)
    out = run(path, "--name", "bomb")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "CBIR_IMPORT_MAX_DIM = 8192" in out.stderr
    small = _small_npz(tmp_path, "s.npz", -1.0)  # negative values
    assert run(small, "--name", "neg").returncode == 0
    out = run(small, "--name", "neg")
    assert out.returncode == 2 and "--replace" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert run(small, "--name", "neg", "--replace").returncode == 0
    out = subprocess.run([sys.executable, "-m", "cbir", "search", "--id", "5", "-m", "imported:neg", "--metric", "chi_square"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "needs non-negative values" in out.stderr


@pytest.mark.redis
def test_api_bounds_owner_and_metric_error(fresh_redis, tmp_path):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import make_settings

    features = tmp_path / "features"
    with TestClient(create_app(make_settings(fresh_redis.url, tmp_path, features_dir=features), warm_up=False)) as c:
        def auth(user, password):
            return api_login(c, user, password)

        researcher, admin, student = auth("researcher", "umons2024"), auth("admin", "password123"), auth("student", "multimedia")
        c.post("/api/add_user", json={"username": "other", "password": "another-long-pass-1", "role": "researcher"}, headers=admin)
        other = auth("other", "another-long-pass-1")

        def upload(path, name, who, **data):
            return c.post("/api/import_features", data={"name": name, **data},
                          files={"file": (path.name, path.read_bytes(), "application/octet-stream")}, headers=who)

        r = upload(_npz_zeros(tmp_path), "bomb", researcher)
        assert r.status_code == 413 and "CBIR_IMPORT_MAX_DIM = 8192" in r.json()["error"]
        (tmp_path / "t.npy").write_bytes(_npy_bytes(np.ones((1000, 8), np.float32))[:-100])
        r = upload(tmp_path / "t.npy", "trunc", researcher)
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        neg = _small_npz(tmp_path, "neg.npz", -1.0)
        assert upload(neg, "neg", researcher).status_code == 201
        r = upload(neg, "neg", researcher)
        assert r.status_code == 409 and "replace" in r.json()["error"]
        assert upload(neg, "neg", other, replace="true").status_code == 403
        assert upload(neg, "neg", researcher, replace="true").status_code == 201
        assert upload(neg, "neg", admin, replace="true").status_code == 201
        log = [e for e in c.get("/api/auth_log", headers=admin).json()["entries"] if e["event"] == "features_imported"]
        assert [(e["actor"], e["username"], e["outcome"]) for e in log][:3] == [
            ("admin", "imported:neg", "replaced"), ("researcher", "imported:neg", "replaced"), ("researcher", "imported:neg", "created")]
        r = c.post("/api/search", json={"image_id": "5", "models": ["imported:neg"], "metric": "chi_square"}, headers=student)
        assert r.status_code == 400 and "needs non-negative values" in r.json()["error"]
        out = subprocess.run([sys.executable, "-m", "cbir", "import-features", str(neg), "--name", "neg", "--replace"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, CBIR_FEATURES_DIR=str(features), CBIR_REDIS_URL=fresh_redis.url))
        assert out.returncode == 0, out.stderr
        entry = next(e for e in c.get("/api/auth_log", headers=admin).json()["entries"] if e["event"] == "features_imported")
        assert entry["actor"].endswith("(command line)") and entry["outcome"] == "replaced"


def test_a_one_image_store_searches_without_a_500(tmp_path):
    """The query excluded, nothing is left to rank: an empty list, not an error."""
    from cbir.engine import Engine
    from cbir.ranking import rank_distances

    empty = rank_distances("m", np.array([np.inf]), ["7"], ["a"], "a", 5)
    assert empty.hits == [] and empty.pr_11 == [] and empty.average_precision is None  # nothing relevant: AP undefined
    (tmp_path / "one.csv").write_text("id,a,b\n7,0.1,0.2\n")
    features = tmp_path / "features"
    import_features(tmp_path / "one.csv", "one", scan_collection(COLLECTION), features)
    engine = Engine(COLLECTION, Settings(collection=COLLECTION, features_dir=features))
    response = engine.search("imported:one", image_id="7", top_k=3)
    assert response.per_model["imported:one"].hits == []
    with pytest.raises(CBIRError, match=r"--name one --replace"):  # the advice fits an imported model
        engine.search("imported:one", image_id="5", top_k=3)
