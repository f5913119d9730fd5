"""Map: a 2-D projection of one model's features (PCA, UMAP, t-SNE) coloured by label; a
click searches with that image, whose top-k are ringed on the map; an uploaded image is
placed on the map without recomputing it."""

from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from cbir.collection import image_extensions
from cbir.errors import CBIRError
from cbir.images import thumbnail_data_url
from cbir.maps import MAP_METHODS, MAP_THUMBNAILS_MAX, MAPS, embedding_map, map_cached, map_status
from cbir.request import parse_search
from app_pages.common import require_login, get_engine, get_service, long_job_slot, model_label, plain, result_grid, show_error, thumbnail_of, upload_bytes

#: a five-pointed star as an SVG path in Vega's unit square, for the query
STAR = "M0,-1L0.22,-0.31L0.95,-0.31L0.36,0.12L0.59,0.81L0,0.38L-0.59,0.81L-0.36,0.12L-0.95,-0.31L-0.22,-0.31Z"


@st.cache_data(max_entries=4, show_spinner=False)
def _data_urls(files: tuple[tuple[str, float], ...]) -> list[str | None]:
    out = []
    for path, _mtime in files:
        try:
            out.append(thumbnail_data_url(path))
        except (CBIRError, OSError):  # a removed or unreadable image: the hover shows id and label only
            out.append(None)
    return out


def map_thumbnails(engine, ids: list[str]) -> list[str | None] | None:
    """Hover thumbnails (data URLs, about 2 KB each) for a map of up to MAP_THUMBNAILS_MAX images."""
    if len(ids) > MAP_THUMBNAILS_MAX:
        return None
    files = []
    for i in ids:
        try:
            path = engine.collection.path_of(i)
            files.append((str(path), path.stat().st_mtime))
        except (CBIRError, OSError):
            files.append(("", 0.0))
    return _data_urls(tuple(files))


require_login()  # first: this page also runs if Streamlit ever reaches it without app.py

engine = get_engine()
service = get_service()
collection = engine.collection
st.title("🗺️ Map")
st.caption("Each dot is an image, placed by its features (L2-normalised, cosine geometry; centred on the collection's mean as a search sees them, unless the Centred switch is off). Close dots look alike to the "
           "model; colours are the collection's labels (click a label in the legend to show only its class). Hover a dot to "
           "see the image, click it to search with it; Shift + scroll to zoom, drag to pan, double-click to reset.")

searchable = engine.searchable_models()
if not searchable:
    st.error("No model has features for this collection yet: index one on the Collection page.")
    st.stop()

status = map_status()
c1, c2, c3, c4 = st.columns([2, 1.2, 2.5, 1.5])
model = c1.selectbox("Model", searchable, format_func=model_label, key="map_model")
centre = c4.toggle("Centred", value=True, key="map_centre",
                   help="Map the features centred on the collection's mean, as a search sees them by default "
                        "(turn off to map them as stored). A click searches the same way.")
method = c2.selectbox("Method", MAP_METHODS, key="map_method", help="  \n".join(f"**{m.label}**: {m.description} (at least {m.min_points} images)" for m in MAPS.values()),
                      format_func=lambda m: MAPS[m].label + ("" if status[m][0] else " (not installed)"))
params = {}
with c3:
    for name, (default, low, high) in MAPS[method].params.items():
        step = 1 if isinstance(default, int) else 0.05
        params[name] = st.slider(name.replace("_", " "), type(default)(low), type(default)(high), default, step, key=f"map_{method}_{name}")
if not status[method][0]:
    st.warning(f"{MAPS[method].label} is not available here: {status[method][1]}. PCA always is.")
    st.stop()

bar = st.progress(0.0, text=f"{MAPS[method].label} of {model_label(model)}…")
try:
    def map_progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{MAPS[method].label}: {done}/{total}")

    if map_cached(engine, model, method, params, centre):  # reading a cached map is not a long job
        emap = embedding_map(engine, model, method, params, progress=map_progress, centre=centre)
    else:
        with long_job_slot(map_progress) as progress:
            emap = embedding_map(engine, model, method, params, progress=progress, centre=centre)
