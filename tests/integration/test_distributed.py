"""Extraction on Dask distributed: a real LocalCluster of two worker processes over 64 real
Wang images, against in-process extraction; a worker killed mid-run; a driver killed and
resumed. Every process started here is stopped here, by its pid."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from cbir.collection import scan_collection
from cbir.distributed import SHARDS, DaskRunner, DistributedError, plan_chunks
from cbir.extraction import index_collection
from cbir.store_format import load_store
from tests.conftest import COLLECTION, ROOT

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """64 real images of 8 classes, one corrupt file, and their in-process features."""
    root = tmp_path_factory.mktemp("dask") / "images"
    root.mkdir()
    for cls in range(8):
        for i in range(8):
            shutil.copy(COLLECTION / f"{cls * 100 + i}.jpg", root / f"{cls * 100 + i}.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    reference = index_collection(scan_collection(root), MODEL, root.parent / "reference")
    return root, load_store(reference.path)


def _assert_same_store(store, reference):
    assert sorted(store.ids.tolist()) == sorted(reference.ids.tolist()) and len(set(store.ids.tolist())) == len(store)
    assert "corrupt" not in store
    rows = [reference.row_of(i) for i in store.ids.tolist()]
    assert float(np.abs(np.asarray(store.embeddings) - np.asarray(reference.embeddings)[rows]).max()) < 1e-5


def _kill_tree(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_chunks_are_keyed_by_what_determines_their_features():
    paths = [f"/c/{i}.jpg" for i in range(10)]
    a = plan_chunks(paths, ["s"] * 10, "m", "imagenet", 4)
    assert [c.rows for c in a] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [c.key for c in plan_chunks(paths, ["s"] * 10, "m", "imagenet", 4)] == [c.key for c in a]  # stable
    changed = plan_chunks(paths, ["s"] * 9 + ["t"], "m", "imagenet", 4)
    assert [c.key == d.key for c, d in zip(a, changed)] == [True, True, False]  # only the chunk that changed
    assert plan_chunks(paths, ["s"] * 10, "m", "none", 4)[0].key != a[0].key
    with pytest.raises(DistributedError, match="--workers N"):
        DaskRunner()


def test_local_cluster_equals_in_process_and_a_killed_worker_loses_nothing(tmp_path, images):
    root, reference = images
    collection = scan_collection(root)
    seen, killed = [], []
    with DaskRunner(workers=2, chunk=4) as runner:
        assert runner.threads == 1 and runner.dashboard.startswith("http://127.0.0.1:")
        with pytest.raises(DistributedError, match=r"Dask worker tls://127\.0\.0\.1:\d+ cannot read the collection at /nowhere"):
            runner.check_workers(Path("/nowhere"), [root / "0.jpg"])
        pids = list(runner.worker_pids().values())
        assert len(pids) == 2

        def progress(done, total):
            seen.append(done)
            if done >= 16 and not killed:  # a few chunks in: kill one worker outright
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

        report = index_collection(collection, MODEL, tmp_path / "features", progress=progress, runner=runner)
        assert killed  # and the run went on: its chunks were re-run on the other worker or the restarted one
        # an existing cluster by its address (what --scheduler does): its workers keep their own threads
        few = tmp_path / "few"
        few.mkdir()
        for f in sorted(root.glob("*.jpg"))[:6]:
            shutil.copy(f, few / f.name)
        with DaskRunner(scheduler=runner.cluster.scheduler_address, security=runner.security) as remote:
            assert remote.threads is None and remote.cluster is None
            small = index_collection(scan_collection(few), MODEL, tmp_path / "f2", runner=remote)
    store = load_store(small.path)
    rows = [reference.row_of(i) for i in store.ids.tolist()]
    assert len(store) == 6 and float(np.abs(np.asarray(store.embeddings) - np.asarray(reference.embeddings)[rows]).max()) < 1e-5
    assert report.images == 64 and report.extracted == 64 and [p for p, _ in report.failures] == [str(root / "corrupt.jpg")]
    assert seen[-1] == 65 and seen == sorted(seen)  # the bar is fed by finished chunks
    _assert_same_store(load_store(report.path), reference)
    assert not (report.path / SHARDS).exists()  # shards are removed once the store is written


def _tls_exchange(address: str, cert: tuple[Path, Path] | None) -> bytes:
    """What a TLS client that trusts any server gets from ``address`` after sending a few
    bytes, presenting ``cert`` (certificate, key files) or no certificate."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as conn:
        conn.sendall(b"\0" * 8)
        return conn.recv(1)


