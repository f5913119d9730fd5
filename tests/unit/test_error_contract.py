"""One error contract (``cbir.errors.CONTRACTS``): every error class means the same HTTP
status in the API, the same exit code in the CLI and the same message level in the app; an
error that is not in the table is a 500, exit code 1, an "Unexpected problem". Settings a
server must not run with cannot be built."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cbir import cli
from cbir.config import ServerSettings, Settings, get_settings, reset_settings, server_settings
from cbir.distances import pairwise_distances
from cbir.index.exact import ExactIndex
from cbir.distributed import DistributedError
from cbir.errors import (
    UNEXPECTED, AuthError, BusyError, Cancelled, CBIRError, CollectionError, CollectionExistsError, ConfigError, ErrorContract,
    ForbiddenError,
    FeatureImportError, ImageError, ImportConflictError, ImportForbiddenError, ImportLimitError, LockedError,
    MalformedInputError, MetricError, RequestError, ServiceUnavailable, StoreError, UnknownImageError, UnknownNameError, UserError,
    WeightsFileError, WeightsUnavailableError, WorkLimitError, contract_for,
)
from cbir.index.base import IndexBackendError, UnsupportedMetric

#: name -> (the error, its HTTP status, CLI exit code, UI level): the README's table.
CASES = {
    "CBIRError": (CBIRError("bad input"), 400, 2, "error"),
    "UnknownNameError": (UnknownNameError("unknown metric 'x'"), 422, 2, "error"),
    "CollectionError": (CollectionError("no images"), 400, 2, "error"),
    "UnknownImageError": (UnknownImageError("no image with id 'x'"), 404, 2, "error"),
    "ImageError(empty)": (ImageError("empty upload", "empty"), 400, 2, "error"),
    "ImageError(corrupt)": (ImageError("truncated image"), 400, 2, "error"),
    "ImageError(not_image)": (ImageError("not an image", "not_image"), 415, 2, "error"),
    "ImageError(too_large)": (ImageError("too many pixels", "too_large"), 413, 2, "error"),
    "ImageError(missing)": (ImageError("image removed", "missing"), 404, 2, "error"),
    "WeightsUnavailableError": (WeightsUnavailableError("no weights"), 400, 2, "error"),
    "WeightsFileError": (WeightsFileError("weights file is truncated"), 400, 2, "error"),
    "MetricError": (MetricError("feature widths differ"), 400, 2, "error"),
    "MalformedInputError": (MalformedInputError("filters is nested deeper than 32 levels"), 400, 2, "error"),
    "StoreError": (StoreError("no store"), 400, 2, "error"),
    "WorkLimitError": (WorkLimitError("sweep too fine"), 422, 2, "error"),
    "RequestError": (RequestError("top_k must be between 1 and 1000, got 0"), 422, 2, "error"),
    "ForbiddenError": (ForbiddenError("only inside CBIR_COLLECTIONS_ROOT"), 403, 2, "error"),
    "CollectionExistsError": (CollectionExistsError("a collection named 'x' exists"), 409, 2, "error"),
    "BusyError": (BusyError("CBIR_JOBS_PER_USER = 1 job at once", 7), 429, 3, "error"),
    "Cancelled": (Cancelled("the server is stopping"), 503, 3, "error"),
    "ServiceUnavailable": (ServiceUnavailable(), 503, 3, "warning"),
    "AuthError": (AuthError("wrong username or password"), 401, 2, "error"),
    "LockedError": (LockedError("bob", 120), 429, 3, "error"),
    "UserError": (UserError("no user 'bob'"), 400, 2, "error"),
    "ConfigError": (ConfigError("set CBIR_ADMIN_PASSWORD"), 400, 2, "error"),
    "FeatureImportError": (FeatureImportError("no rows"), 400, 2, "error"),
    "ImportLimitError": (ImportLimitError("over CBIR_IMPORT_MAX_DIM"), 413, 2, "error"),
    "ImportConflictError": (ImportConflictError("imported:x exists"), 409, 2, "error"),
    "ImportForbiddenError": (ImportForbiddenError("only alice or an admin may replace it"), 403, 2, "error"),
    "IndexBackendError": (IndexBackendError("milvus unreachable"), 400, 2, "error"),
    "UnsupportedMetric": (UnsupportedMetric("faiss cannot chi-square"), 400, 2, "error"),
    "DistributedError": (DistributedError("no scheduler"), 400, 2, "error"),
    "ValueError": (ValueError("a bug"), 500, 1, "error"),
    "KeyError": (KeyError("a bug"), 500, 1, "error"),
}


@pytest.mark.parametrize("name", CASES)
def test_the_table(name):
    exc, status, code, level = CASES[name]
    assert contract_for(exc) == ErrorContract(status, code, level)
    if isinstance(exc, CBIRError):
        assert exc.http_status == status


# -- the API ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api():
    """A FastAPI app with the API's error handlers and a route raising each case (no Redis)."""
    from cbir.api.app import _install_error_handlers

    app = FastAPI()
    _install_error_handlers(app)

    @app.get("/raise/{name}")
    def raise_case(name: str):
        raise CASES[name][0]

    @app.get("/distances")
    def distances():  # the engine's own check of what a metric can use
        return {"d": pairwise_distances(np.ones((1, 3)), np.ones((4, 5)), "cosine").tolist()}

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("name", CASES)
def test_the_api_answers_the_tables_status(api, name):
    exc, status, _, _ = CASES[name]
    r = api.get(f"/raise/{name}")
    assert r.status_code == status, r.text
    shown = "internal error; see the server log" if status == 500 else str(exc)
    assert r.json() == {"error": shown}
    retry = getattr(exc, "retry_after", None)
    assert r.headers.get("retry-after") == (None if retry is None else str(retry))
    assert (r.headers.get("www-authenticate") == "Bearer") is (status == 401)


