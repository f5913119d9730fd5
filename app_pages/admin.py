"""Admin: users, roles, passwords and the authentication log (admins only)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from cbir.auth.records import ROLES
from cbir.export import write_csv
from app_pages.common import get_users, plain, require_login, show_error

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

if "admin_notice" in st.session_state:  # kept until the next action: a rerun (the login cookie's) wiped it
    st.success(st.session_state["admin_notice"])
st.subheader("Users")
st.dataframe(
    pd.DataFrame([{"Username": u.username, "Name": u.name, "Email": u.email, "Role": u.role,
                   "Status": "disabled" if u.disabled else "active", "Created": when(u.created)} for u in all_users]),
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
    st.markdown("**Change a role, disable or enable**")
    others = {u.username: u for u in all_users if u.username != me}  # not yourself: another admin can
    # outside the form, so the role and status below show the chosen user's
    target = st.selectbox("User to change", list(others), key="admin_change_user")
    current = others.get(target)
    with st.form("admin_change"):
        new_role = st.selectbox("Role", ROLES, index=ROLES.index(current.role) if current else 0, key=f"admin_change_role_{target}")
        status = st.radio("Status", ["active", "disabled"], index=int(bool(current and current.disabled)), horizontal=True,
                          key=f"admin_change_status_{target}",
                          help="A disabled user is refused at login; their sessions and tokens end at once")
        if st.form_submit_button("Apply") and current is not None:
            try:
                if new_role != current.role:
                    users.set_role(target, new_role, actor=me, source="app")
                if (status == "disabled") != current.disabled:
                    users.set_disabled(target, status == "disabled", actor=me, source="app")
                # the state reached, not the steps taken: the same words if Apply is pressed twice
                st.session_state["admin_notice"] = f"{target} is now: role {new_role}, {status}."
                st.rerun()  # the table above shows it
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
    f1, f2 = st.columns([1, 2])
    who_filter = f1.text_input("User or source contains", key="admin_log_who", placeholder="e.g. student or 127.0.0.1")
    events = sorted({e["event"] for e in log})
    event_filter = f2.multiselect("Events", events, key="admin_log_events", placeholder="every event")
    needle = who_filter.strip().lower()
    rows = [{"Time": when(e["time"]), "Event": e["event"], "User": e["username"], "Source": e["source"],
             "Outcome": e["outcome"], "By": e.get("actor", "")} for e in log
            if (not event_filter or e["event"] in event_filter)
            and (not needle or needle in str(e["username"]).lower() or needle in str(e["source"]).lower())]
    st.caption(f"{len(rows)} of the last {len(log)} events" + (f" · user or source contains “{plain(needle)}”" if needle else "")
               + (f" · events: {', '.join(event_filter)}" if event_filter else ""))
    st.dataframe(pd.DataFrame(rows, columns=["Time", "Event", "User", "Source", "Outcome", "By"]), hide_index=True, width="stretch",
                 height=360)
    # usernames and sources come from login attempts: every cell neutralised for spreadsheets (cbir.export.write_csv)
    # the file's name says the filter (a name safe on every file system)
    named = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", part)[:40] for part in [needle, *event_filter] if part)
    st.download_button("⬇ CSV of these events", write_csv(list(rows[0]) if rows else ["Time"], (r.values() for r in rows)),
                       f"auth-log{'-' + named if named else ''}.csv", "text/csv", key="admin_log_csv", on_click="ignore",
                       disabled=not rows)
else:
    st.info("No events yet.")
