"""Descriptor recipes (cbir.recipes) on arrays: parsing, pooling, R-MAC's regions, post-processing."""

import numpy as np
import pytest

from cbir.errors import RequestError
from cbir.recipes import PRESETS, PostState, Recipe, apply_post, fit_post, l2, parse_recipe, pool, rmac, rmac_regions


def test_recipes_read_back_their_own_spelling():
    for text in ("avg", "mac", "gem3", "gem2.5,scales=0.707+1+1.41,flip,sqrt,centre,pca=64", "rmac,sqrt"):
        recipe = parse_recipe(text)
        assert parse_recipe(recipe.name) == recipe, text
    assert parse_recipe(None) == parse_recipe("") == parse_recipe("today") == Recipe()
    assert parse_recipe("Near-Duplicate") == PRESETS["near_duplicate"][0]
    assert parse_recipe("avg,center").centre and parse_recipe("gem").p == 3
    category = PRESETS["category"][0]
    assert category.label == "2-scale · flip · √ · centred" and category.cost == pytest.approx(6.0) and category.learned
    assert Recipe().label == "" and Recipe().cost == 1 and not Recipe().learned


@pytest.mark.parametrize("text, words", [
    ("softmax", "unknown pooling 'softmax'"), ("gem0.5", "GeM's p is a number from 1 to 20"), ("avg,scales=3", "scales are 1 to 4"),
    ("avg,scales=1+x", "scales are"), ("avg,whiten", "'whiten' is not one of"), ("avg,pca=0", "'pca=0' is not one of")])
def test_a_bad_recipe_says_what_is_wrong(text, words):
    with pytest.raises(RequestError, match=words):
        parse_recipe(text)


def test_poolings_against_their_definitions(rng):
    x = rng.random((2, 5, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(pool(x, "avg"), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pool(x, "mac"), x.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pool(x, "gem", 1.0), x.mean(axis=(1, 2)), rtol=1e-5)  # GeM p=1 is the average
    gem = pool(x, "gem", 3.0)
    assert (gem >= pool(x, "avg") - 1e-6).all() and (gem <= pool(x, "mac") + 1e-6).all()  # between avg and max
    np.testing.assert_allclose(gem[1, 3], np.mean(x[1, :, :, 3] ** 3) ** (1 / 3), rtol=1e-5)


def test_rmac_regions_and_sum():
    # a 7x7 map (Lite0 at 224 px): the whole map, 1 region of 7, 4 of 4 (at 0 and 3), 9 of 3 (at 0, 2, 4)
    regions = rmac_regions(7, 7)
    assert regions[0] == (0, 0, -1) and len(regions) == 15
    assert {r for r in regions if r[2] == 4} == {(0, 0, 4), (0, 3, 4), (3, 0, 4), (3, 3, 4)}
    assert sorted({r[0] for r in regions if r[2] == 3}) == [0, 2, 4]
    wide = rmac_regions(7, 10)  # a wider map has more regions along its width
    assert max(r[1] + r[2] for r in wide if r[2] > 0) <= 10 and len({r[1] for r in wide if r[2] == 3}) > 3
    x = np.random.default_rng(1).random((1, 7, 7, 6)).astype(np.float32)
    direct = sum(l2((x if s < 0 else x[:, t:t + s, le:le + s]).max(axis=(1, 2))) for t, le, s in regions)
    np.testing.assert_allclose(rmac(x), direct, rtol=1e-6)


def test_centring_and_pca_are_learned_once_and_applied_to_queries(rng):
    x = l2(rng.random((200, 16)) + 5)  # all in one corner: cosine cannot tell them apart
    recipe = parse_recipe("avg,centre,pca=4")
    state = fit_post(x, recipe)
    out = apply_post(x, recipe, state)
    assert out.shape == (200, 4) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    centring = fit_post(x, parse_recipe("avg,centre"))
    np.testing.assert_allclose(centring.mean, x.mean(0), rtol=1e-5)
    centred = apply_post(x, parse_recipe("avg,centre"), centring)
    # the mean cosine of two images: ~1 before (one corner), ~0 after (spread around the origin)
    assert (x @ x.T).mean() > 0.95 and abs((centred @ centred.T).mean()) < 0.05 and centred.shape == (200, 16)
    query = apply_post(x[:1], recipe, state)  # a query: the collection's mean and basis, not its own
    np.testing.assert_allclose(query, out[:1], rtol=1e-5, atol=1e-6)
    assert fit_post(x, Recipe()).mean is None and np.array_equal(apply_post(x, Recipe(), PostState()), l2(x))


