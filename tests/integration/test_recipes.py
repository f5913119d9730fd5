"""Descriptor recipes with the bundled EfficientNet-Lite0 on real Wang images: today's recipe
is what the store holds, other input sizes run, and a recipe is evaluated from the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.engine import Engine
from cbir.images import open_image
from cbir.recipes import PRESETS, Recipe, describe, parse_recipe
from tests.conftest import COLLECTION, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    return Engine(scan_collection(COLLECTION))


def test_todays_recipe_is_what_the_store_holds(engine):
    """Two computation paths of one descriptor: the store's (batched extraction at indexing)
    and :func:`describe`'s (feature maps pooled here), within a cosine of 1e-4."""
    ids = [str(i) for i in range(0, 1000, 50)]
    mine = describe(engine.extractor("efficientnet_lite0"), [open_image(COLLECTION / f"{i}.jpg") for i in ids], Recipe())
    stored = engine.store("efficientnet_lite0").aligned(ids).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    assert np.min(np.sum(mine * stored, axis=1)) > 1 - 1e-4


def test_other_input_sizes_share_the_weights(engine):
    extractor = engine.extractor("efficientnet_lite0")
    images = [open_image(COLLECTION / f"{i}.jpg") for i in (3, 303, 603)]
    from cbir.images import resize_rgb

    at_224 = extractor.feature_maps(np.stack([resize_rgb(im, 224) for im in images]))
    assert at_224.shape == (3, 7, 7, 1280)
    assert extractor.feature_maps(np.stack([resize_rgb(im, 317) for im in images])).shape == (3, 10, 10, 1280)
    # the free-size copy at 224 px gives the fixed model's maps (two paths, within 1e-3 of their scale)
    free = extractor._maps_function(fixed=False)
    again = np.asarray(free(extractor._preprocess(np.stack([resize_rgb(im, 224) for im in images]).astype(np.float32))))
    assert np.abs(again - at_224).max() < 1e-3 * np.abs(at_224).max()
    for name in ("mac", "gem3", "rmac,sqrt", "avg,scales=0.707+1.414,flip"):
        v = describe(extractor, images, parse_recipe(name))
        assert v.shape == (3, 1280) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5), name


