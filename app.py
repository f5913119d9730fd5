"""CBIR workbench: Streamlit entry point. Page config, the login gate, navigation by role."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="CBIR workbench", page_icon="🔎", layout="wide", initial_sidebar_state="expanded")

import streamlit_authenticator as stauth  # noqa: E402

from cbir.config import get_settings  # noqa: E402
from cbir.redisdb import ServiceUnavailable  # noqa: E402
from cbir.users import DEMO_USERS, AuthError, ConfigError, LockedError, bootstrap, check_production_settings  # noqa: E402
from pages.common import get_users, show_error, touch_activity  # noqa: E402

settings = get_settings()

try:
    check_production_settings(settings)
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
        cookie_key=settings.secret_key,
        cookie_expiry_days=settings.session_minutes / (24 * 60),
        auto_hash=False,
    )

    # Route the password check through the Redis user store: lockout, legacy rehash, audit log.
    model = authenticator.authentication_controller.authentication_model

    def check_credentials(username: str, password: str) -> bool:
        st.session_state.pop("auth_error", None)
        try:
            users.authenticate(username, password, source=_login_source())
            return True
        except LockedError as exc:
            st.session_state["auth_error"] = str(exc)
        except AuthError:
            st.session_state["auth_error"] = "Wrong username or password."
        except ServiceUnavailable as exc:
            st.session_state["auth_error"] = str(exc)
        return False

    model.check_credentials = check_credentials
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
        if settings.demo:
            with st.container(border=True):
                st.markdown("**Demo accounts** (demo mode only)")
                st.markdown(
                    "\n".join(f"- `{u}` / `{p}` — {role}" for u, p, role, _ in DEMO_USERS)
                )


authenticator = build_authenticator()
if not st.session_state.get("authentication_status"):
    # st.navigation on every run, so Streamlit never falls back to listing pages/ (which
    # would let a visitor open /search without logging in): before login, the only page
    # is the login form, whatever the URL.
    st.navigation([st.Page(lambda: login_page(authenticator), title="Log in", icon="🔒", url_path="login")], position="hidden").run()
    st.stop()

if not touch_activity():
    get_users().log("session_expired", st.session_state.get("username") or "", _login_source())
    authenticator.logout(location="unrendered")
    st.session_state["auth_expired"] = True
    st.rerun()
st.session_state.pop("auth_expired", None)

role = (st.session_state.get("roles") or ["student"])[0]
with st.sidebar:
    st.markdown(f"**{st.session_state.get('name') or st.session_state.get('username')}** · {role}")

    def _on_logout(info: dict) -> None:
        get_users().log("logout", info.get("username") or "", _login_source())
        for key in [k for k in st.session_state if k.startswith(("search_", "eval_", "coll_", "admin_"))]:
            del st.session_state[key]

    authenticator.logout("Log out", location="sidebar", key="auth_logout", callback=_on_logout)

pages = [
    st.Page("pages/search.py", title="Search", icon="🔎", default=True),
    st.Page("pages/evaluate.py", title="Evaluate", icon="📈"),
    st.Page("pages/collection.py", title="Collection", icon="🗂️"),
]
if role == "admin":
    pages.append(st.Page("pages/admin.py", title="Admin", icon="🛡️"))
st.navigation(pages).run()
