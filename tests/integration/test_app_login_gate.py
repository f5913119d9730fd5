"""No page of the app is reachable without a login, whatever the first URL and whatever restarted.

Each browser test starts its own Streamlit server, so the request under test is the first one
that server ever sees: Streamlit discovers a folder named ``pages/`` beside the entry script by
itself and, until some session has called ``st.navigation``, runs the page a URL names without
running ``app.py`` (its login gate) at all. The pages also check the session themselves
(``require_login``), tested without a browser through Streamlit's own ``AppTest``.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import ROOT, RedisServer, ServiceProcess, free_port, service_env

PAGE_TITLES = {"search": "🔎 Search", "evaluate": "📈 Evaluate", "map": "🗺️ Map",
               "collection": "🗂️ Collection · image.orig", "admin": "🛡️ Admin"}
ANY_PAGE = re.compile("|".join(re.escape(t) for t in PAGE_TITLES.values()))
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def gate_redis(tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("redis-gate")).start()
    yield redis
    redis.stop()


class FreshApp:
    """A Streamlit server that has seen no request yet; ``restart`` keeps its port."""

    def __init__(self, redis_url: str, tmp: Path):
        features = tmp / "features"  # its own copy: a page that ran would write map caches there
        shutil.copytree(ROOT / "features", features)
        self.tmp, self.port, self.starts = tmp, free_port(), 0
        self.env = service_env(redis_url, tmp / "app", CBIR_LOGIN_RATE="1000", CBIR_FEATURES_DIR=str(features))
        self.server: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.tmp / f"app-{self.starts}.log"

    def start(self) -> "FreshApp":
        self.starts += 1
        argv = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(self.port),
                "--server.address", "127.0.0.1", "--server.headless", "true", "--logger.level", "debug"]
        self.server = ServiceProcess(argv, self.port, self.env, self.log, ready_path="/_stcore/health").start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def runs(self) -> int:
        """Script runs this server has started (Streamlit logs each at debug level)."""
        return self.log.read_text(errors="replace").count("Running script")


@pytest.fixture
def fresh_app(gate_redis, tmp_path):
    app = FreshApp(gate_redis.url, tmp_path).start()
    yield app
    app.stop()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def idle(page) -> None:
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")


def assert_only_the_login_form(page, where: str) -> None:
    """The login form shows, and nothing of any page: no page title, no figures, no page list."""
    username = page.get_by_label("Username")
    username.or_(page.get_by_role("heading", name=ANY_PAGE)).first.wait_for()
    idle(page)
    titles = [t for t in PAGE_TITLES.values() if page.get_by_role("heading", name=t, exact=True).count()]
    assert not titles, f"{where}: an anonymous visitor sees {titles}"
    assert page.get_by_text("Images indexed").count() == 0, where
    assert page.locator("[data-testid='stSidebarNav']").count() == 0, f"{where}: the sidebar lists pages"
    assert username.count() == 1, f"{where}: no login form"


@pytest.mark.browser
@pytest.mark.redis
@pytest.mark.parametrize("name", list(PAGE_TITLES))
def test_deep_link_as_first_request_and_reconnect_after_restart_show_only_the_login(fresh_app, context, name):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{fresh_app.url}/{name}")
    assert_only_the_login_form(page, f"first request /{name}")

    # The tab stays open while the server restarts; it reconnects and reruns its page on a
    # server that, again, has seen no other session.
    fresh_app.stop()
    fresh_app.start()
    deadline = time.time() + 60
    while fresh_app.runs() == 0:  # wait for the tab's rerun on the new server
        assert time.time() < deadline, f"the tab did not reconnect: {fresh_app.log.read_text()[-1500:]}"
        page.wait_for_timeout(250)
    assert_only_the_login_form(page, f"/{name} reconnected after a restart")


@pytest.mark.browser
@pytest.mark.redis
@pytest.mark.parametrize("path", ["/", "/evaluate"])
def test_first_login_after_a_server_start_is_not_dropped(fresh_app, context, path):
    """One click on "Log in", the first this server sees, logs in (and opens the page of the URL)."""
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(fresh_app.url + path)
    page.get_by_label("Username").wait_for()
    idle(page)
    page.get_by_label("Username").fill("student")
    page.get_by_label("Password", exact=True).fill("multimedia")
    page.get_by_role("button", name="Log in").click()
    title = PAGE_TITLES["search" if path == "/" else path.strip("/")]
    try:
        page.get_by_role("heading", name=title, exact=True).wait_for()
    except PlaywrightTimeout:
        raise AssertionError(f"one click on Log in did not log in; the page shows: {page.inner_text('body')[:500]}")


# -- defence in depth: each page checks the session itself -----------------------------------
@pytest.mark.parametrize("name", list(PAGE_TITLES))
def test_a_page_run_without_a_login_stops_at_its_first_line(name):
    """Run as Streamlit would run a page it found by itself (no app.py before it, empty session)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / f"{name}.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [], f"{name} rendered its page without a login"
    assert any("log in" in w.value.lower() for w in at.warning), [w.value for w in at.warning]


