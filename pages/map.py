"""Map: a 2-D projection of one model's features (PCA, UMAP, t-SNE) coloured by label; a
click searches with that image, whose top-k are ringed on the map; an uploaded image is
placed on the map without recomputing it."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cbir.maps import MAP_LABELS, MAP_METHODS, MAP_PARAMS, embedding_map, map_status
from pages.common import get_engine, get_service, model_label, result_grid, show_error, thumbnail_of

engine = get_engine()
service = get_service()
collection = engine.collection
st.title("🗺️ Map")
st.caption("Each dot is an image, placed by its features (L2-normalised, cosine geometry). Close dots look alike to the "
           "model; colours are the collection's labels. Click a dot to search with that image.")

searchable = engine.searchable_models()
if not searchable:
    st.error("No model has features for this collection yet: index one on the Collection page.")
    st.stop()

status = map_status()
c1, c2, c3 = st.columns([2, 1.2, 2.5])
model = c1.selectbox("Model", searchable, format_func=model_label, key="map_model")
method = c2.selectbox("Method", MAP_METHODS, key="map_method",
                      format_func=lambda m: MAP_LABELS[m] + ("" if status[m][0] else " (not installed)"))
params = {}
with c3:
    for name, (default, low, high) in MAP_PARAMS[method].items():
        step = 1 if isinstance(default, int) else 0.05
        params[name] = st.slider(name.replace("_", " "), type(default)(low), type(default)(high), default, step, key=f"map_{method}_{name}")
if not status[method][0]:
    st.warning(f"{MAP_LABELS[method]} is not available here: {status[method][1]}. PCA always is.")
    st.stop()

bar = st.progress(0.0, text=f"{MAP_LABELS[method]} of {model_label(model)}…")
try:
    emap = embedding_map(engine, model, method, params,
                         progress=lambda done, total: bar.progress(min(done / max(total, 1), 1.0), text=f"{MAP_LABELS[method]}: {done}/{total}"))
except Exception as exc:
    bar.empty()
    show_error(exc)
    st.stop()
bar.empty()
st.caption(f"{MAP_LABELS[method]} of {len(emap.ids):,} images · " + (f"computed in {emap.seconds:.1f} s" if emap.seconds else
           f"read from the cache in {1000 * emap.load_seconds:.0f} ms"))

labels = [collection.label_of(i) if i in collection else None for i in emap.ids]
query = st.session_state.get("map_query")
result = st.session_state.get("map_result")
fig = go.Figure()
for label in sorted({str(v) for v in labels}):
    rows = [i for i, v in enumerate(labels) if str(v) == label]
    fig.add_trace(go.Scattergl(
        x=emap.coords[rows, 0], y=emap.coords[rows, 1], mode="markers", name=label, customdata=[emap.ids[r] for r in rows],
        marker=dict(size=6, opacity=0.75), hovertemplate="id %{customdata}<br>" + label + "<extra></extra>"))
if result and result.get("model") == model:
    pos = {i: r for r, i in enumerate(emap.ids)}
    top = [pos[h["id"]] for h in result["hits"] if h["id"] in pos]
    fig.add_trace(go.Scatter(x=emap.coords[top, 0], y=emap.coords[top, 1], mode="markers", name=f"top {len(top)}",
                             marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(width=2, color="black")), hoverinfo="skip"))
    qx, qy = result["point"]
    fig.add_trace(go.Scatter(x=[qx], y=[qy], mode="markers", name="query", hoverinfo="skip",
                             marker=dict(size=20, symbol="star", color="#d62728", line=dict(width=1, color="white"))))
fig.update_layout(height=620, margin=dict(l=10, r=10, t=10, b=10), legend=dict(itemsizing="constant"), template="plotly_white",
                  xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False), clickmode="event+select")
event = st.plotly_chart(fig, key=f"map_plot_{model}_{method}", on_select="rerun", selection_mode="points")

picked = [p.get("customdata") for p in (event.selection.points if event and event.selection else []) if p.get("customdata")]
upload = st.file_uploader("…or place an uploaded image on the map", type=["jpg", "jpeg", "png", "bmp", "webp"], key="map_upload")
new_query = ("id", picked[0]) if picked else (("upload", upload.getvalue()) if upload is not None else None)
if new_query and new_query != query:
    try:
        kind, value = new_query
        res = service.search([model], "cosine", 10, image_id=value if kind == "id" else None, image=value if kind == "upload" else None)
        vec = engine.query_vector(model, image_id=value if kind == "id" else None, image=value if kind == "upload" else None)
        point = emap.place(engine.store(model).embeddings, vec)
        st.session_state.update(map_query=new_query, map_result={"model": model, "point": point, "hits": res["models"][model]["results"],
                                                                  "ranked": res["models"][model], "query": kind, "id": value if kind == "id" else None})
        st.rerun()
    except Exception as exc:
        show_error(exc)

if result and result.get("model") == model:
    if result["id"]:
        c1, c2 = st.columns([1, 5])
        c1.image(thumbnail_of(engine, result["id"], 192), caption=f"query {result['id']}")
        c2.markdown(f"**Top 10 for {result['id']}** (ringed on the map; the star is the query)")
    else:
        st.markdown("**Top 10 for the uploaded image** (the star is where it lands: placed, not recomputed)")
    result_grid(engine, result["ranked"], columns=5, key="map_grid")
