"""CBIR workbench: Streamlit entry point. Page config, the login gate, navigation by role."""

from __future__ import annotations

from pathlib import Path

import streamlit as st


def url_page() -> str:
    """The page named by the URL of this run ("" for the default page)."""
    from urllib.parse import urlparse

    try:
        return urlparse(st.context.url or "").path.rstrip("/").rsplit("/", 1)[-1]
    except Exception:
        return ""


def rerun_names_no_page() -> bool:
    """This run was asked for by a browser not yet told its page.

    Streamlit's browser names the main script's hash in any rerun it sends before the run's
    navigation reaches it, and Streamlit resolves that hash to the default page: the cookie
    manager's first rerun (sent once its frame has loaded) sent a deep link to /admin, logged in
    from the cookie, on to Search under load, and rewrote the URL to "/"."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        return False
    pages = ctx.pages_manager
    return pages.intended_page_script_hash == pages.main_script_hash


#: Deep links: how often a session may be sent on to the page its first URL named.
ENTRY_SWITCHES = 5
# Remember that page before any other Streamlit call: the login (form or cookie) takes a few
# reruns, and a rerun the browser asks for (the cookie manager's) can interrupt this first
# run; the reruns carry no page name, so the login form shows on the default page and the
# URL's page would be forgotten.
if "auth_entry_page" not in st.session_state:
    st.session_state["auth_entry_page"] = (url_page(), ENTRY_SWITCHES)

# no page_title: each page's own title names the browser tab ("Search", "Evaluate", ...); "auto"
# starts the sidebar collapsed on a narrow screen (it covered 300 of a phone's 390 px)
st.set_page_config(page_icon="🔎", layout="wide", initial_sidebar_state="auto")
# Thumbnail grids (app_pages.common.tiles) without a "Fullscreen" button per image: 28 Tab stops
# from the find box to Search. A smaller top margin: the first result row in view at 1280x720.
# In the query picker the whole tile picks, not only the id button under the thumbnail: the
# button's ::after is stretched over its tile (Bootstrap's "stretched link"), so a click on the
# picture lands on the button (Streamlit images take no clicks).
st.html("<style>[class*='st-key-cbir_tiles_'] [data-testid='stElementToolbar'] {display: none}"
        "[data-testid='stMainBlockContainer'] {padding-top: 3rem}"
        "[class*='st-key-cbir_tile_search_picker_'] {position: relative}"
        "[class*='st-key-cbir_tile_search_picker_'] [class*='st-key-search_pick_'],"
        " [class*='st-key-cbir_tile_search_picker_'] [class*='st-key-search_pick_'] * {position: static}"
        "[class*='st-key-cbir_tile_search_picker_'] [class*='st-key-search_pick_'] button::after"
        " {content: ''; position: absolute; inset: 0; cursor: pointer}</style>")

import streamlit_authenticator as stauth  # noqa: E402

from cbir.config import install_secret, server_settings  # noqa: E402
from cbir.redisdb import ServiceUnavailable  # noqa: E402
from cbir.auth.bootstrap import DEMO_USERS, bootstrap  # noqa: E402
from cbir.errors import AccountDisabledError, AuthError, ConfigError, LockedError  # noqa: E402
from app_pages.common import collection_switcher, get_users, note_on_page, show_error, touch_activity  # noqa: E402

try:
    settings = server_settings()  # the environment's, refused (ConfigError) when a server must not run with them
except ConfigError as exc:
    st.error(str(exc))
    st.stop()


@st.cache_resource(show_spinner=False)
def _bootstrap_users() -> bool:
    bootstrap(get_users(), settings)
    return True


def _login_source() -> str:
    try:
        ip = st.context.ip_address or "local"
    except Exception:
        ip = "local"
    return f"app:{ip}"


def build_authenticator() -> stauth.Authenticate | None:
    users = get_users()
    try:
        _bootstrap_users()
        credentials = users.credentials()
    except ServiceUnavailable as exc:
        st.title("🔎 CBIR workbench")
        st.warning(f"Login is unavailable: {exc}. Searching needs a login; please retry in a moment.", icon="⚠️")
        st.stop()
    authenticator = stauth.Authenticate(
        credentials,
        cookie_name="cbir_auth",
        cookie_key=install_secret(settings),
        cookie_expiry_days=settings.session_minutes / (24 * 60),
        auto_hash=False,
        # the library sleeps 0.7 s before every login() call while logged out (once for the
        # old cookie component's latency, mkhorasani/Streamlit-Authenticator#124); 0.4 reads
        # the cookie from st.context.cookies at once, and the logged-out page calls login()
        # twice: 1.4 s per run, a login took 2.5 s alone and 5 s with four people at once
        login_sleep_time=0,
    )

    # Route the password check through the Redis user store: lockout, legacy rehash, audit log.
    model = authenticator.authentication_controller.authentication_model

    def check_credentials(username: str, password: str) -> bool:
        st.session_state.pop("auth_error", None)
        wait = users.login_allowed(_login_source())
        if wait:
            st.session_state["auth_error"] = f"Too many login attempts from your address: wait {wait} s."
            return False
        try:
            user = users.authenticate(username, password, source=_login_source())
            st.session_state["auth_binding"] = users.binding(user.username)
            return True
        except (LockedError, AccountDisabledError) as exc:
            st.session_state["auth_error"] = str(exc)
        except AuthError:
            st.session_state["auth_error"] = "Wrong username or password."
        except ServiceUnavailable as exc:
            st.session_state["auth_error"] = str(exc)
        return False

    model.check_credentials = check_credentials

    # An unreadable cookie is no cookie: the library catches only bad signatures and damaged
    # tokens, so a cookie naming another algorithm (alg "none", RS256, planted by a sibling
    # site) raised InvalidAlgorithmError and hid the login form until the cookie was cleared.
    cookie_model = authenticator.cookie_controller.cookie_model
    decode = cookie_model._token_decode

    def token_decode():
        import jwt

        try:
            return decode()
        except jwt.PyJWTError:
            return False

    cookie_model._token_decode = token_decode
    return authenticator


def login_page(authenticator: stauth.Authenticate) -> None:
    left, mid, right = st.columns([1, 1.3, 1])
    with mid:
        st.title("🔎 CBIR workbench")
        st.caption("Content-based image retrieval: deep features, four distances, fusion, evaluation.")
        try:
            authenticator.login(location="main", fields={"Form name": "Log in", "Login": "Log in"})
        except Exception as exc:  # e.g. a cookie for a deleted user
            show_error(exc)
        if st.session_state.get("authentication_status") is False:
            st.error(st.session_state.get("auth_error", "Wrong username or password."), icon="🔒")
        if st.session_state.get("auth_expired"):
            st.info("Your session expired after inactivity; please log in again.")
        if st.session_state.get("auth_revoked"):
            st.info("Your account changed (password, role or removal); please log in again.")
        if settings.demo:
            with st.container(border=True):
                st.markdown("**Demo accounts** (demo mode only)")
                st.markdown(
                    "\n".join(f"- `{u}` / `{p}` — {role}" for u, p, role, _ in DEMO_USERS)
                )


def session_still_valid(authenticator: stauth.Authenticate) -> bool:
    """The session belongs to the user as they are now: same identity, same credentials.

    A password login records (uid, credential version); a login from the cookie (a reload,
    a new tab) is accepted only if the cookie was issued after the last credential change.
    A reset, a role change or a delete (+ re-create) therefore ends every session at once."""
    username = st.session_state.get("username") or ""
    current = get_users().binding(username)
    if current is None:
        return False
    binding = st.session_state.get("auth_binding")
    if binding is None:
        import jwt

        try:
            token = jwt.decode(st.context.cookies.get("cbir_auth", ""), install_secret(settings), algorithms=["HS256"])
            issued = float(token["exp_date"]) - settings.session_minutes * 60
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            return False
        if token.get("username") != username or issued < current[2]:
            return False
        st.session_state["auth_binding"] = binding = current
    return tuple(binding) == tuple(current)


#: Session-state prefixes of what a user did; cleared when their session ends.
USER_STATE = ("search_", "eval_", "map_", "coll_", "admin_", "auth_binding", "auth_last_page", "collection_")


def end_session(authenticator: stauth.Authenticate, why: str) -> None:
    authenticator.logout(location="unrendered")
    for key in [k for k in st.session_state if k.startswith(USER_STATE)]:
        del st.session_state[key]
    st.session_state[why] = True
    st.rerun()


PAGES = [  # (file, title, icon, roles allowed; None = every role)
    ("app_pages/search.py", "Search", "🔎", None),
    ("app_pages/evaluate.py", "Evaluate", "📈", None),
    ("app_pages/map.py", "Map", "🗺️", None),
    ("app_pages/collection.py", "Collection", "🗂️", None),
    ("app_pages/admin.py", "Admin", "🛡️", {"admin"}),
]
# The default page is served at "/" but reserves its pathname, which no URL then opens: it gets
# DEFAULT_PATH, and its name (/search) is a hidden page of its own (it was Streamlit's "Page not found")
SEARCH_ALIAS, DEFAULT_PATH = Path(PAGES[0][0]).stem, "home"

authenticator = build_authenticator()
if not st.session_state.get("authentication_status"):
    # A reload or a new tab: log in from the cookie before routing, so that the page in
    # the URL (not the default one) opens.
    try:
        authenticator.login(location="unrendered")
    except Exception:  # a cookie for a deleted user, a damaged cookie: show the form
        pass
if not st.session_state.get("authentication_status"):
    # st.navigation on every run, and no folder named pages/ beside this script: Streamlit
    # runs a pages/ script named by the URL *instead of* this one until some session has
    # called st.navigation (an anonymous /evaluate on a fresh server opened the page, and
    # the first "Log in" was dropped because its form belonged to that other navigation).
    # Before login, every page URL shows the login form; after it, the same URL its page.
    login_pages = [
        st.Page(lambda: login_page(authenticator), title="Log in", icon="🔒", url_path=Path(f).stem if i else DEFAULT_PATH,
                default=i == 0)
        for i, (f, *_rest) in enumerate(PAGES)
    ]
    login_pages.append(st.Page(lambda: login_page(authenticator), title="Log in", icon="🔒", url_path=SEARCH_ALIAS, visibility="hidden"))
    st.navigation(login_pages, position="hidden").run()
    st.stop()

try:
    valid = session_still_valid(authenticator)
except ServiceUnavailable:
    valid = True  # keep working while Redis is briefly away; checked again on the next run
if not valid:
    get_users().log("session_revoked", st.session_state.get("username") or "", _login_source())
    end_session(authenticator, "auth_revoked")

if not touch_activity():
    get_users().log("session_expired", st.session_state.get("username") or "", _login_source())
    end_session(authenticator, "auth_expired")
st.session_state.pop("auth_expired", None)
st.session_state.pop("auth_revoked", None)

role = (st.session_state.get("roles") or ["student"])[0]
with st.sidebar:
    st.markdown(f"**{st.session_state.get('name') or st.session_state.get('username')}** · {role}")

    def _on_logout(info: dict) -> None:
        get_users().log("logout", info.get("username") or "", _login_source())
        for key in [k for k in st.session_state if k.startswith(USER_STATE)]:
            del st.session_state[key]

    authenticator.logout("Log out", location="sidebar", key="auth_logout", callback=_on_logout)

pages = [
    st.Page(f, title=title, icon=icon, default=i == 0, url_path=None if i else DEFAULT_PATH)
    for i, (f, title, icon, roles) in enumerate(PAGES) if roles is None or role in roles
]
# /search, the default page by its name, opens it (with the link's parameters)
alias = st.Page(lambda: st.switch_page(pages[0], query_params=st.query_params.to_dict()), title=pages[0].title,
                url_path=SEARCH_ALIAS, visibility="hidden")
current = st.navigation([*pages, alias])
wanted, switches = st.session_state.get("auth_entry_page") or (None, 0)
by_path = {p.url_path: p for p in pages}
if wanted == SEARCH_ALIAS:  # /search: the default page, whose path is "" (it crashed the app)
    wanted = ""
if wanted and wanted not in by_path and switches == ENTRY_SWITCHES:  # a link to a page this role may not open
    refused = next(((title, roles) for f, title, _icon, roles in PAGES if Path(f).stem == wanted), None)
    if refused is not None and refused[1]:  # said on the page the user lands on, until they go elsewhere (reruns would wipe it)
        st.session_state["auth_refused_note"] = (f"The {refused[0]} page is for {' and '.join(sorted(refused[1]))} "
                                                 f"accounts; you are logged in as a {role}.", current.url_path)
note_on_page("auth_refused_note", current.url_path, "🔒")
if wanted in by_path and wanted != current.url_path and switches > 0:
    # kept until a run lands there: a rerun the browser asks for at the same moment (the
    # cookie manager's) carries the page it last showed and can undo one switch
    st.session_state["auth_entry_page"] = (wanted, switches - 1)
    # before the switcher is drawn, and with the URL's parameters: the collection goes along
    # (a shared /map?collection=X link landed on Search, or crashed, after the login)
    st.switch_page(by_path[wanted], query_params=st.query_params.to_dict())
st.session_state["auth_entry_page"] = None  # once per session
last = st.session_state.get("auth_last_page")
if rerun_names_no_page() and last in by_path and last != current.url_path:  # the page this session showed
    st.switch_page(by_path[last], query_params=st.query_params.to_dict())
if st.session_state.get("authentication_status"):
    st.session_state["auth_last_page"] = current.url_path
    with st.sidebar:
        collection_switcher(current.url_path)
# else the sidebar's Log out, in this run: it goes on logged out (the page says "log in"; the cookie's
# deletion is a component of this run) and leaves the session nothing of this user's for the next one
current.run()
