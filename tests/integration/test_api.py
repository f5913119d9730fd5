"""The REST sidecar against a real redis-server, real images and the shipped features."""

import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbir.request import parse_search
from cbir.api.app import create_app
from tests.conftest import COLLECTION, RedisServer, api_login, assert_same_ranking, make_settings

pytestmark = pytest.mark.redis


@pytest.fixture
def client(fresh_redis, tmp_path):
    app = create_app(make_settings(fresh_redis.url, tmp_path), warm_up=False)
    with TestClient(app) as c:
        yield c


login = api_login


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["redis"] is True
    assert "efficientnet_lite0" in r.json()["models_searchable"]


def test_auth_rules(client):
    r = client.post("/api/search", json={"image_id": "1"})
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    r = client.post("/api/search", json={"image_id": "1"}, headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and "expired or invalid" in r.json()["error"]
    r = client.post("/api/login", json={"username": "student", "password": "wrong"})
    assert r.status_code == 401 and r.json() == {"error": "wrong username or password"}
    student = login(client, "student", "multimedia")
    r = client.post("/api/add_user", json={"username": "newbie", "password": "newbie-climbs-K2!"}, headers=student)
    assert r.status_code == 403 and "only admins" in r.json()["error"]
    admin = login(client, "admin", "password123")
    r = client.post("/api/add_user", json={"username": "newbie", "password": "newbie-climbs-K2!", "role": "researcher"}, headers=admin)
    assert r.status_code == 201 and r.json()["user"]["role"] == "researcher"
    r = client.post("/api/add_user", json={"username": "newbie", "password": "newbie-climbs-K2!"}, headers=admin)
    assert r.status_code == 400 and "already exists" in r.json()["error"]
    newbie = login(client, "newbie", "newbie-climbs-K2!")
    assert client.get("/api/stats", headers=newbie).status_code == 200
    log = client.get("/api/auth_log", headers=admin).json()["entries"]
    assert any(e["event"] == "user_created" and e["username"] == "newbie" and e["actor"] == "admin" for e in log)
    assert client.get("/api/auth_log", headers=student).status_code == 403
    # logout revokes the token
    assert client.post("/api/logout", headers=newbie).status_code == 200
    assert client.get("/api/stats", headers=newbie).status_code == 401


def test_expired_token(client):
    client.app.state.users.token_ttl = 1
    headers = login(client)
    time.sleep(2.1)
    r = client.get("/api/stats", headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["error"]


def test_lockout_429(client):
    for _ in range(4):
        assert client.post("/api/login", json={"username": "user1", "password": "x"}).status_code == 401
    r = client.post("/api/login", json={"username": "user1", "password": "x"})
    assert r.status_code == 429 and "too many failed logins" in r.json()["error"]
    assert int(r.headers["retry-after"]) > 800
    r = client.post("/api/login", json={"username": "user1", "password": "demo123"})
    assert r.status_code == 429


def test_search_by_id(client):
    h = login(client)
    r = client.post("/api/search", json={"image_id": "305", "models": ["efficientnet_lite0"], "top_k": 10}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["models"]["efficientnet_lite0"]
    assert len(res["results"]) == 10 and res["results"][0]["rank"] == 1
    assert "305" not in [x["id"] for x in res["results"]]
    assert all(x["label"] == "buses" and x["relevant"] for x in res["results"][:5])
    assert res["precision_at_k"] >= 0.9 and 0 < res["recall_at_k"] <= 10 / 99 and 0 < res["average_precision"] <= 1
    assert res["relevant_in_collection"] == 99
    assert len(res["pr_curve"]["recall"]) > 10 and len(res["pr_11_point"]) == 11
    assert res["seconds"] > 0 and body["cached"] is False
    scores = [x["score"] for x in res["results"]]
    assert scores == sorted(scores)
    again = client.post("/api/search", json={"image_id": "305", "models": ["efficientnet_lite0"], "top_k": 10}, headers=h).json()
    assert again["cached"] is True and again["models"] == body["models"]
    stats = client.get("/api/stats", headers=h).json()
    assert stats["searches_performed"] == 2 and stats["cache_hit_rate"] > 0 and stats["images"] == 1000
    # include the query
    r = client.post("/api/search", json={"image_id": "305", "models": ["efficientnet_lite0"], "top_k": 1, "exclude_query": False}, headers=h)
    assert r.json()["models"]["efficientnet_lite0"]["results"][0]["id"] == "305"


def test_search_combined(client):
    h = login(client)
    body = {"image_id": "712", "models": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], "method": "rrf", "top_k": 20}
    r = client.post("/api/search_combined", json=body, headers=h)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data["models"]) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert data["method"] == "rrf" and len(data["combined"]["results"]) == 20
    assert data["combined"]["precision_at_k"] >= 0.9
    w = client.post("/api/search_combined", json={**body, "method": "weighted", "weights": {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 0}}, headers=h).json()
    # all weight on Lite1: the fused ranking is Lite1's ranking
    assert_same_ranking(w["combined"]["results"], w["models"]["efficientnet_lite1"]["results"])
    bad = client.post("/api/search_combined", json={**body, "method": "weighted", "weights": {"efficientnet_lite0": -1}}, headers=h)
    assert bad.status_code == 422 and "non-negative" in bad.json()["error"]
    one = client.post("/api/search_combined", json={**body, "models": ["efficientnet_lite0"]}, headers=h)
    assert one.status_code == 422
    # the score normalisation of an average fusion is a choice, echoed in the answer (RRF reads ranks: none)
    assert data["normalisation"] is None
    z = client.post("/api/search_combined", json={**body, "method": "average", "normalisation": "zscore"}, headers=h).json()
    assert z["normalisation"] == "zscore" and z["combined"]["precision_at_k"] >= 0.9
    bad = client.post("/api/search_combined", json={**body, "method": "average", "normalisation": "softmax"}, headers=h)
    assert bad.status_code == 422 and "normalisation" in bad.json()["error"]


@pytest.mark.parametrize(
    "payload, status, message",
    [
        ({"image_id": "nope"}, 404, "no image with id"),
        # the registered models, then the other names a collection has, and where to list them
        ({"image_id": "1", "models": ["alexnet"]}, 422, "or imported features (imported:NAME); GET /api/models lists this collection's models"),
        ({"image_id": "1", "metric": "manhattan"}, 422, "metric"),
        ({"image_id": "1", "top_k": 0}, 422, "top_k"),
        ({"image_id": "1", "models": ["vgg16"]}, 400, "cbir index"),
        ({}, 422, "exactly one query"),
        ({"image_id": "1", "surprise": 1}, 422, "surprise"),
        ({"image_id": "1", "top_k": True}, 422, "top_k"),
        ({"image_id": "1", "top_k": 2.5}, 422, "top_k"),
        ({"image_id": "1", "depth": 0, "backend": "faiss"}, 422, "depth"),
        ({"image_id": "1", "backend": "annoy"}, 422, "unknown index backend"),
        ({"image_id": "1", "rerank": {"method": "aqe"}, "metric": "l2"}, 422, "choose cosine"),
    ],
)
def test_search_bad_input(client, payload, status, message):
    r = client.post("/api/search", json=payload, headers=login(client))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_every_spelling_the_cli_accepts_the_api_accepts(client):
    """Names go through the engine's one parser: metric aliases, any case of a backend or a
    model, weights keyed by another spelling of a model (the API used to refuse them)."""
    h = login(client)
    plain = client.post("/api/search", json={"image_id": "412", "metric": "euclidean", "backend": "exact"}, headers=h).json()
    alias = client.post("/api/search", json={"image_id": "412", "metric": "L2", "backend": "EXACT", "models": ["EfficientNet-Lite0"]}, headers=h)
    assert alias.status_code == 200, alias.text
    assert alias.json()["metric"] == "euclidean" and alias.json()["models"] == plain["models"]
    weighted = client.post("/api/search_combined", json={"image_id": "412", "models": ["EfficientNet-Lite0", "efficientnet_lite1"],
                                                         "method": "weighted", "weights": {"EfficientNet-Lite0": 1, "efficientnet_lite1": 2}}, headers=h)
    assert weighted.status_code == 200 and weighted.json()["weights"] == {"efficientnet_lite0": 1.0, "efficientnet_lite1": 2.0}, weighted.text


def _jpeg_bytes(i=42):
    return (COLLECTION / f"{i}.jpg").read_bytes()


def test_upload_search_and_bad_uploads(client):
    h = login(client)
    r = client.post("/api/search", files={"image": ("q.jpg", _jpeg_bytes(420), "image/jpeg")}, data={"models": "efficientnet_lite0", "top_k": "5"}, headers=h)
    assert r.status_code == 200, r.text
    data = r.json()
    hits = data["models"]["efficientnet_lite0"]["results"]
    assert hits[0]["id"] == "420" and hits[0]["score"] < 1e-3  # the same picture is found first
    assert {"decode", "extract:efficientnet_lite0", "search:efficientnet_lite0"} <= set(data["timings"])

    buf = io.BytesIO()
    Image.new("L", (8000, 6250)).save(buf, "PNG")  # 50 megapixels, a few hundred KB
    big_pixels = buf.getvalue()
    cases = {
        "corrupt": (b"\xff\xd8\xff\xe0" + b"\x13" * 5000, 400),
        "truncated": (_jpeg_bytes()[:4000], 400),
        "zero-byte": (b"", 400),
        "50-megapixel": (big_pixels, 413),
        "not an image": (b"%PDF-1.4 not a picture at all" * 10, 415),
        "oversized": (b"\xff" * (11 * 2**20), 413),
    }
    for name, (payload, status) in cases.items():
        r = client.post("/api/search", files={"image": ("q.jpg", payload, "image/jpeg")}, headers=h)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["error"], name
    # still answering afterwards
    assert client.get("/health").status_code == 200
    r = client.post("/api/search", files={"image": ("q.jpg", _jpeg_bytes(7), "image/jpeg")}, headers=h)
    assert r.status_code == 200
    r = client.post("/api/search", content=b"x", headers={**h, "content-type": "text/plain"})
    assert r.status_code == 415


def test_images(client):
    h = login(client)
    page = client.get("/api/available_images?offset=95&limit=10", headers=h).json()
    assert page["total"] == 1000 and len(page["items"]) == 10
    assert page["items"][0] == {"id": "95", "label": "africa", "url": "/api/images/95"}
    beach = client.get("/api/available_images?label=beach&limit=1000", headers=h).json()
    assert beach["total"] == 100
    found = client.get("/api/available_images?q=BUS&offset=10&limit=3", headers=h).json()
    assert found["total"] == 100 and [i["id"] for i in found["items"]] == ["310", "311", "312"]
    assert client.get("/api/available_images?q=" + "x" * 201, headers=h).status_code == 422
    r = client.get("/api/images/95", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == (COLLECTION / "95.jpg").read_bytes()
    t = client.get("/api/images/95?thumb=64", headers=h)
    assert max(Image.open(io.BytesIO(t.content)).size) == 64
    for evil in ("../pyproject.toml", "..%2Fpyproject.toml", "/etc/passwd", "labels"):
        r = client.get(f"/api/images/{evil}", headers=h)
        assert r.status_code == 404 and "error" in r.json()
    assert client.get("/api/images/95").status_code == 401


def test_models_endpoint(client):
    data = client.get("/api/models", headers=login(client)).json()
    assert data["default"] == "efficientnet_lite0"
    vgg = next(m for m in data["models"] if m["name"] == "vgg16")
    assert vgg["available"] is False and "cbir weights download" in vgg["reason"]


def test_unknown_route_is_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_redis_outage_and_recovery(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = create_app(make_settings(server.url, tmp_path), warm_up=False)
        with TestClient(app) as c:
            h = login(c)
            ok = c.post("/api/search", json={"image_id": "12", "models": ["efficientnet_lite0"]}, headers=h)
            assert ok.status_code == 200
            server.stop()
            for image_id in ("13", "12"):  # a new search and a formerly cached one
                r = c.post("/api/search", json={"image_id": image_id, "models": ["efficientnet_lite0"]}, headers=h)
                assert r.status_code == 200, r.text
                assert r.json()["cached"] is False and len(r.json()["models"]["efficientnet_lite0"]["results"]) == 10
            # a token never seen by this process cannot be checked without Redis
            r = c.post("/api/search", json={"image_id": "13"}, headers={"Authorization": "Bearer unknown"})
            assert r.status_code == 503 and "unavailable" in r.json()["error"]
            assert c.get("/api/stats", headers=h).json()["redis"] is False
            r = c.post("/api/login", json={"username": "researcher", "password": "umons2024"})
            assert r.status_code == 503 and "unavailable" in r.json()["error"]
            assert c.get("/health").status_code == 200
            assert c.get("/ready").status_code == 503
            # the engine path itself keeps working with the cache bypassed
            svc = c.app.state.service
            out = svc.search(parse_search(["efficientnet_lite0"], image_id="14")).body
            assert out["cached"] is False and len(out["models"]["efficientnet_lite0"]["results"]) == 10
            server.start()
            deadline = time.time() + 30  # leaves the loop on the first success
            while time.time() < deadline:
                r = c.post("/api/login", json={"username": "researcher", "password": "umons2024"})
                if r.status_code == 200:
                    break
                time.sleep(0.3)
            assert r.status_code == 200
            h = {"Authorization": f"Bearer {r.json()['access_token']}"}
            assert c.post("/api/search", json={"image_id": "13", "models": ["efficientnet_lite0"]}, headers=h).status_code == 200
            assert c.get("/ready").status_code == 200
    finally:
        server.stop()


def test_rerank_and_feedback_fields(client):
    h = login(client)
    base = {"image_id": "55", "models": ["efficientnet_lite0"], "top_k": 20}
    plain = client.post("/api/search", json=base, headers=h).json()["models"]["efficientnet_lite0"]
    r = client.post("/api/search", json={**base, "rerank": {"method": "dba_aqe", "n": 10, "alpha": 3}}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["rerank"] == {"method": "dba_aqe", "n": 10, "alpha": 3.0}
    assert r.json()["models"]["efficientnet_lite0"]["average_precision"] > plain["average_precision"]
    fb = [{"relevant": [x["id"] for x in plain["results"] if x["relevant"]], "non_relevant": [x["id"] for x in plain["results"] if not x["relevant"]]}]
    r = client.post("/api/search_combined", json={**base, "models": ["efficientnet_lite0", "efficientnet_lite1"], "method": "rrf", "feedback": fb}, headers=h)
    assert r.status_code == 200 and r.json()["feedback_rounds"] == 1
    r = client.post("/api/search", json={**base, "metric": "euclidean", "rerank": {"method": "aqe"}}, headers=h)
    assert r.status_code == 422 and "cosine" in r.json()["error"]
    r = client.post("/api/search", json={**base, "rerank": {"method": "aqe", "n": 0}}, headers=h)
    assert r.status_code == 422
    # multipart: rerank as JSON text
    r = client.post("/api/search", files={"image": ("q.jpg", _jpeg_bytes(55), "image/jpeg")},
                    data={"models": "efficientnet_lite0", "rerank": '{"method": "aqe"}'}, headers=h)
    assert r.status_code == 200 and r.json()["rerank"]["method"] == "aqe"
    spec = client.get("/openapi.json").json()
    props = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"rerank", "feedback"} <= set(props)


def test_evaluate_route_reproduces_the_cli_and_counts_singleton_queries(client):
    h = login(client)
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"]}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    # centred on the collection's mean by default; the stored vectors as they are on request (README figures, 1e-3: CPUs differ)
    assert body["centred"] is True and body["mAP"] == pytest.approx(0.8771, abs=1e-3) and body["P@10"] == pytest.approx(0.9608, abs=1e-3)
    assert body["R-precision"] == pytest.approx(0.8250, abs=1e-3)
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "centre": False, "compare": [{"centre": True}]}, headers=h)
    raw = r.json()
    assert r.status_code == 200 and raw["centred"] is False and raw["name"].endswith("(not centred)"), r.text
    assert raw["mAP"] == pytest.approx(0.8556, abs=1e-3) and raw["P@10"] == pytest.approx(0.9574, abs=1e-3)
    assert raw["comparisons"][0]["delta_mAP"] == pytest.approx(body["mAP"] - raw["mAP"], abs=1e-5)
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "metric": "chi2", "compare": [{"centre": False}]}, headers=h)
    assert r.status_code == 422 and "changes nothing" in r.json()["error"]  # chi-square is never centred
    assert body["queries"] == body["queries_scored"] == 1000 and body["singleton_queries_left_out"] == 0
    assert body["tie_rule"] == "stable" and "ties" in body and "P@k = relevant in the first k / k" in body["protocol"]
    # one image relabelled into a class of its own: left out of the figures and said so
    collection = client.app.state.service.engine.collection
    row = collection.index_of("0")
    label, collection.labels[row] = collection.labels[row], "a class of one"
    try:
        r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "ties": "average"}, headers=h)
    finally:
        collection.labels[row] = label
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["singleton_queries_left_out"] == 1 and body["queries"] == 1000 and body["queries_scored"] == 999
    assert "a class of one" not in body["per_class_AP"] and any("left out" in n for n in body["notes"])
    assert body["tie_rule"] == "average"
    assert client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "ties": "random"}, headers=h).status_code == 422