def test_a_page_with_a_forged_session_state_stops():
    """``authentication_status`` alone does not open a page: the login binding must match Redis's."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "evaluate.py"), default_timeout=60)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = "admin"
    at.session_state["roles"] = ["admin"]
    at.run()
    assert [t.value for t in at.title] == [], "a session that only says it is logged in opened the page"


def test_no_folder_streamlit_would_discover_by_itself():
    """Streamlit runs any script in a ``pages/`` folder beside the entry script by URL."""
    assert not (ROOT / "pages").exists()



@pytest.fixture
def app_test(gate_redis, tmp_path, monkeypatch):
    """``app.py`` in Streamlit's AppTest, logged in as ``user`` (a function of it), on the gate's
    Redis with the demo users; a first run has taught AppTest the pages."""
    import redis as redis_lib
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from cbir.config import Settings as Config, reset_settings
    from cbir.users import UserStore, bootstrap

    for key, value in service_env(gate_redis.url, tmp_path).items():
        monkeypatch.setenv(key, value)
    reset_settings()
    users = UserStore(redis_lib.Redis.from_url(gate_redis.url, decode_responses=True))
    bootstrap(users, Config(demo=True, var_dir=tmp_path / "var"))

    def logged_in(user: str, **query) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        for key, value in dict(authentication_status=True, username=user, roles=[users.get(user).role],
                               auth_binding=users.binding(user)).items():
            at.session_state[key] = value
        at.query_params.update(query)
        at.run()
        assert not at.exception, at.exception
        return at

    yield logged_in
    st.cache_resource.clear()
    monkeypatch.undo()
    reset_settings()


def titles(at) -> list[str]:
    return [t.value for t in at.title]


def test_a_rerun_from_a_browser_not_yet_told_its_page_keeps_the_page(app_test):
    """Streamlit's browser names the main script's hash in any rerun it asks for before the run's
    page reaches it; the cookie manager's first rerun (sent once its frame loads) can be one, and
    Streamlit resolves it to the default page. A deep link to /admin, logged in from the cookie,
    landed on Search under load (CI), the URL rewritten to "/". Such a rerun keeps the page."""
    from streamlit.util import calc_hash

    at = app_test("admin").switch_page("app_pages/admin.py").run()
    assert not at.exception, at.exception
    assert titles(at)[:1] == ["🛡️ Admin"], titles(at)
    at._page_hash = calc_hash(str(ROOT / "app.py"))  # what the browser sends until it learns its page
    at.run()
    assert not at.exception, at.exception
    assert titles(at)[:1] == ["🛡️ Admin"], titles(at)
    # a rerun that names a page still goes there: the user's own navigation is not undone
    at.switch_page("app_pages/evaluate.py").run()
    assert titles(at)[:1] == ["📈 Evaluate"], titles(at)


@pytest.mark.parametrize("asked,said", [("nope", "There is no collection `nope` on this server"),
                                        ("<b>x</b>", "The link names no collection of this server")])
def test_a_link_to_an_unknown_collection_is_said_until_the_user_leaves_the_page(app_test, asked, said):
    """The warning was drawn by the session's first run only: the login cookie's rerun, a moment
    later, wiped it (a flash). It stays on the page the link opened, and goes with a page change."""
    def warned(at) -> bool:
        return any(said in w.value for w in at.sidebar.warning)

    at = app_test("student", collection=asked)
    assert warned(at) and titles(at)[:1] == ["🔎 Search"], [w.value for w in at.sidebar.warning]
    assert at.session_state["collection_current"] == "image.orig"
    assert all(asked not in w.value for w in at.sidebar.warning if said.startswith("The link"))  # not echoed
    at.run()  # a rerun (the cookie manager's)
    assert warned(at), "the warning went with the next rerun"
    at.switch_page("app_pages/evaluate.py").run()
    assert not warned(at) and titles(at)[:1] == ["📈 Evaluate"]
    at.switch_page("app_pages/search.py").run()
    assert not warned(at)


def test_log_out_leaves_nothing_of_the_session_to_the_next_user(app_test):
    """The page the session last showed and the collection link's warning went on after the
    sidebar's Log out (its run goes on, logged out): the next user on that tab was shown a
    warning about a link they never opened, and a page-less rerun took them to the other's page."""
    at = app_test("student", collection="nope")
    assert any("There is no collection `nope`" in w.value for w in at.sidebar.warning)
    assert at.session_state["auth_last_page"] == ""  # (Search)
    at.sidebar.button(key="auth_logout").click().run()
    assert not at.exception, at.exception
    left = [k for k in ("auth_last_page", "collection_note", "collection_current") if k in at.session_state]
    assert left == [], left
