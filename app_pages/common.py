"""Shared pieces of the UI: cached engine handles, the login gate, result grids and plots.

Session-state keys carry the page's prefix (``auth_``, ``search_``, ``eval_``, ...).
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import Callable, Iterator

import plotly.graph_objects as go
import streamlit as st

from cbir.cache import ResultCache
from cbir.config import get_settings
from cbir.distances import METRIC_LABELS
from cbir.engine import Engine
from cbir.errors import UNEXPECTED, CBIRError, contract_for, said_to
from cbir.evaluation import PROTOCOL
from cbir.export import pr_figure, report_curves
from cbir.extractors import MODELS, get_spec
from cbir.redisdb import ServiceUnavailable, get_redis
from cbir.collection_registry import CollectionRegistry
from cbir.service import SearchService, Services
from cbir.auth.users import UserStore



@st.cache_resource(show_spinner="Loading the collection and its feature stores…")
def get_services() -> Services:
    """The search service of every collection, opened on first use (the default at once):
    one set per app process, shared by every session; each session works on the one it chose
    (:func:`current_collection`)."""
    from cbir.process import return_large_buffers

    return_large_buffers()  # once per app process: big temporaries go back to the OS
    settings = get_settings()
    default = SearchService(Engine(settings.collection, settings), ResultCache(get_redis(settings), enabled=settings.cache))
    return Services(default, CollectionRegistry(settings), settings.open_collections)


#: The sidebar's collection switcher: its session-state key and the page URL's parameter
#: (``?collection=NAME``, absent for the default collection), kept across page switches.
COLLECTION_KEY = "collection"
#: Session state: a collection to switch to on the next run (set after the switcher has run).
COLLECTION_NEXT = "collection_next"
#: Session state: the collection this session works on (the truth; the widget shows it). A
#: rerun carrying an older URL, or a widget value lost in a redraw, cannot switch it.
COLLECTION_CURRENT = "collection_current"
#: Session state: (warning, page) when the session fell back to the default collection (a link's
#: unknown name, a collection removed); shown on that page (note_on_page) until the user goes
#: elsewhere or picks a collection.
COLLECTION_NOTE = "collection_note"
#: Session-state prefixes of the pages' work; cleared when the session switches collection.
PAGE_STATE = ("search_", "eval_", "map_", "coll_")


def current_collection() -> str:
    """The collection this session works on (default: the server's default collection)."""
    return st.session_state.get(COLLECTION_CURRENT) or get_services().default.engine.collection.name


def switch_collection(name: str) -> None:
    """Open ``name`` on the next run (after an add or a remove: the switcher has run)."""
    st.session_state[COLLECTION_NEXT] = name
    st.rerun()


def _collection_picked() -> None:
    """The user picked a collection in the switcher (a callback: before the script runs)."""
    picked = st.session_state.get(COLLECTION_KEY)
    if picked and picked != st.session_state.get(COLLECTION_CURRENT):
        st.session_state[COLLECTION_CURRENT] = picked
        st.session_state.pop(COLLECTION_NOTE, None)
        _clear_page_state()


def _clear_page_state() -> None:
    """The pages' work, and the Search page's model choice and weights (the models of another
    collection); its other settings are kept (from the page URL)."""
    for key in [k for k in st.session_state if k.startswith(PAGE_STATE) or k == "models" or k.startswith("w_")]:
        del st.session_state[key]


def note_on_page(key: str, page: str, icon: str) -> None:
    """Show the warning kept in session state under ``key`` as (text, page) while the session is
    on that page, and drop it once the user is elsewhere: a warning drawn by one run only was
    wiped by the next rerun (the login cookie's), and one kept for the session followed the user."""
    note = st.session_state.get(key)
    if note and note[1] == page:
        st.warning(note[0], icon=icon)
    elif note:
        del st.session_state[key]


def collection_switcher(page: str = "") -> str:
    """The sidebar's collection picker, kept in the page URL (``?collection=NAME``, none for the
    default) so that a link opens the same collection. The session's choice (COLLECTION_CURRENT)
    is the truth: the URL is read once, when the session first draws the switcher (a rerun
    carrying an older URL, such as the login cookie's, switched a widget bound to the URL back;
    a widget value lost in a redraw switched the session to the default and wiped its work). Results,
    evaluations and maps of the previous collection are dropped on a switch. A name the server
    does not know (a stale link, a collection an admin removed) falls back to the default, with
    a warning, kept on ``page`` (the URL path of the page drawn) until the user leaves it or picks
    a collection. Returns the chosen name."""
    from cbir.collection_registry import NAME_RE

    services = get_services()
    default = services.default.engine.collection.name
    try:
        names = list(services.registry.entries())
    except CBIRError as exc:  # a damaged registry file: the default still works
        show_error(exc)
        names = [default]
    state = st.session_state
    current = state.get(COLLECTION_CURRENT)
    if current is None:  # the session's first draw: the link's collection
        asked = st.query_params.get(COLLECTION_KEY)
        if asked is not None and asked not in names:
            # a URL is hostile: only a valid name is echoed
            what = f"There is no collection `{asked}` on this server" if NAME_RE.fullmatch(asked) else "The link names no collection of this server"
            state[COLLECTION_NOTE] = (f"{what} (removed, or a mistyped link); showing `{default}`.", page)
        current = state[COLLECTION_CURRENT] = asked if asked in names else default
    pending = state.pop(COLLECTION_NEXT, None)
    if pending in names and pending != current:
        current = state[COLLECTION_CURRENT] = pending
        state.pop(COLLECTION_NOTE, None)
        _clear_page_state()
    elif current not in names:
        state[COLLECTION_NOTE] = (f"The collection `{current}` was removed; showing `{default}`.", page)
        current = state[COLLECTION_CURRENT] = default
        _clear_page_state()
    note_on_page(COLLECTION_NOTE, page, "⚠️")
    # The session's choice first: it is the widget's value (set here when it changed) *and* its
    # default, so a redrawn widget that lost its value falls back to it (to the default collection,
    # before: the next rerun switched the session to it)
    options = [current, *(n for n in names if n != current)]
    if state.get(COLLECTION_KEY) != current:
        state[COLLECTION_KEY] = current
    chosen = st.selectbox("Collection", options, index=0, key=COLLECTION_KEY, on_change=_collection_picked,
                          help="The image collection every page works on; the page URL keeps it, so a link opens the same "
                               "one. Add one on the Collection page.") or current
    if chosen == default:
        st.query_params.pop(COLLECTION_KEY, None)
    elif st.query_params.get(COLLECTION_KEY) != chosen:
        st.query_params[COLLECTION_KEY] = chosen
    return chosen


def get_service() -> SearchService:
    """The search service of this session's collection (opened with a spinner the first time).
    A collection removed meanwhile stops the page with a message (the switcher resets it)."""
    services, name = get_services(), current_collection()
    try:
        if services.is_open(name):
            return services.get(name)
        with st.spinner(f"Opening the collection {name}…"):
            return services.get(name)
    except CBIRError as exc:
        show_error(exc)
        st.stop()


def get_engine() -> Engine:
    return get_service().engine


@st.cache_resource
def get_users() -> UserStore:
    settings = get_settings()
    return UserStore(get_redis(settings), token_ttl=settings.session_minutes * 60)


def reload_engine() -> None:
    """After this session's collection changed on disk (uploads, imports): rescanned for
    every session."""
    get_services().reload(current_collection())


def model_label(name: str) -> str:
    """The registry's label of a model (imported models and stored recipes included); "Combined"
    for the fused list; the name itself for anything else."""
    if name == "combined":
        return "Combined"
    try:
        return get_spec(name).label
    except CBIRError:
        return name


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def plain(text) -> str:
    """``text`` shown literally inside Streamlit Markdown: every ASCII punctuation character
    backslash-escaped (CommonMark allows it for all of them), so an id or a label from a user's
    folder cannot become a link, emphasis or ``$...$`` math. (HTML is escaped by Streamlit.)"""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", str(text))


def upload_bytes(upload) -> bytes | None:
    """An uploaded image's bytes, or None with a message when it is over CBIR_MAX_UPLOAD_MB.
    The uploaders pass that limit as ``max_upload_size``, which only the browser enforces:
    Streamlit's own limit (server.maxUploadSize) is the larger zip limit, CBIR_ZIP_MAX_MB."""
    limit = get_settings().max_upload_mb
    if upload.size > limit << 20:
        st.error(f"{upload.name}: {upload.size / 2**20:.1f} MB is over the {limit} MB limit (CBIR_MAX_UPLOAD_MB)", icon="🚫")
        return None
    return upload.getvalue()


def current_role() -> str:
    roles = st.session_state.get("roles") or ["student"]
    return roles[0]


@contextlib.contextmanager
def long_job_slot(progress: Callable[[int, int], None]) -> Iterator[Callable[[int, int], None]]:
    """One of the user's ``CBIR_JOBS_PER_USER`` long jobs (evaluations, weight sweeps, map fits), counted
    with the API's in Redis (``cbir.jobs.UserSlots``): a second tab or an API call at the same
    time gets :class:`~cbir.errors.BusyError`. Yields ``progress`` wrapped to renew the lease
    (30 s) as the job moves; with Redis away the job runs unlimited."""
    from redis import exceptions as redis_errors

    from cbir.jobs import UserSlots

    settings = get_settings()
    try:
        lease = UserSlots(get_redis(settings), settings.jobs_per_user).lease(st.session_state.get("username") or "")
    except (ServiceUnavailable, redis_errors.RedisError):
        yield progress
        return

    def forward(done: int, total: int) -> None:
        with contextlib.suppress(Exception):  # a failed renewal: the lease may expire, the job goes on
            lease.renew_if_due()
        progress(done, total)

    try:
        yield forward
    finally:
        with contextlib.suppress(Exception):
            lease.release()


def require_login(roles: set[str] | None = None) -> str:
    """The first call of every page: stop unless this session holds a login that is still valid.

    ``app.py`` checks the login before it runs any page; this is the second lock (defence in
    depth), for a page that runs without ``app.py`` before it (Streamlit runs the scripts of a
    folder named ``pages/`` by URL until some session calls ``st.navigation``, which is why the
    pages live in ``app_pages/``). A login is valid when the session's binding (uid, credential
    version), recorded at the password or cookie login, is the user's binding in Redis now.
    Returns the user's role; ``roles`` restricts the page to those roles."""
    username = st.session_state.get("username")
    binding = st.session_state.get("auth_binding")
    valid = bool(st.session_state.get("authentication_status") and username and binding)
    if valid:
        try:
            current = get_users().binding(username)
            valid = current is not None and tuple(current) == tuple(binding)
        except ServiceUnavailable:
            pass  # as in app.py: a login made before Redis went away stays valid until it is back
    if not valid:
        st.warning("Please log in first.", icon="🔒")
        st.markdown("[Go to the login page](/)")
        st.stop()
    role = current_role()
    if roles is not None and role not in roles:
        st.error(f"This page is for {' and '.join(sorted(roles))} accounts only.", icon="🔒")
        st.stop()
    return role


def for_this_user(message: str) -> str:
    """``message`` with server paths shown relative to the project (others as ``…/name``),
    unless the user is an admin: the same rule as the API's."""
    from pathlib import Path

    from cbir.errors import public_paths

    return message if current_role() == "admin" else public_paths(message, Path.cwd())


def show_error(exc: Exception) -> None:
    """One clear message, never a stack trace, and no server path for a non-admin: shown as
    the error contract's level says (``cbir.errors.CONTRACTS``: st.error or st.warning);
    an error not in the table is an "Unexpected problem"."""
    contract = contract_for(exc)
    message = f"Unexpected problem: {type(exc).__name__}: {exc}" if contract is UNEXPECTED else said_to(exc, "app")
    if contract.level == "warning":
        st.warning(for_this_user(message), icon="⚠️")
    else:
        st.error(for_this_user(message), icon="🚫")


def read_link(choices: dict[str, tuple], page: str, also: list[str] | None = None) -> None:
    """Make a hand-written link's settings count, and say what it names that is not here.

    Streamlit binds a widget to the URL by the label of its option (``metric=Euclidean``)
    and drops anything else without a word, so ``metric=euclidean`` (the API's and the CLI's
    name) was ignored. For each bound key in ``choices`` (key -> (options, label of an
    option, whether several are chosen[, aliases: word -> option])), called before its widget:
    a value naming an option by its key, its label or an alias, in any case, is rewritten to the label and the page opened again
    on the corrected link (``page``, via ``st.switch_page``: the widgets then read the URL as
    from a bookmark, and the URL shows them). The values naming nothing, and the page's own
    ``also`` (e.g. an unknown image), are shown in a warning that stays while the link's
    settings are unchanged (the login and the switch take several runs)."""
    def bound(pairs) -> tuple:
        return tuple(sorted((k, v) for k, v in pairs if k in choices))

    params = [(k, v) for k in st.query_params for v in st.query_params.get_all(k)]
    carried = st.session_state.pop(LINK_UNKNOWN, None)  # said before the switch
    if carried is not None:
        unknown = carried
    else:
        unknown, rewritten = [], False
        for key, (options, label_of, several, *aliases) in choices.items():
            raw = [v for k, v in params if k == key]
            values = [v for v in raw if v.strip()]
            labels = {str(label_of(o)) for o in options}
            if len(values) == len(raw) and (several or len(values) <= 1) and all(v in labels for v in values):
                continue  # Streamlit reads these itself
            if len(values) < len(raw):  # `models=` cleared the models without a word
                unknown.append(f"{key}= (empty)")
            by_name = {str(o).lower(): str(label_of(o)) for o in options} | {lab.lower(): lab for lab in labels} \
                | {word: str(label_of(o)) for word, o in (aliases[0] if aliases else {}).items()}
            found = [by_name.get(v.strip().lower()) for v in values]
            unknown += [f"{key}={v}" for v, lab in zip(values, found) if lab is None]
            found = list(dict.fromkeys(lab for lab in found if lab is not None))
            if not several and len(found) > 1:  # the first counts (Streamlit took the first, the page the last)
                unknown += [f"{key}={lab} (one value only)" for lab in found[1:]]
                found = found[:1]
            rewritten = True
            params = [(k, v) for k, v in params if k != key] + [(key, lab) for lab in found]
        unknown += also or []
        if rewritten:
            st.session_state[LINK_UNKNOWN] = unknown
            grouped: dict[str, list[str]] = {}
            for k, v in params:
                grouped.setdefault(k, []).append(v)
            st.switch_page(page, query_params={k: v[0] if len(v) == 1 else v for k, v in grouped.items()})
    if unknown:  # (Streamlit removes a value naming nothing from the URL as its widget registers)
        st.session_state[LINK_NOTE] = (unknown, bound((k, v) for k, v in params if f"{k}={v}" not in unknown))
    note = st.session_state.get(LINK_NOTE)
    if note and note[1] == bound(params):
        st.warning("Left out of this link, as it names nothing here: " + ", ".join(map(plain, note[0]))
                   + ". The other settings are applied.", icon="🔗")
    elif note:
        del st.session_state[LINK_NOTE]  # the settings changed since


LINK_UNKNOWN, LINK_NOTE = "cbir_link_unknown", "cbir_link_note"


def stats_row(service: SearchService) -> None:
    """One line of counters (four metric cards took a hundred pixels above the results)."""
    stats = service.stats()
    searches = stats.get("searches_performed")
    st.caption(f"{stats['images']:,} images indexed · {len(stats['models_searchable'])} / {len(MODELS)} models available · "
               f"{len(stats['metrics'])} metrics · "
               + ("searches performed: unknown (Redis unavailable)" if searches is None
                  else f"{searches:,} search{'' if searches == 1 else 'es'} performed"))


@st.cache_data(max_entries=4000, show_spinner=False)
def thumbnail(path: str, mtime: float, size: int = 256) -> bytes:
    """A square, centre-cropped JPEG thumbnail (cached per file version) so grids line up."""
    from cbir.images import thumbnail_jpeg

    return thumbnail_jpeg(path, size)


def thumbnail_of(engine: Engine, image_id: str, size: int = 256) -> bytes:
    path = engine.collection.path_of(image_id)
    return thumbnail(str(path), path.stat().st_mtime, size)


def hit_html(hit: dict) -> str:
    """The caption under a result's thumbnail: rank, id, label, score, relevance. Ids and
    labels come from file names and labels.csv (``<iframe srcdoc=...>.jpg`` is a legal file
    name), so every value is escaped; numbers are formatted, never pasted."""
    mark = "" if hit["relevant"] is None else ("✅ " if hit["relevant"] else "❌ ")
    border = "#d1d5db" if hit["relevant"] is None else ("#16a34a" if hit["relevant"] else "#dc2626")
    label = f" · {html.escape(str(hit['label']))}" if hit["label"] else ""
    return (f"<div class='cbir-hit' style='border-left:4px solid {border};padding-left:6px;font-size:0.8rem'>"
            f"{mark}<b>#{int(hit['rank'])}</b> id {html.escape(str(hit['id']))}{label}<br>"
            f"<span style='color:#6b7280'>score {float(hit['score']):.4f}</span></div>")


#: A result tile's width in CSS pixels: five in a row beside the query at 1280 px, two on a phone.
TILE_PX = 136


def tiles(key: str, count: int, width: int = TILE_PX) -> list:
    """``count`` containers of ``width`` px in a row that wraps: as many per line as the screen
    holds (``st.columns`` stacked one per line on a phone: a 12,000 px results page). The
    images' fullscreen buttons are hidden (a Tab stop per thumbnail) by the app's style sheet."""
    row = st.container(horizontal=True, wrap=True, gap="small", key=f"cbir_tiles_{key}")
    return [row.container(width=width, key=f"cbir_tile_{key}_{i}") for i in range(count)]


def result_grid(engine: Engine, ranked: dict, key: str = "", feedback: bool = False, query: tuple | None = None,
                labels: set | None = None, width: int = TILE_PX, why: Callable[[str], None] | None = None) -> None:
    """Thumbnails with rank, score and label; relevant ones marked green, others red. ``query``
    (image, caption) comes first, framed in blue: the query beside its results. ``labels``:
    show only the results with these labels (their ranks stay those of the whole list).
    ``why``: each tile gets a *Why?* button calling ``why(result_id)`` (an on_click callback)."""
    hits = ranked["results"]
    if not hits:
        st.info("No results.")
        return
    if labels:
        hits = [h for h in hits if h["label"] in labels]
        if not hits:
            st.caption("None of these results has the labels chosen in *Show only*.")
            return
    boxes = tiles(key or "grid", len(hits) + (query is not None), width)
    if query is not None:
        with boxes.pop(0):
            st.image(query[0], width="stretch")
            st.markdown(f"<div class='cbir-query' style='border-left:4px solid #2563eb;padding-left:6px;font-size:0.8rem'>"
                        f"<b>{html.escape(query[1])}</b></div>", unsafe_allow_html=True)
    for h, tile in zip(hits, boxes):
        with tile:
            try:
                st.image(thumbnail_of(engine, h["id"]), width="stretch")
            except (CBIRError, OSError):
                st.caption("(image removed)")
            st.markdown(hit_html(h), unsafe_allow_html=True)
            if why is not None:
                st.button("Why?", key=f"{key}::why::{h['id']}", on_click=why, args=(h["id"],), type="tertiary",
                          help="Where this result and the query agree: heatmaps from the model's feature maps")
            if feedback:  # read back by the page from st.session_state on the next run (Refine):
                # "ignore" draws a mark at once, with no rerun (a rerun per mark took 1.2-1.5 s)
                # (kept while hidden by a label filter or another view: persist_state)
                st.segmented_control("Feedback", ["👍", "👎"], key=f"{key}::{h['id']}", label_visibility="collapsed",
                                     on_change="ignore", persist_state="page")


def interpolated_figure(reports: list[dict], title: str = "Mean 11-point interpolated PR") -> go.Figure:
    return pr_figure(report_curves(reports), title)


def protocol_note() -> None:
    st.caption(f"**Protocol.** {PROTOCOL}")


def touch_activity() -> bool:
    """Inactivity expiry: False when the session went idle for longer than allowed."""
    limit = get_settings().session_minutes * 60
    now = time.time()
    last = st.session_state.get("auth_last_activity", now)
    st.session_state["auth_last_activity"] = now
    return now - last <= limit