def test_a_bad_feature_matrix_is_a_400_not_a_500(api):
    """distances.py raised plain ValueErrors, which the API answered with 500."""
    r = api.get("/distances")
    assert r.status_code == 400 and "feature widths differ" in r.json()["error"], r.text


# -- the CLI ----------------------------------------------------------------------------------
def _cli(monkeypatch, capsys, command) -> tuple[int, str]:
    """``cbir models`` with its command replaced by ``command``: main()'s translation alone."""
    monkeypatch.setattr(cli, "cmd_models", lambda args: command())
    code = cli.main(["models"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if isinstance(case[0], CBIRError)])
def test_the_cli_exits_with_the_tables_code(monkeypatch, capsys, name):
    exc, _, code, _ = CASES[name]

    def command():
        raise exc

    got, err = _cli(monkeypatch, capsys, command)
    assert got == code and err == f"cbir: error: {exc}\n"


def test_an_unexpected_error_is_not_a_user_error_in_the_cli(monkeypatch, capsys):
    """A plain ValueError is a bug: a traceback and exit code 1 (Python's), not exit 2."""
    def command():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        _cli(monkeypatch, capsys, command)


def test_a_bad_feature_matrix_is_exit_2_in_the_cli(monkeypatch, capsys):
    got, err = _cli(monkeypatch, capsys, lambda: ExactIndex(np.ones(3), "cosine"))
    assert got == 2 and err.startswith("cbir: error: expected a 2-D (n, d) array") and err.count("\n") == 1


# -- the app ----------------------------------------------------------------------------------
def _page(names: list[str]):
    from app_pages.common import show_error
    from tests.unit.test_error_contract import CASES

    for name in names:
        show_error(CASES[name][0])


def test_the_app_shows_each_error_at_the_tables_level():
    from streamlit.testing.v1 import AppTest

    names = list(CASES)
    at = AppTest.from_function(_page, args=(names,), default_timeout=60)
    at.session_state["roles"] = ["admin"]
    at.run()
    assert not at.exception
    shown = sorted([(e.value, "error") for e in at.error] + [(w.value, "warning") for w in at.warning])
    expected = []
    for name in names:
        exc, status, _, level = CASES[name]
        text = f"Unexpected problem: {type(exc).__name__}: {exc}" if status == 500 else str(exc)
        expected.append((text, level))
    assert shown == sorted(expected)


def test_a_bad_feature_matrix_is_a_user_error_in_the_app():
    from streamlit.testing.v1 import AppTest

    def page():
        import numpy as np

        from app_pages.common import show_error
        from cbir.distances import pairwise_distances

        try:
            pairwise_distances(np.ones((1, 3)), np.ones((4, 5)), "cosine")
        except Exception as exc:
            show_error(exc)

    at = AppTest.from_function(page, default_timeout=60)
    at.run()
    [error] = at.error
    assert error.value.startswith("feature widths differ"), error.value