def test_evaluate_route_compares_runs_on_the_same_queries(client):
    """``compare``: each run changes some settings of the first; the answer says whether each
    differs significantly, paired by query (as ``cbir evaluate --compare``)."""
    h = login(client)
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "compare": [
        {"models": ["efficientnet_lite0", "efficientnet_lite1"]},
        {"models": ["efficientnet_lite0", "efficientnet_lite1"], "normalisation": "rank"}]}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    fused, ranked = body["comparisons"]
    assert fused["report"]["name"] == "average(efficientnet_lite0+efficientnet_lite1)" and fused["significant"]
    assert ranked["report"]["name"] == "average(efficientnet_lite0+efficientnet_lite1) [rank]"
    for c in (fused, ranked):
        assert c["queries_paired"] == 1000 and abs(c["delta_mAP"] - (c["report"]["mAP"] - body["mAP"])) < 2e-6  # each rounded to 6 decimals
        assert c["ci95"][0] <= c["delta_mAP"] <= c["ci95"][1]
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "compare": [{"colour": "red"}]}, headers=h)
    assert r.status_code == 422


def test_evaluate_route_takes_weights_and_reranking_in_each_run(client):
    """The evaluation and each compared run take fusion weights (any spelling of a model, read
    as a search reads them) and re-ranking, as ``cbir evaluate --compare "weights=... rerank=..."``
    does: figures equal the engine's own within 1e-6 (one computation path)."""
    from cbir.rerank import Rerank

    engine = client.app.state.service.engine
    h = login(client)
    two = ["efficientnet_lite0", "efficientnet_lite1"]
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "rerank": {"method": "aqe"}, "compare": [
        {"rerank": {"method": "none"}},
        {"models": two, "method": "weighted", "weights": {"EfficientNet-Lite0": 3, "efficientnet_lite1": 1}, "rerank": {"method": "none"}},
        {"models": two, "method": "weighted", "weights": {"efficientnet_lite0": 1, "efficientnet_lite1": 3}, "rerank": {"method": "none"}}]},
        headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    plain, heavy0, heavy1 = (c["report"] for c in body["comparisons"])
    assert body["name"] == "efficientnet_lite0 + αQE (n=10, α=3)" and body["mAP"] == pytest.approx(0.9088, abs=1e-3)  # README
    assert body["mAP"] == pytest.approx(engine.evaluate(["efficientnet_lite0"], rerank=Rerank("aqe")).map, abs=1e-6)
    assert plain["mAP"] == pytest.approx(0.8771, abs=1e-3) and body["comparisons"][0]["significant"]
    weighted = engine.evaluate(two, method="weighted", weights={"efficientnet_lite0": 3.0, "efficientnet_lite1": 1.0})
    assert heavy0["mAP"] == pytest.approx(weighted.map, abs=1e-6) and heavy0["name"] == weighted.name
    assert heavy0["name"] == "weighted(efficientnet_lite0+efficientnet_lite1) weights 3:1" and heavy1["name"].endswith("weights 1:3")
    assert heavy0["mAP"] != pytest.approx(heavy1["mAP"], abs=1e-4)  # the weights were used
    bad = [({"models": ["efficientnet_lite0"], "metric": "chi2", "rerank": {"method": "aqe"}}, "cosine"),
           ({"models": two, "method": "weighted", "weights": {"vgg16": 1}}, "vgg16"),
           ({"models": two, "method": "weighted", "weights": {"efficientnet_lite0": -1, "efficientnet_lite1": 1}}, "weight"),
           ({"models": ["efficientnet_lite0"], "recipe": "centred", "rerank": {"method": "aqe"}}, "without re-ranking"),
           ({"models": ["efficientnet_lite0"], "compare": [{"rerank": {"method": "nope"}}]}, "method"),
           ({"models": two, "compare": [{"weights": {"efficientnet_lite0": 2, "efficientnet_lite1": 1}}]}, "changes nothing")]
    for payload, message in bad:  # refused before any work, with the reason
        r = client.post("/api/evaluate", json=payload, headers=h)
        assert r.status_code == 422 and message in r.text, (payload, r.text)