except Exception as exc:
    bar.empty()
    show_error(exc)
    st.stop()
bar.empty()
shown = f"{len(emap.ids):,} images" if emap.rows is None else f"a random sample of {len(emap.ids):,} of {emap.total:,} images"
how_mapped = "centred on the collection's mean" if emap.centred else "as stored" + (
    " (too few images to centre)" if centre else "")
st.caption(f"{MAPS[method].label} of {shown}, {how_mapped} · " + (f"computed in {emap.seconds:.1f} s" if emap.seconds else
           f"read from the cache in {1000 * emap.load_seconds:.0f} ms"))

labels = ["—" if (label := collection.label_of(i) if i in collection else None) is None else str(label) for i in emap.ids]
result = st.session_state.get("map_result")
images = map_thumbnails(engine, emap.ids)
if images is None:
    st.caption(f"Hover shows id and label; thumbnails in the hover stop above {MAP_THUMBNAILS_MAX:,} images (a click still shows the image).")
table = pd.DataFrame({"x": emap.coords[:, 0], "y": emap.coords[:, 1], "id": emap.ids, "label": labels})
if images is not None:
    table["image"] = images
pick = alt.selection_point(name="pick", fields=["id"], on="click")
# the wheel zooms only with Shift held: over a full-width chart it took the page's scrolling
zoom = alt.selection_interval(name="zoom", bind="scales", zoom="wheel![event.shiftKey]")
shown_label = alt.selection_point(name="legend", fields=["label"], bind="legend")  # a click on the legend filters
axis = dict(axis=None, scale=alt.Scale(zero=False))
classes = len(set(labels))
points = alt.Chart(table).mark_circle(size=36).encode(
    x=alt.X("x:Q", **axis), y=alt.Y("y:Q", **axis),
    # 20 distinct colours (ten repeated after 10 labels); beyond 20 the legend still names each
    color=alt.Color("label:N", title="label", scale=alt.Scale(scheme="tableau10" if classes <= 10 else "tableau20")),
    opacity=alt.condition(shown_label, alt.value(0.8), alt.value(0.05)),
    tooltip=[*(["image"] if images is not None else []), "id", "label"]).add_params(pick, zoom, shown_label)
layers = [points]


def query_point(query: dict) -> tuple[tuple[float, float], str]:
    """Where the query goes on this map, and how it got there: a collection image is its own
    dot; an upload (or an image a sampled map left out) is placed by the map's own fit."""
    if query["id"] is not None and (point := emap.point_of(query["id"])) is not None:
        return point, "its own dot"
    vector = query["vector"] if query["id"] is None else engine.query_vector(model, image_id=query["id"])
    placing = st.progress(0.0, text=f"Placing the image on the {MAPS[method].label} map…")
    start = time.perf_counter()
    point = emap.place(vector, progress=lambda done, total: placing.progress(
        min(done / max(total, 1), 1.0), text=f"Fitting {MAPS[method].label} once in this process to place new images: {done}/{total}"))
    placing.empty()
    how = MAPS[method].placement
    return point, f"{how} in {1000 * (time.perf_counter() - start):.0f} ms"


def search_with(kind: str, value) -> None:
    """Search the map's model with a dot's image (``kind`` "id") or an upload's bytes, the map's
    way (centred or as stored), place the query on the map, and run the page again to draw it."""
    try:
        res = service.search(parse_search([model], "cosine", 10, image_id=value if kind == "id" else None,
                                          image=value if kind == "upload" else None, centre=emap.centred)).body
        query = {"model": model, "query": kind, "id": value if kind == "id" else None,
                 "vector": engine.query_vector(model, image=value) if kind == "upload" else None,
                 "hits": res["models"][model]["results"], "ranked": res["models"][model], "map": emap.key,
                 "centred": emap.centred}
        query["point"], query["how"] = query_point(query)
    except Exception as exc:
        show_error(exc)
        return
    st.session_state.update(map_result=query)
    st.rerun()