# -- settings ---------------------------------------------------------------------------------
def test_a_server_cannot_be_built_with_production_problems(tmp_path):
    base = dict(_env_file=None, var_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^demo mode is off: set CBIR_ADMIN_PASSWORD \(or set CBIR_DEMO=1 for a demo\)$"):
        ServerSettings(demo=False, **base)
    with pytest.raises(ConfigError, match="CBIR_ADMIN_PASSWORD: password too weak"):
        ServerSettings(demo=False, admin_password="password123", **base)
    with pytest.raises(ConfigError, match="CBIR_SECRET_KEY is a published placeholder"):
        ServerSettings(demo=True, secret_key="cbir-demo-secret-change-me", **base)
    assert ServerSettings(demo=False, admin_password="Quiet-Harbour-71", **base).admin_password == "Quiet-Harbour-71"
    assert ServerSettings(demo=True, **base).demo
    # the engine's and the CLI's settings need no admin password; a server's are checked
    plain = Settings(demo=False, **base)
    with pytest.raises(ConfigError, match="set CBIR_ADMIN_PASSWORD"):
        server_settings(plain)
    assert contract_for(ConfigError("x")).exit_code == 2


def test_index_choices_are_checked_when_settings_are_read(monkeypatch):
    with pytest.raises(ValidationError):
        Settings(_env_file=None, index_backend="fast")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, faiss_kind="flat")
    assert Settings(_env_file=None, index_backend="milvus", faiss_kind="ivfpq").faiss_kind == "ivfpq"
    monkeypatch.setenv("CBIR_INDEX_BACKEND", "fast")
    reset_settings()
    try:
        with pytest.raises(ConfigError) as info:
            get_settings()
        message = str(info.value)
        assert message.startswith("CBIR_INDEX_BACKEND: Input should be 'auto', 'exact', 'faiss' or 'milvus'")
        assert "'fast'" in message and "\n" not in message
    finally:
        monkeypatch.delenv("CBIR_INDEX_BACKEND")
        reset_settings()


def test_the_cli_reports_bad_settings_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("CBIR_FAISS_KIND", "flat")
    reset_settings()
    try:
        code = cli.main(["index", "--collection", "/nonexistent-folder-for-cbir-tests"])
    finally:
        monkeypatch.delenv("CBIR_FAISS_KIND")
        reset_settings()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cbir: error: CBIR_FAISS_KIND: Input should be 'hnsw' or 'ivfpq'") and err.count("\n") == 1


def test_a_remedy_is_said_in_each_front_ends_words(tmp_path, capsys, monkeypatch):
    """The app said "run cbir index --model imported:half" and "use --backend exact": a
    remedy names the CLI's flag or command, the API's field, the app's control or page."""
    from cbir.catalogue import StoreCatalogue
    from cbir.collection import scan_collection
    from cbir.errors import StoreError
    from PIL import Image

    folder = tmp_path / "c"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a.jpg")
    catalogue = StoreCatalogue(scan_collection(folder), Settings(_env_file=None, features_dir=tmp_path / "features"))
    with pytest.raises(StoreError) as raised:
        catalogue.store("efficientnet_lite1")
    error = raised.value
    assert str(error).endswith("; run `cbir index --model efficientnet_lite1`")  # the CLI's words are the default
    assert error.said_to("app").endswith("; index EfficientNet-Lite1 on the Collection page")
    assert "--model" not in error.said_to("app") and "cbir index --model efficientnet_lite1" in error.said_to("api")
    with pytest.raises(StoreError) as raised:  # an imported model (deleted, say) is imported again, never indexed
        catalogue.store("imported:gone")
    assert raised.value.said_to("app").endswith("import its features again on the Collection page (name gone, Replace)")
    monkeypatch.setenv("CBIR_FEATURES_DIR", str(tmp_path / "features"))
    monkeypatch.setenv("CBIR_VAR_DIR", str(tmp_path / "var"))
    reset_settings()
    try:
        code = cli.main(["search", "--collection", str(folder), "--model", "efficientnet_lite1", "--id", "a", "-q"])
    finally:
        monkeypatch.undo()
        reset_settings()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.rstrip().endswith("run `cbir index --model efficientnet_lite1`"), err