def test_compared_runs_change_only_what_they_give(client):
    """A compared run's ``rerank`` fields replace the evaluation's one by one ({"alpha": 1} kept
    αQE and n: it ran without re-ranking); a model a weighting leaves out weighs 1 and is named
    so; weights in the same ratios change nothing; a run that changes the models drops weights
    naming a model it lacks (as the CLI does); a refused run is named; metric aliases are read."""
    from cbir.rerank import Rerank

    engine = client.app.state.service.engine
    h = login(client)
    two, other = ["efficientnet_lite0", "efficientnet_lite1"], ["efficientnet_lite0", "efficientnet_lite2"]
    r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "metric": "Cosine", "rerank": {"method": "aqe", "n": 5},
                                           "compare": [{"rerank": {"alpha": 1}}]}, headers=h)
    assert r.status_code == 200, r.text
    report = r.json()["comparisons"][0]["report"]
    assert report["name"] == "efficientnet_lite0 + αQE (n=5, α=1)"
    assert report["mAP"] == pytest.approx(engine.evaluate(["efficientnet_lite0"], rerank=Rerank("aqe", 5, 1.0)).map, abs=1e-6)
    r = client.post("/api/evaluate", json={"models": two, "method": "weighted", "weights": {"efficientnet_lite0": 3},
                                           "compare": [{"models": other}]}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "weighted(efficientnet_lite0+efficientnet_lite1) weights 3:1"  # (lite1 weighs 1, as fused)
    assert body["comparisons"][0]["report"]["name"] == "weighted(efficientnet_lite0+efficientnet_lite2) weights 3:1"  # kept: lite0 only
    r = client.post("/api/evaluate", json={"models": two, "method": "weighted", "weights": {"efficientnet_lite0": 3, "efficientnet_lite1": 1},
                                           "compare": [{"models": other}]}, headers=h)
    assert r.status_code == 200 and r.json()["comparisons"][0]["report"]["name"] == "weighted(efficientnet_lite0+efficientnet_lite2)"
    refused = [({"models": two, "method": "weighted", "weights": {"efficientnet_lite0": 3, "efficientnet_lite1": 1},
                 "compare": [{"weights": {"efficientnet_lite0": 6, "efficientnet_lite1": 2}}]}, 422, "compare[0] changes nothing"),
               ({"models": two, "method": "weighted", "compare": [{"weights": {"efficientnet_lite0": 1, "efficientnet_lite1": 1}}]},
                422, "compare[0] changes nothing"),
               ({"models": ["efficientnet_lite0"], "compare": [{"rerank": {"method": "aqe"}}, {"models": ["vgg16"]}]}, 400,
                "compare[1]: VGG16 has no features"),
               ({"models": ["efficientnet_lite0"], "compare": [{"metric": "euclidean", "rerank": {"method": "aqe"}}]}, 422,
                "compare[0]: re-ranking"),
               ({"models": two, "method": "weighted", "weights": {"efficientnet_lite0": 1e308}}, 422, "between 1e-06 and 1e+06"),
               ({"models": two, "method": "weighted", "weights": {f"m{i}": 1 for i in range(20_000)}}, 422, "weights")]
    for payload, status, message in refused:
        r = client.post("/api/evaluate", json=payload, headers=h)
        assert r.status_code == status and message in r.json()["error"] and len(r.text) < 2000, (payload, r.text[:500])