def test_the_local_scheduler_refuses_clients_without_the_run_key(tmp_path):
    """A plain scheduler ran any local user's `Client(addr).run(...)` as the indexing user;
    this one asks for the run's TLS key: plain TCP, no certificate and another key's
    certificate are all refused by the scheduler."""
    from distributed import Client, Security

    other = Security.temporary()
    (tmp_path / "cert.pem").write_text(other.tls_client_cert)
    (tmp_path / "key.pem").write_text(other.tls_client_key)
    with DaskRunner(workers=1) as runner:
        address = runner.cluster.scheduler_address
        with pytest.raises(OSError):
            intruder = Client(f"tcp://{address.split('://', 1)[1]}", timeout="3s")
            intruder.close()  # reached only when the scheduler let it in
        assert address.startswith("tls://127.0.0.1:")
        for cert in (None, (tmp_path / "cert.pem", tmp_path / "key.pem")):
            with pytest.raises((ssl.SSLError, ConnectionError)):  # an alert, or the connection closed in the handshake
                _tls_exchange(address, cert)
        assert list(runner.client.run(os.getuid).values()) == [os.getuid()]  # the run's own client works


def test_an_unreachable_scheduler_is_one_clear_line(tmp_path, images):
    root, _ = images
    out = subprocess.run([sys.executable, "-m", "cbir", "index", "-q", "--collection", str(root), "-m", MODEL,
                          "--scheduler", "tcp://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CBIR_FEATURES_DIR=str(tmp_path / "f2")))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("cbir: error: no Dask scheduler answers at tcp://127.0.0.1:9")


def test_driver_killed_mid_run_keeps_the_store_and_resumes_from_shards(tmp_path, images):
    root, reference = images
    features = tmp_path / "features"
    store_folder = features / root.name / MODEL
    first = index_collection(scan_collection(root), MODEL, features, extractor=None)  # a previous store
    before = load_store(first.path)
    for f in root.glob("*.jpg"):
        f.write_bytes(f.read_bytes() + b"\0")  # every image changed: all 64 to extract again
    env = dict(os.environ, CBIR_FEATURES_DIR=str(features), TF_CPP_MIN_LOG_LEVEL="3")
    argv = [sys.executable, "-m", "cbir", "index", "-q", "--collection", str(root), "-m", MODEL, "--workers", "2", "--chunk", "4"]
    driver = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree = set()
    try:
        deadline = time.time() + 240
        while len(list((store_folder / SHARDS).glob("*.npz"))) < 3:  # some chunks finished
            assert driver.poll() is None and time.time() < deadline, driver.stdout.read().decode()[-2000:]
            tree |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
            time.sleep(0.2)
        tree |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        driver.kill()
        driver.wait(30)
    finally:
        _kill_tree([driver.pid, *tree])
    store = load_store(store_folder)  # the previous version, whole
    np.testing.assert_array_equal(np.asarray(store.embeddings), np.asarray(before.embeddings))
    assert store.version == before.version
    shards = len(list((store_folder / SHARDS).glob("*.npz")))
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = int(out.stdout.split("resumed ")[1].split(" images")[0])
    assert shards and resumed in (4 * shards, 4 * shards - 3)  # what the killed run finished was not extracted again
    assert "64 extracted" in out.stdout
    _assert_same_store(load_store(store_folder), reference)
    assert not (store_folder / SHARDS).exists()
