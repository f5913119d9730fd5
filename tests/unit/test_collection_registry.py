"""The collections a server knows: names and folders in one file, the default always there,
names validated, two folders of one name side by side, removal takes the stores (and the
images only when they were uploaded). No servers."""

from __future__ import annotations

import json
import shutil

import pytest

from cbir.collection_registry import CollectionRegistry, describe
from cbir.config import Settings
from cbir.errors import CollectionError, CollectionExistsError, ForbiddenError, RequestError, UnknownNameError, contract_for
from tests.conftest import COLLECTION


@pytest.fixture
def registry(tmp_path):
    return CollectionRegistry(Settings(collection=COLLECTION, features_dir=tmp_path / "features", var_dir=tmp_path / "var"))


def _photos(folder, n=3):
    folder.mkdir(parents=True)
    for i in range(n):
        shutil.copy(COLLECTION / f"{i}.jpg", folder / f"{i}.jpg")
    return folder


def test_the_default_is_always_there_and_cannot_go(registry):
    assert list(registry.entries()) == ["image.orig"] and registry.get("image.orig").default
    assert len(registry.open()) == len(registry.open("image.orig")) == 1000
    with pytest.raises(RequestError, match="default collection"):
        registry.remove("image.orig")


def test_two_folders_of_one_name_live_side_by_side(registry, tmp_path):
    a = registry.add("trip-2019", _photos(tmp_path / "one" / "photos"), actor="alice")
    b = registry.add("trip-2020", _photos(tmp_path / "two" / "photos", 2), actor="bob")
    assert list(registry.entries()) == ["image.orig", "trip-2019", "trip-2020"]
    assert registry.open("trip-2019").name == "trip-2019" and len(registry.open("trip-2020")) == 2
    assert (a.added_by, b.folder) == ("alice", str((tmp_path / "two" / "photos").resolve()))
    # a registered name opens its folder; a folder that is no name is scanned as it is
    assert registry.open(str(tmp_path / "one" / "photos")).name == "photos"
    stored = json.loads(registry.path.read_text())
    assert set(stored) == {"trip-2019", "trip-2020"}  # the default needs no entry


@pytest.mark.parametrize("name", ["", "with space", "../up", "-dash", "x" * 65, "a/b"])
def test_bad_names_are_refused(registry, tmp_path, name):
    with pytest.raises(RequestError, match="collection name"):
        registry.add(name, _photos(tmp_path / "p"), actor="alice")


def test_taken_names_missing_folders_and_unknown_names(registry, tmp_path):
    registry.add("mine", _photos(tmp_path / "p"), actor="alice")
    with pytest.raises(CollectionExistsError) as taken:
        registry.add("mine", tmp_path / "p", actor="bob")
    assert contract_for(taken.value).status == 409
    with pytest.raises(CollectionExistsError):
        registry.add("image.orig", tmp_path / "p", actor="bob")
    with pytest.raises(CollectionError, match="does not exist"):
        registry.add("gone", tmp_path / "nowhere", actor="bob")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectionError, match="holds no images"):
        registry.add("empty", tmp_path / "empty", actor="bob")
    with pytest.raises(UnknownNameError, match="unknown collection 'nosuch'"):
        registry.open("nosuch")


def test_removal_takes_the_stores_and_only_uploaded_images(registry, tmp_path):
    kept = registry.add("kept", _photos(tmp_path / "server-folder"), actor="admin")
    sent = registry.add("sent", _photos(tmp_path / "uploaded"), actor="alice", uploaded=True)
    for entry in (kept, sent):
        (registry.settings.features_dir / entry.name / "efficientnet_lite0").mkdir(parents=True)
    registry.remove("kept")
    registry.remove("sent")
    assert list(registry.entries()) == ["image.orig"]
    assert not (registry.settings.features_dir / "kept").exists() and not (registry.settings.features_dir / "sent").exists()
    assert (tmp_path / "server-folder").is_dir() and not (tmp_path / "uploaded").exists()


def test_a_damaged_file_is_one_clear_error(registry):
    registry.path.parent.mkdir(parents=True)
    registry.path.write_text("{not json")
    with pytest.raises(CollectionError, match="damaged"):
        registry.entries()


def test_listing_says_size_labels_and_models(registry, tmp_path):
    registry.add("mine", _photos(tmp_path / "p"), actor="alice")
    rows = {r["name"]: r for r in (describe(registry, e) for e in registry.entries().values())}
    assert rows["image.orig"]["images"] == 1000 and rows["image.orig"]["labels"] == "labels.csv"
    assert rows["mine"]["images"] == 3 and rows["mine"]["labels"] == "none" and rows["mine"]["models"] == []
    shutil.rmtree(tmp_path / "p")
    assert "does not exist" in describe(registry, registry.get("mine"))["error"]


def test_a_folder_name_too_long_is_a_collection_error(registry):
    """Found by schemathesis: a 4096-character folder raised OSError (a 500)."""
    with pytest.raises(CollectionError, match="cannot be read"):
        registry.add("long", "0" * 5000, actor="alice")


def test_web_adds_are_confined_to_the_collections_root(registry, tmp_path):
    from cbir.errors import ForbiddenError

    registry.settings.collections_root = tmp_path / "collections"
    _photos(tmp_path / "collections" / "ok")
    assert registry.add("ok", "ok", actor="api:alice", confined=True).folder == str((tmp_path / "collections" / "ok").resolve())
    for outside in ("/", "../..", str(COLLECTION)):
        with pytest.raises(ForbiddenError, match="CBIR_COLLECTIONS_ROOT"):
            registry.add("x", outside, actor="api:alice", confined=True)


def test_a_reused_name_never_inherits_old_stores(registry, tmp_path):
    """Stores under a name no collection holds (a removed one's, rewritten by an indexing run
    that outlived the removal; a folder of that name scanned by path) go when the name is
    given to a folder: they describe other images."""
    orphan = tmp_path / "features" / "trip" / "efficientnet_lite0"
    orphan.mkdir(parents=True)
    (orphan / "manifest.json").write_text("{}")
    registry.add("trip", _photos(tmp_path / "a" / "trip"), actor="alice")
    assert not (tmp_path / "features" / "trip").exists()


def test_a_folder_named_like_another_registered_collection_is_refused_by_path(registry, tmp_path):
    registry.add("trip", _photos(tmp_path / "a" / "trip"), actor="alice")
    other = _photos(tmp_path / "b" / "trip")
    with pytest.raises(CollectionError, match="has the name of the registered collection 'trip'"):
        registry.open(str(other))  # its stores would be written over the registered trip's
    assert len(registry.open(str(tmp_path / "a" / "trip"))) == 3  # the registered folder itself is fine


def test_names_roots_and_uploaded_folders(registry, tmp_path):
    registry.settings.collections_root = tmp_path / "collections"
    with pytest.raises(RequestError):
        registry.add("nl\n", _photos(tmp_path / "collections" / "x"), actor="bob", confined=True)  # fullmatch, not match
    with pytest.raises(ForbiddenError):
        registry.add("everything", ".", actor="bob", confined=True)  # the root spans every collection in it
    up = _photos(tmp_path / "collections" / "up")
    registry.add("up", up, actor="alice", uploaded=True, confined=True)
    (up / "sub").mkdir()
    shutil.copy(COLLECTION / "5.jpg", up / "sub" / "5.jpg")
    with pytest.raises(ForbiddenError, match="overlaps the collection 'up', whose images were uploaded"):
        registry.add("part", "up/sub", actor="bob", confined=True)
