"""Admin: users, roles, passwords and the authentication log (admins only)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from cbir.auth.records import ROLES
from app_pages.common import get_users, require_login, show_error

require_login(roles={"admin"})  # first: the session, then the role

users = get_users()
me = st.session_state.get("username") or ""
st.title("🛡️ Admin")


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else ""


try:
    all_users = users.list()
except Exception as exc:
    show_error(exc)
    st.stop()

if "admin_notice" in st.session_state:
    st.success(st.session_state.pop("admin_notice"))
st.subheader("Users")
st.dataframe(
    pd.DataFrame([{"Username": u.username, "Name": u.name, "Email": u.email, "Role": u.role, "Created": when(u.created)} for u in all_users]),
    hide_index=True, width="stretch",
)

c1, c2 = st.columns(2)
with c1:
    with st.form("admin_add", clear_on_submit=False):  # a refused user keeps what was typed
        st.markdown("**Add a user**")
        username = st.text_input("Username", key="admin_new_username")
        name = st.text_input("Display name", key="admin_new_name")
        email = st.text_input("Email", key="admin_new_email")
        role = st.selectbox("Role", ROLES, index=ROLES.index("student"), key="admin_new_role")
        password = st.text_input("Password", type="password", key="admin_new_password")
        if st.form_submit_button("Add user", type="primary"):
            try:
                users.create(username, password, role, name, email, actor=me, source="app")
                st.session_state["admin_notice"] = f"User {username.strip().lower()} created."
                for key in ("admin_new_username", "admin_new_name", "admin_new_email", "admin_new_password"):
                    st.session_state.pop(key, None)
                st.rerun()  # the list above shows them, the form is empty again
            except Exception as exc:
                show_error(exc)
with c2:
    names = [u.username for u in all_users]
    with st.form("admin_reset"):
        st.markdown("**Reset a password**")
        who = st.selectbox("User", names, key="admin_reset_user")
        new_password = st.text_input("New password", type="password", key="admin_reset_password")
        if st.form_submit_button("Reset password"):
            try:
                users.set_password(who, new_password, actor=me, source="app")
                st.success(f"Password of {who} reset.")
            except Exception as exc:
                show_error(exc)
    with st.form("admin_delete"):
        st.markdown("**Delete a user**")
        victim = st.selectbox("User", [n for n in names if n != me], key="admin_delete_user")
        sure = st.checkbox("Yes, delete this user", key="admin_delete_confirm")
        if st.form_submit_button("Delete user"):
            if not sure:
                st.warning("Tick the confirmation box first.")
            else:
                try:
                    users.delete(victim, actor=me, source="app")
                    st.success(f"User {victim} deleted.")
                except Exception as exc:
                    show_error(exc)

st.subheader("Authentication log")
try:
    log = users.auth_log(500)
except Exception as exc:
    show_error(exc)
    log = []
if log:
    st.dataframe(
        pd.DataFrame([{"Time": when(e["time"]), "Event": e["event"], "User": e["username"], "Source": e["source"],
                       "Outcome": e["outcome"], "By": e.get("actor", "")} for e in log]),
        hide_index=True, width="stretch", height=360,
    )
else:
    st.info("No events yet.")