def test_cli_evaluates_a_recipe_and_compares_it(small_collection, tmp_path):
    """Twelve images in three classes: today's recipe against the category preset, paired."""
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "cbir", "evaluate", "--collection", str(small_collection), "--quiet",
                        "--recipe", "today", "--compare", "recipe=category", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    body = json.loads(out.read_text())
    assert body["name"] == "efficientnet_lite0 · today" and body["queries"] == 12
    (c,) = body["comparisons"]
    assert c["report"]["name"] == f"efficientnet_lite0 · {PRESETS['category'][0].label}" and c["queries_paired"] == 12
    r = subprocess.run([sys.executable, "-m", "cbir", "evaluate", "--collection", str(small_collection), "--recipe", "category",
                        "--model", "efficientnet_lite0,efficientnet_lite1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip() == "cbir: error: a recipe is evaluated one model at a time: give one model"


@pytest.mark.redis
def test_api_evaluates_a_recipe_and_refuses_what_it_cannot(fresh_redis, tmp_path, small_collection):
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import api_login, make_settings

    app = create_app(make_settings(fresh_redis.url, tmp_path, collection=small_collection), warm_up=False)
    with TestClient(app) as client:
        h = api_login(client)
        r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "recipe": "centred",
                                               "compare": [{"recipe": "mac,sqrt,centre"}]}, headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "efficientnet_lite0 · centred" and body["queries"] == 12
        assert body["comparisons"][0]["report"]["name"] == "efficientnet_lite0 · MAC · √ · centred"
        for bad, words in [({"models": ["efficientnet_lite0", "efficientnet_lite1"], "recipe": "category"}, "one model at a time"),
                           ({"models": ["efficientnet_lite0"], "recipe": "category", "metric": "chi_square"}, "not histograms"),
                           ({"models": ["efficientnet_lite0"], "recipe": "softmax"}, "unknown pooling 'softmax'"),
                           ({"models": ["efficientnet_lite0"], "recipe": "avg,pca=²"}, "'pca=²' is not one of"),  # was a 500
                           ({"models": ["efficientnet_lite0"], "recipe": "avg,scales=2+1.9+1.8,flip"}, "the most is 8"),
                           ({"models": ["efficientnet_lite0"], "recipe": "centred", "compare": [{}]}, "changes nothing"),
                           ({"models": ["efficientnet_lite0"], "recipe": "category", "centre": False}, "says itself whether it centres"),
                           ({"models": ["efficientnet_lite0"], "recipe": "category", "compare": [{"normalisation": "rank"}]},
                            "changes nothing")]:
            r = client.post("/api/evaluate", json=bad, headers=h)
            assert r.status_code == 422 and words in r.json()["error"], (bad, r.text)
        # a run on the stores of a collection indexed with none: said before any work (as the CLI does)
        r = client.post("/api/evaluate", json={"models": ["efficientnet_lite0"], "compare": [{"normalisation": "rank"}]}, headers=h)
        assert r.status_code == 400 and "has no features for collection" in r.json()["error"], r.text
        # a model whose weights are not here: said at once, and nothing is downloaded (a student could make the server fetch them)
        r = client.post("/api/evaluate", json={"models": ["vgg16"], "recipe": "centred"}, headers=h)
        assert r.status_code == 400 and "ImageNet weights for VGG16 are not in the models cache" in r.json()["error"], r.text


# -- recipes stored beside a model's own store (MODEL~PRESET) ----------------------------------
NEAR = "efficientnet_lite0~near_duplicate"


@pytest.mark.redis
def test_a_stored_recipe_is_a_model_of_its_own(small_collection, tmp_path, fresh_redis):
    """`cbir index --recipe` (a real extraction, with its progress bar) stores the recipe's
    vectors beside the model's own store; the model lists name it; it is searched, fused and
    centred like any model, an upload included; an explanation is refused with what to do."""
    env_args = ["--collection", str(small_collection), "--features", str(tmp_path / "features")]
    for extra in ([], ["--recipe", "near-duplicate"]):
        r = subprocess.run([sys.executable, "-m", "cbir", "index", "-m", "efficientnet_lite0", *env_args, *extra],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0 and "12 images in store" in r.stdout, r.stderr
    assert "EfficientNet-Lite0 · 3-scale · √" in r.stderr  # the bar names the recipe
    from cbir.config import Settings

    engine = Engine(small_collection, Settings(collection=small_collection, features_dir=tmp_path / "features",
                                               var_dir=tmp_path / "var"))
    infos = {m["name"]: m for m in engine.model_info()}
    assert infos[NEAR]["label"] == "EfficientNet-Lite0 · 3-scale · √" and infos[NEAR]["indexed"] == 12
    assert infos[NEAR]["searchable"] and infos[NEAR]["extracts"] and engine.recipe_models() == [NEAR]
    # the stored vectors are the recipe's descriptors (decoded at the largest scale, smaller ones resized from it)
    ids = engine.store(NEAR).ids.tolist()
    mine = describe(engine.extractor("efficientnet_lite0"), [open_image(small_collection / f"{i}.jpg") for i in ids],
                    PRESETS["near_duplicate"][0].extraction)
    assert np.min(np.sum(mine * engine.store(NEAR).embeddings, axis=1)) > 0.99
    both = engine.search([NEAR, "efficientnet_lite0"], image_id="300", top_k=3, method="average")
    assert both.centred and {h.label for h in both.fused.hits} == {"buses"} and set(both.per_model) == {NEAR, "efficientnet_lite0"}
    upload = engine.search(NEAR, image=(small_collection / "401.jpg").read_bytes(), top_k=1).per_model[NEAR].hits[0]
    assert upload.id == "401" and upload.score < 5e-3
    from cbir.errors import RequestError

    with pytest.raises(RequestError, match="explain the match with efficientnet_lite0"):
        engine.explain(NEAR, "1", image_id="0")
    r = subprocess.run([sys.executable, "-m", "cbir", "index", "-m", "efficientnet_lite0", *env_args, "--recipe", "today"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "index it without --recipe" in r.stderr
    # the API lists it and searches with it by its name
    from fastapi.testclient import TestClient

    from cbir.api.app import create_app
    from tests.conftest import api_login, make_settings

    app = create_app(make_settings(fresh_redis.url, tmp_path, collection=small_collection, features_dir=tmp_path / "features"),
                     warm_up=False)
    with TestClient(app) as client:
        h = api_login(client)
        listed = {m["name"]: m for m in client.get("/api/models", headers=h).json()["models"]}
        assert listed[NEAR]["label"] == "EfficientNet-Lite0 · 3-scale · √" and listed[NEAR]["indexed"] == 12
        r = client.post("/api/search", json={"image_id": "300", "models": [NEAR], "top_k": 3}, headers=h)
        assert r.status_code == 200 and r.json()["centred"] and {x["label"] for x in r.json()["models"][NEAR]["results"]} == {"buses"}


def test_stored_recipe_names():
    from cbir.errors import RequestError, UnknownNameError
    from cbir.extractors import get_spec

    spec = get_spec("EfficientNet-Lite1~Category")
    assert (spec.name, spec.base, spec.recipe, spec.dim) == ("efficientnet_lite1~category", "efficientnet_lite1", "category", 1280)
    assert spec.input_size == round(240 * 2 ** 0.5) and spec.label == "EfficientNet-Lite1 · 2-scale · flip · √"
    with pytest.raises(UnknownNameError, match="unknown stored recipe 'rmac'; choose one of: category, near_duplicate"):
        get_spec("efficientnet_lite0~rmac")
    with pytest.raises(UnknownNameError) as caught:  # the base is unknown: no MODEL~PRESET hint (that is what was given)
        get_spec("alexnet~category")
    assert str(caught.value).startswith("unknown model 'alexnet'; choose one of: ") and "stored recipe" not in str(caught.value)
    with pytest.raises(UnknownNameError) as caught:  # a plain unknown name: the other forms, and where to list them
        get_spec("alexnet")
    assert caught.value.said_to("app").endswith("or a stored recipe or imported features: the Collection page lists this collection's models")
    with pytest.raises(RequestError, match="features computed elsewhere"):
        get_spec("imported:sift~category")
    from cbir.recipes import check_recipe_run

    with pytest.raises(RequestError, match="under the category recipe already: evaluate it as a model"):
        check_recipe_run(["efficientnet_lite0~category"], "cosine")
    with pytest.raises(RequestError, match="one recipe per model"):
        get_spec("efficientnet_lite0~category~near_duplicate")
    with pytest.raises(UnknownNameError) as caught:  # a huge name is not echoed whole (a 100 KB 422 body)
        get_spec("efficientnet_lite0~" + "b" * 100_000)
    assert len(str(caught.value)) < 300 and "characters)" in str(caught.value)