if result and result.get("model") == model and result.get("centred") != emap.centred:
    # centring turned on or off: the shown query is searched again the map's way before anything is
    # drawn (its star and rings were the other way's); an upload the page no longer holds is dropped
    held = st.session_state.get("map_upload")
    again = ("id", result["id"]) if result["id"] else ("upload", upload_bytes(held)) if held is not None else None
    if again is not None and again[1] is not None:
        search_with(*again)  # (reruns; on an error, said, the query is dropped)
    st.session_state.pop("map_result", None)
    result = None
if result and result.get("model") == model and result.get("map") != emap.key:  # another method or parameters
    try:
        result["point"], result["how"] = query_point(result)
        result["map"] = emap.key
    except Exception as exc:
        show_error(exc)
        result = None
if result and result.get("model") == model:
    top = table[table["id"].isin([h["id"] for h in result["hits"]])]
    qx, qy = result["point"]
    layers += [alt.Chart(top).mark_point(size=260, filled=False, color="black", strokeWidth=2).encode(x="x:Q", y="y:Q"),
               # black, a colour no label has (the red star was a class's colour)
               alt.Chart(pd.DataFrame({"x": [qx], "y": [qy]})).mark_point(
                   shape=STAR, size=900, filled=True, color="#111111", stroke="white", strokeWidth=1.5).encode(x="x:Q", y="y:Q")]
chart = alt.layer(*layers).properties(height=620).configure_view(strokeWidth=0)
event = st.altair_chart(chart, key=f"map_plot_{model}_{method}", on_select="rerun", width="stretch")

picked = [p.get("id") for p in ((event.selection or {}).get("pick") or [] if event else []) if p.get("id")]
upload = st.file_uploader("…or place an uploaded image on the map", type=sorted(e[1:] for e in image_extensions()), key="map_upload",
                          max_upload_size=engine.settings.max_upload_mb)
# act on what changed since the last run: a click on a dot, or a new upload (either may stay set)
seen = st.session_state.setdefault("map_seen", {"pick": None, "upload": None})
now = {"pick": picked[0] if picked else None, "upload": upload.file_id if upload is not None else None}
new_query = (("id", now["pick"]) if now["pick"] and now["pick"] != seen["pick"] else
             ("upload", upload_bytes(upload)) if now["upload"] and now["upload"] != seen["upload"] else None)
seen.update(now)
if new_query and new_query[1] is not None:  # (None: an upload over the limit, said above)
    search_with(*new_query)

if result and result.get("model") == model:
    if result["id"]:
        c1, c2 = st.columns([1, 5])
        c1.image(thumbnail_of(engine, result["id"], 192), caption=f"query {plain(result['id'])}")
        c2.markdown(f"**Top 10 for {plain(result['id'])}** (ringed on the map; the star is the query)")
        if c2.button("🔎 Open in Search", key="map_open_search", help="This image as the Search page's query, with this model"):
            chosen = st.session_state.get("models") or []
            # the Search page's centring as the map searched (a URL value equal to the switch's default
            # does not override what the session remembers: set it here as well)
            st.session_state.update(search_query_id=result["id"], search_linked=True,
                                    models=chosen if model in chosen else [model], centre=bool(result.get("centred", True)))
            st.session_state.pop("search_result", None)  # searched at once on arrival
            st.switch_page("app_pages/search.py", query_params={**st.query_params.to_dict(), "q": result["id"],
                                                                   "centre": "true" if result.get("centred", True) else "false"})
    else:
        st.markdown("**Top 10 for the uploaded image** (the star is where it lands: placed, not recomputed)")
    st.caption(f"The star: {result['how']}. Searched by cosine distance, "
               + ("centred on the collection's mean." if result.get("centred") else "as stored."))
    result_grid(engine, result["ranked"], key="map_grid")
