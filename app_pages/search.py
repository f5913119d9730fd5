"""Search: pick or upload a query, choose models, a metric and a fusion; results per model."""

from __future__ import annotations

import functools
import random

import streamlit as st

from cbir.centring import CENTRED_METRICS, FLAG_WORDS
from cbir.collection import image_extensions
from cbir.config import get_settings
from cbir.distances import METRICS
from cbir.errors import CBIRError
from cbir.export import search_csv, search_json
from cbir.explain import png, render
from cbir.extractors import FAMILIES, MODELS, default_model, get_spec
from cbir.fusion import DEFAULT_NORMALISATION, FUSION_METHODS, FUSIONS, NORMALISATIONS
from cbir.index import AUTO, BACKENDS, backend_label
from cbir.rerank import ALPHA_RANGE, DEFAULT_ALPHA, DEFAULT_N, N_RANGE, RERANK_LABELS, RERANK_METHODS, ROCCHIO_TEXT, Rerank
from cbir.request import parse_search
from app_pages.common import (
    require_login, upload_bytes, plain, read_link,
    get_engine, get_service, metric_label, model_label, pr_figure, protocol_note, result_grid, show_error, stats_row, thumbnail_of, tiles, TILE_PX,
)

require_login()  # first: this page also runs if Streamlit ever reaches it without app.py

engine = get_engine()
service = get_service()
collection = engine.collection

st.title("🔎 Search")
stats_slot = st.container()  # filled after this run's search, so the counter includes it

# -- the settings, kept in the page URL -----------------------------------------------------
#: Every setting of the sidebar is bound to a URL parameter of its key's name (Streamlit's
#: ``bind="query-params"``; a value equal to the default leaves the URL) and kept for the
#: session (``persist_state="session"``): a search can be bookmarked and shared with a class,
#: the link opens the same query and settings and runs the search, and the settings survive
#: a reload and a visit to another page. The query travels as ``q``.
KEPT = dict(bind="query-params", persist_state="session")
QUERY_PARAM = "q"
TABS, SIDE_BY_SIDE = "Tabs", "Side by side"  # the result lists' views
SIDE_TILE_PX = 96


# -- sidebar: models, metric, k, fusion ---------------------------------------------------
infos = {m["name"]: m for m in engine.model_info()}
searchable = [n for n, m in infos.items() if m["searchable"]]
applied = st.session_state.pop("search_apply", None)  # "Use these weights" on the Evaluate page
if applied:
    st.session_state.update({"models": applied["models"], "fusion": applied["method"],
                             **{f"w_{m}": w for m, w in applied["weights"].items()}})
    st.success("Weights from the sweep: " + ", ".join(f"{model_label(m)} {w:g}" for m, w in applied["weights"].items())
               + f" ({applied['method']} fusion). Press **Search**.")

linked = next(iter(st.query_params.get_all(QUERY_PARAM)), None)  # the first, as for every other setting
unknown_image = []
if "search_query_id" not in st.session_state and linked is not None:
    if linked in collection:
        st.session_state["search_query_id"] = linked  # a link names its query: searched at once
        st.session_state["search_linked"] = True
    else:
        unknown_image.append(f"{QUERY_PARAM}={linked} (no such image in this collection)")
for key, (low, high) in (("n", N_RANGE), ("alpha", ALPHA_RANGE)):
    # a slider drops without a word a linked value outside its range or not a number (n=5.5 it
    # reads as 5), and a repeated one altogether (the default is used): say so
    values = st.query_params.get_all(key)
    if len(values) > 1:
        unknown_image.append(f"{key}={'/'.join(v[:20] for v in values[:3])} (one value only: the default is used)")
    for value in values[:1]:
        try:
            fits = low <= float(value) <= high
        except ValueError:
            fits = False
        if not fits:
            unknown_image.append(f"{key}={value[:40]} (a number from {low:g} to {high:g})")
read_link({  # a hand-written link may name a setting by its key (metric=euclidean)
    "models": (searchable, model_label, True), "metric": (list(METRICS), metric_label, False),
    "k": ([10, 20, 50], str, False), "rerank": (list(RERANK_METHODS), RERANK_LABELS.get, False),
    "index": ([AUTO, *BACKENDS], backend_label, False), "fusion": (list(FUSION_METHODS), lambda m: FUSIONS[m].label, False),
    "norm": (list(NORMALISATIONS), lambda n: NORMALISATIONS[n].label, False),
    "view": ([TABS, SIDE_BY_SIDE], str, False),
    # centre=off / 0 / no (the CLI's and the API's words) read as the toggle's own false
    "centre": ([True, False], lambda on: "true" if on else "false", False, FLAG_WORDS)}, "app_pages/search.py", also=unknown_image)

# a link (or the Map's Open in Search) searches at once, with the picker folded: the results in view
# read here, dropped only once the search is asked for below: a rerun landing in between (the
# login cookie's, under load) lost the link's search (no results for a whole CI test)
linked_search = st.session_state.get("search_linked", False)
if linked_search:
    st.session_state["search_picker_open"] = False

with st.sidebar:
    st.header("Search settings")
    if not searchable:
        st.error("No model has features for this collection yet: open the Collection page and index one.")
        st.stop()
    preferred = default_model()
    default_choice = [preferred] if preferred in searchable else searchable[:1]
    models = st.multiselect(
        "Models", searchable, default=default_choice,
        format_func=model_label, key="models", **KEPT,
        help="Feature extractors with features for this collection.",
    )
    unavailable = [n for n in MODELS if n not in searchable]
    if unavailable:
        with st.expander(f"Unavailable models ({len(unavailable)})"):
            for n in unavailable:
                st.checkbox(model_label(n), value=False, disabled=True, key=f"search_na_{n}", help=infos[n]["reason"])
                st.caption(infos[n]["reason"] if not infos[n]["available"] else "Not indexed yet: use the Collection page.")
    metric = st.selectbox("Metric", list(METRICS), index=list(METRICS).index("cosine"), format_func=metric_label, key="metric", **KEPT)
    centre = st.toggle("Centre on the collection's mean", value=True, key="centre", disabled=metric not in CENTRED_METRICS, **KEPT,
                       help="Subtract the mean of the collection's (unit) vectors from every vector and the query, then "
                            "normalise again: the features' shared component goes, and cosine mAP on Wang rises "
                            "(EfficientNet-Lite0 0.856 → 0.877, the three fused 0.896 → 0.914). Euclidean then ranks as "
                            "cosine does. Chi-square and Bhattacharyya keep the raw histograms.") and metric in CENTRED_METRICS
    top_k = st.segmented_control("Top k", [10, 20, 50], default=10, key="k", required=True, **KEPT) or 10
    st.header("Re-ranking")
    cosine = metric == "cosine"  # re-ranking and feedback are defined for cosine only: offered only there
    rr_method = st.radio("Re-ranking", RERANK_METHODS, format_func=lambda m: RERANK_LABELS[m], horizontal=True,
                         key="rerank", label_visibility="collapsed", disabled=not cosine, **KEPT,
                         help="αQE: expand the query with its top-n neighbours. DBA + αQE: first augment every stored vector the same way.")
    if not cosine:
        rr_method = "none"
        st.caption(f"Re-ranking and relevance feedback need the cosine metric, not {metric_label(metric)}.")
    rr_n = st.slider("n (neighbours)", N_RANGE[0], N_RANGE[1], DEFAULT_N, key="n", disabled=rr_method == "none", **KEPT)
    rr_alpha = st.slider("α (similarity exponent)", ALPHA_RANGE[0], ALPHA_RANGE[1], DEFAULT_ALPHA, 0.5, key="alpha",
                         disabled=rr_method == "none", **KEPT)
    rerank = Rerank(rr_method, rr_n, rr_alpha)
    if rerank.method == "dba_aqe" and centre:
        st.caption("Measured on Wang: DBA + αQE does better on the vectors as stored (Lite0 mAP 0.955 against 0.946 "
                   "centred): turn *Centre on the collection's mean* off for it.")
    # only the indexes that serve this metric and this re-ranking (FAISS was offered with
    # chi-square, then refused twice: a warning here and an error on Search)
    usable = [AUTO] + [name for name, b in BACKENDS.items()
                       if b.available(engine.settings)[0] and b.supports_metric(metric) and b.supports_rerank(rerank.method)]
    default_backend = engine.settings.index_backend if engine.settings.index_backend in usable else AUTO
    backend = st.selectbox("Index", usable, index=usable.index(default_backend), format_func=backend_label, **KEPT,
                           key="index", help=f"Automatic: exact up to {engine.settings.exact_max:,} images, FAISS above. "
                           "Exact ranks the whole collection; FAISS and Milvus are approximate and return the top "
                           f"{engine.settings.search_depth:,} candidates per model (AP is then AP@{engine.settings.search_depth}). "
                           "Listed: the indexes that serve the metric and the re-ranking chosen.")

# -- query ------------------------------------------------------------------------------
PICKER_PAGE = 12  # thumbnails per page of the picker


def pick(image_id: str) -> None:
    """A picker button's callback: run before the fragment reruns, so one run draws the pick
    (setting it in the fragment's body and rerunning it took two runs, 273 ms)."""
    st.session_state["search_query_id"] = image_id


def turn_page(delta: int) -> None:
    st.session_state["search_page"] = st.session_state.get("search_page", 0) + delta


@st.fragment
def query_picker(collection) -> str:
    """Find by id, file name or label, page through the matches as thumbnails, or draw one
    at random: usable at a million images, where a select box is not. A fragment: paging and
    picking redraw only the picker (the page reran for each, 0.75 s idle, 4.7 s under load);
    the pick is read by the next full run (Search) from the session."""
    state = st.session_state
    if state.get("search_query_id") not in collection:
        state["search_query_id"] = collection.ids[0]
    c1, c2 = st.columns([4, 1])
    with c2:
        st.write("")
        st.button("🎲 Random", key="search_random", width="stretch", on_click=lambda: pick(random.choice(collection.ids)))
    with c1:
        text = st.text_input("Find an image", key="search_find", placeholder="id, file name or label — Enter to filter (an exact id picks it)")
    if state.get("search_find_text") != text:  # a new filter starts on its first page
        state["search_find_text"], state["search_page"] = text, 0
        if text.strip() in collection:  # an exact id and Enter: that image is the query
            state["search_query_id"] = text.strip()
    total, _ = collection.find(text, 0, 0)
    pages = max(1, -(-total // PICKER_PAGE))
    page = state["search_page"] = max(0, min(state.get("search_page", 0), pages - 1))
    _, shown = collection.find(text, page * PICKER_PAGE, PICKER_PAGE)
    nav = st.columns([1, 4, 1])
    nav[0].button("◀", key="search_prev", disabled=page == 0, width="stretch", on_click=turn_page, args=(-1,))
    found = f"{total:,} image{'' if total == 1 else 's'}" + (f" match “{plain(text.strip())}”" if text.strip() else "")
    chosen = state["search_query_id"]
    shown_for = (state.get("search_result") or {}).get("query", {}).get("id")
    nav[1].caption(found + (f" · page {page + 1} of {pages:,}" if total else " — try another id, file name or label")
                   + f" · chosen: query {plain(chosen)}" + (f" · {plain(collection.label_of(chosen))}" if collection.has_labels else "")
                   # a pick redraws only the picker: it says here that the results are the previous query's
                   + (f" · **the results below are for query {plain(shown_for)}: press Search**" if shown_for and shown_for != chosen else ""))
    nav[2].button("▶", key="search_next", disabled=page >= pages - 1, width="stretch", on_click=turn_page, args=(1,))
    for image_id, tile in zip(shown, tiles("search_picker", len(shown), TILE_PX - 20)):
        tile.image(thumbnail_of(engine, image_id, 128), width="stretch")
        chosen = image_id == state["search_query_id"]
        label = collection.label_of(image_id)  # ids and labels are shown literally, never as Markdown
        # the label written under the picture, not in a hover tooltip: the tooltip covered the picture
        # (a click there then picked nothing) and a phone has no hover
        if label:
            tile.caption(plain(label))
        tile.button(f"{'✓ ' if chosen else ''}{plain(image_id)}", key=f"search_pick_{image_id}", width="stretch",
                    type="primary" if chosen else "secondary", on_click=pick, args=(image_id,))
    if st.query_params.get(QUERY_PARAM) != state["search_query_id"]:
        st.query_params[QUERY_PARAM] = state["search_query_id"]  # the link names the query
    return state["search_query_id"]


def fold_picker() -> None:
    """The Search button's callback: fold the picker away, so the results come into view."""
    st.session_state["search_picker_open"] = False
    st.session_state["search_start"] = True


image_id, image_bytes, query_image = None, None, None
# one row that never wraps: on a phone the Search button stays beside the picker, not below it
# (tapped after scrolling past the open picker, the folding page left the results above the screen)
top = st.container(horizontal=True, wrap=False, vertical_alignment="top", key="search_top")
# open until a search folds it (fold_picker); the label and ``expanded`` never change: Streamlit
# gives an expander with other ones a new identity, and its open/closed state is lost
with top.expander("Query — choose another", expanded=True, key="search_picker_open",
                  on_change="rerun", icon="🖼️"):
    source = st.radio("Query from", ["Collection image", "Upload"], horizontal=True, key="search_source", label_visibility="collapsed")
    if source == "Collection image":
        image_id = query_picker(collection)
    else:
        upload = st.file_uploader("Upload an image", type=sorted(e[1:] for e in image_extensions()), key="search_upload",
                                  max_upload_size=get_settings().max_upload_mb)
        if upload is not None:
            image_bytes = upload_bytes(upload)
        if image_bytes is not None:
            try:
                from cbir.images import open_image

                query_image = open_image(image_bytes)
                st.image(query_image, caption="uploaded query", width=160)
            except Exception as exc:
                show_error(exc)
                image_bytes = None

if image_id is not None and st.query_params.get(QUERY_PARAM) != image_id:
    st.query_params[QUERY_PARAM] = image_id  # (an upload has no link)
elif image_id is None:
    st.query_params.pop(QUERY_PARAM, None)
if linked_search:
    st.session_state.pop("search_linked", None)
    if image_id is not None and models and "search_result" not in st.session_state:
        st.session_state["search_start"] = True  # a link with a query: its search runs at once

# -- the results: a fragment, so fusion changes and feedback marks redraw only this part -----


def fusion_controls() -> tuple[str | None, dict | None]:
    """The fusion method and, for the methods that read them, one weight per model: beside the
    results, so tuning them redraws only the results (no new search)."""
    if len(models) < 2:
        return None, None
    c1, c0, c2 = st.columns([1, 1, 2], vertical_alignment="bottom")
    method = c1.selectbox("Fusion", FUSION_METHODS, format_func=lambda m: FUSIONS[m].label, key="fusion", **KEPT,
                          help="\n\n".join(f"**{f.label}**: `{f.formula}`" for f in FUSIONS.values())
                          + "\n\n(d_m: model m's distances to the query; norm: as *Normalisation* says)")
    formula = f"`{FUSIONS[method].formula}`"
    if FUSIONS[method].normalised:  # rank fusion reads ranks: no normalisation to choose
        norm = c0.selectbox("Normalisation", list(NORMALISATIONS), format_func=lambda n: NORMALISATIONS[n].label, key="norm",
                            **KEPT, help="How each model's distances are made comparable before they are averaged:\n\n"
                            + "\n\n".join(f"**{n.label}**: {n.description}" for n in NORMALISATIONS.values()))
        # one line under the row (three in the narrow column pushed the first result row below the fold)
        formula += f" (d_m: model m's distances to the query; norm: {NORMALISATIONS[norm].description})"
    weights = None
    if FUSIONS[method].weighted:  # sliders only where they change something
        with c2:
            weights = {
                m: col.slider(f"Weight of {model_label(m)}", 0.0, 1.0, None if f"w_{m}" in st.session_state else 1.0, 0.05,
                              key=f"w_{m}", **KEPT)
                for m, col in zip(models, st.columns(len(models)))
            }
    st.caption(formula)
    if weights is not None and sum(weights.values()) == 0:
        st.warning("All weights are zero: give at least one model a positive weight.")
    return method, weights


def chosen_normalisation(method) -> str | None:
    """The score normalisation the fusion ``method`` uses (None: it reads ranks, or no fusion)."""
    return st.session_state.get("norm") or DEFAULT_NORMALISATION if method and FUSIONS[method].normalised else None


def fusion_state(method, weights) -> tuple:
    """The fusion asked for: models, method, the weights and the normalisation it uses."""
    used = None if method in (None, "average") else tuple(sorted((weights or {}).items()))
    return tuple(models), method, used, chosen_normalisation(method)


def refuse_live(result: dict, method, weights) -> tuple[dict, float | None]:
    """With the same models, a new fusion method or weights re-fuses the distance rows of
    the last search (no new search); returns the result shown and the re-fusion time."""
    inputs, shown = st.session_state.get("search_inputs"), st.session_state.get("search_fusion")
    now = fusion_state(method, weights)
    if inputs is None or not method or now == shown or set(models) != set(result["models"]):
        return result, None
    try:
        combined = inputs.fuse(method, weights, chosen_normalisation(method))
    except Exception as exc:
        show_error(exc)
        return result, None
    result = {**result, "combined": combined.to_dict(), "method": method, "weights": dict(weights or {}) if method != "average" else None,
              "normalisation": chosen_normalisation(method)}
    st.session_state.update(search_result=result, search_fusion=now)
    return result, combined.seconds


def query_models() -> tuple[list[str], list[str]]:
    """The chosen models that can describe this query, and those skipped: an imported model has
    no extractor here, so it cannot describe an uploaded image (the whole search failed)."""
    if image_bytes is None:
        return list(models), []
    return [m for m in models if infos[m]["extracts"]], [m for m in models if not infos[m]["extracts"]]


def do_search(feedback: list[dict], method, weights) -> None:
    used, skipped = query_models()
    if not used:
        st.warning(f"{', '.join(model_label(m) for m in skipped)}: features imported from elsewhere cannot describe an "
                   "uploaded image here. Add a model this server computes (e.g. EfficientNet-Lite0), or pick a collection image.",
                   icon="🧩")
        return
    if method and len(used) < 2:
        method, weights = None, None
    elif weights:
        weights = {m: w for m, w in weights.items() if m in used}
    try:
        with st.spinner("Searching…"):
            request = parse_search(used, metric, int(top_k), image_id=image_id, image=image_bytes, method=method,
                                   weights=weights, rerank=rerank, feedback=feedback, backend=backend,
                                   normalisation=chosen_normalisation(method), centre=centre)
            served = service.search(request, with_inputs=len(request.models) > 1)
    except Exception as exc:
        show_error(exc)
        return
    result = served.body
    if not feedback:
        st.session_state["search_rounds"] = []
    st.session_state["search_rounds"] = st.session_state.get("search_rounds", []) + [result]
    st.session_state["search_feedback"] = feedback
    st.session_state["search_inputs"] = served.inputs
    st.session_state["search_upload_digest"] = upload_digest(image_bytes)  # whose upload the results are (Why?)
    st.session_state["search_fusion"] = fusion_state(method, weights)
    st.session_state["search_result"] = result
    # fresh toggle widgets for the new results: a new key generation, the old keys dropped
    st.session_state["search_fb_gen"] = st.session_state.get("search_fb_gen", 0) + 1
    for key in [k for k in st.session_state if k.startswith("search_fb_") and k != "search_fb_gen"]:
        del st.session_state[key]


def outdated(result: dict) -> list[str]:
    """The settings the results no longer match (the sidebar says one thing, the results
    another): query, metric, top k, models, re-ranking with its n and α, and the index."""
    query = result["query"]
    used = (result.get("rerank") or {"method": "none"})
    # an upload by its digest: another picture uploaded after a search makes the results the previous query's
    asked = {"query": image_id if image_bytes is None else f"upload {upload_digest(image_bytes)}", "metric": metric, "top k": int(top_k),
             "models": sorted(query_models()[0]), "re-ranking": rerank.method,
             "n and α": (rerank.n, rerank.alpha) if rerank.active else None, "centring": bool(centre)}
    shown = {"query": query["id"] or f"upload {st.session_state.get('search_upload_digest')}", "metric": result["metric"], "top k": result["top_k"],
             "models": sorted(result["models"]), "re-ranking": used["method"],
             "n and α": (used["n"], used["alpha"]) if used["method"] != "none" else None, "centring": bool(result.get("centred"))}
    if asked["re-ranking"] != shown["re-ranking"]:
        asked["n and α"] = shown["n and α"]  # said once, as the re-ranking
    if asked["metric"] != shown["metric"]:
        asked["centring"] = shown["centring"]  # said once, as the metric
    changed = [k for k in asked if asked[k] != shown[k]]
    if models and result.get("backend"):
        try:
            if engine.resolve_backend(backend, query_models()[0] or models, metric, rerank.method) != result["backend"]:
                changed.append("index")
        except CBIRError:  # a model gone since: the search itself will say so
            pass
    return changed


def measures_line(name: str, ranked: dict, result: dict) -> None:
    """P@k, R@k, AP and time in one line (four metric cards took a hundred pixels above the grid)."""
    has_metrics = ranked["average_precision"] is not None
    k = result["top_k"]
    alone = ranked.get("relevant_in_collection") == 0
    singles = [r["average_precision"] for r in result["models"].values() if r["average_precision"] is not None]
    gain = ranked["average_precision"] - max(singles) if name == "combined" and has_metrics and singles else None
    parts = [f"**P@{k}** " + (f"{ranked['precision_at_k']:.3f}" if has_metrics or alone else "—"),
             f"**R@{k}** " + (f"{ranked['recall_at_k']:.3f}" if has_metrics else "—"),
             f"**{ranked.get('ap_label', 'AP')}** " + (f"{ranked['average_precision']:.3f}" if has_metrics else "—")
             + ("" if gain is None else f" ({gain:+.3f} vs the best model)"),
             f"**Time** {1000 * ranked['seconds']:.1f} ms"]
    st.markdown(" · ".join(parts))
    if gain is not None:
        st.caption("AP per model: " + " · ".join(f"{model_label(m)} {r['average_precision']:.3f}" for m, r in result["models"].items())
                   + f" → fused {ranked['average_precision']:.3f}")
    if alone:
        st.caption("The query is the only image of its class here: recall, AP and the PR curve are undefined "
                   "(evaluations leave such queries out of mAP and count them).")


def pr_plot(name: str, ranked: dict, result: dict, rounds: list[dict]) -> None:
    query = result["query"]
    if ranked["average_precision"] is None:
        if query["id"] is None:
            st.info("No precision/recall for an uploaded image: it has no label to compare against.")
        elif ranked.get("relevant_in_collection") != 0:
            st.info("No precision/recall: this collection has no labels (add a labels.csv or one sub-folder per class).")
        return
    curves = [(model_label(n), r["pr_curve"]["recall"], r["pr_curve"]["precision"])
              for n, r in result["models"].items() if r["average_precision"] is not None]
    history = [(r["combined"] if name == "combined" else r["models"].get(name)) for r in rounds]
    history = [h for h in history if h and h["average_precision"] is not None]
    if name == "combined":
        fig = pr_figure(curves + [(f"Combined ({result['method']})", ranked["pr_curve"]["recall"], ranked["pr_curve"]["precision"])],
                        "Precision–recall: every model and the fusion")
    elif len(history) > 1:
        fig = pr_figure([(f"round {i} · AP {h['average_precision']:.3f}", h["pr_curve"]["recall"], h["pr_curve"]["precision"])
                         for i, h in enumerate(history)], f"Precision–recall of {model_label(name)} across feedback rounds")
    else:
        fig = pr_figure([(model_label(name), ranked["pr_curve"]["recall"], ranked["pr_curve"]["precision"])])
    st.plotly_chart(fig, key=f"search_pr_{name}")
    protocol_note()


def feedback_bar(method, weights) -> None:
    """Rocchio relevance feedback: the 👍/👎 marks of the result grids, and Refine. A mark
    reruns nothing (it is read here when Refine reruns the page)."""
    st.divider()
    c1, c2 = st.columns([3, 1])
    c1.markdown(f"**Relevance feedback** · mark results 👍 relevant or 👎 not relevant, then refine (Rocchio: {ROCCHIO_TEXT}).")
    if not c2.button("Refine", key="search_refine", type="primary", disabled=metric != "cosine",
                     help="Needs the cosine metric" if metric != "cosine" else "Search again with the marks of every tab"):
        return
    marks = {}
    prefix = f"search_fb_{st.session_state.get('search_fb_gen', 0)}_"
    for key, value in st.session_state.items():
        if key.startswith(prefix) and value in ("👍", "👎"):
            marks[key.split("::", 1)[1]] = value == "👍"
    if not marks:
        st.warning("Mark at least one result 👍 or 👎 first.", icon="👆")
        return
    previous = st.session_state.get("search_feedback") or []
    do_search(previous + [{"relevant": sorted(i for i, v in marks.items() if v),
                           "non_relevant": sorted(i for i, v in marks.items() if not v)}], method, weights)
    st.rerun()  # the whole page: the search counter and the query's state


def query_tile(result: dict) -> tuple | None:
    """The query's picture and caption, shown first in each grid: the class sees the query beside its results."""
    query = result["query"]
    if query["id"] is not None and query["id"] in collection:
        label = collection.label_of(query["id"]) if collection.has_labels else None
        return thumbnail_of(engine, query["id"]), f"query {query['id']}" + (f" · {label}" if label else "")
    if query["id"] is None and image_bytes is not None:
        return query_image, "uploaded query"
    return None


def explainable(names) -> list[str]:
    """The models to explain the results of ``names`` with: each one this server extracts (not
    imported features), a stored recipe by its own network's single average-pooled pass (its
    several scales do not split over one feature map)."""
    return list(dict.fromkeys(get_spec(m).base or m for m in names if FAMILIES[get_spec(m).family].extracts))


def ask_why(model: str | None, result_id: str) -> None:
    """A tile's *Why?*: open the explanation of this result (drawn by this run's results panel)."""
    st.session_state["search_why"] = {"result": result_id, "model": model}


def upload_digest(data: bytes | None) -> str | None:
    """A short digest of an upload: tells whether the results are for the upload on the page."""
    import hashlib

    return None if data is None else hashlib.blake2b(data, digest_size=16).hexdigest()


def store_version(model: str) -> str | None:
    """The version of the model's store (its centring mean changes with it), None without one."""
    try:
        return engine.store(model).version if engine.has_store(model) else None
    except CBIRError:
        return None


def file_versions(*image_ids: str | None) -> tuple:
    """The modification times of collection images (a changed file: a new explanation)."""
    return tuple(collection.path_of(i).stat().st_mtime_ns if i is not None else None for i in image_ids)


@st.cache_data(max_entries=64, show_spinner=False)
def explained(collection_digest: str, model: str, query_id: str | None, upload: bytes | None, result_id: str,
              versions: tuple, _engine, centre: bool = True) -> tuple[bytes, dict]:
    """The rendered pair (PNG) and the explanation's numbers, cached per collection, model,
    query, result, file versions (the store's, for its mean) and centring: a dialog rerun
    (another model) or a second look costs nothing."""
    explanation, query_img, result_img = _engine.explain(model, result_id, image_id=query_id, image=upload, centre=centre)
    return png(render(explanation, query_img, result_img)), explanation.to_dict()


@st.dialog("Why did this match?", width="large")
def why_dialog(target: dict, result: dict) -> None:
    """The query and one result with heatmaps of where they agree (cbir.explain)."""
    query = result["query"]
    choices = explainable(result["models"])
    if not choices:
        st.warning("The models of this search hold features computed elsewhere: this server has no feature maps of them "
                   "to explain a match with. Search with a model it extracts (e.g. EfficientNet-Lite0).", icon="🧩")
        return
    start = target["model"] if target["model"] in choices else choices[0]
    # keyed by the tile asked about: each Why? opens on its own tab's model (a fixed key kept the last choice)
    model = st.segmented_control("Model", choices, default=start, format_func=model_label, required=True,
                                 key=f"search_why_model_{target['result']}_{target['model']}") if len(choices) > 1 else start
    recipes = [m for m in result["models"] if get_spec(m).recipe]
    if recipes:
        st.caption(f"{', '.join(model_label(m) for m in recipes)}: explained by the same network's single pass "
                   f"({', '.join(model_label(get_spec(m).base) for m in recipes)}); a descriptor pooled over several "
                   "scales does not split over one feature map's locations.")
    upload = image_bytes if query["id"] is None else None
    if query["id"] is None and (upload is None or upload_digest(upload) != st.session_state.get("search_upload_digest")):
        st.warning("These results are for an uploaded image that is no longer on the page: upload it again, or press "
                   "Search for the one there now, to see why a result matched.", icon="🔄")
        return
    try:
        with st.spinner("Reading both images' feature maps…"):
            picture, numbers = explained(collection.labels_digest, model or start, query["id"], upload, target["result"],
                                         (*file_versions(query["id"], target["result"]), store_version(model or start)), engine,
                                         bool(result.get("centred")))
    except (CBIRError, OSError) as exc:
        show_error(exc)
        return
    title = f"query {plain(query['id'])}" if query["id"] else "the uploaded query"
    st.markdown(f"**{title}** (left) and **result {plain(target['result'])}** (right) · {model_label(model or start)}")
    st.image(picture, width="stretch")
    (hq, wq), (hr, wr) = numbers["grid"]["query"], numbers["grid"]["result"]
    st.caption(
        f"Bright: this part of one image resembles the other image as a whole (one colour scale for both). Numbered lines "
        f"join the {len(numbers['pairs'])} best-matching pairs of locations. The model sees the query as a {hq}x{wq} grid of "
        f"feature vectors (the result as {hr}x{wr}); the maps split the cosine similarity of the two descriptors"
        f"{' centred on the collection mean' if numbers.get('centred') else ''}, "
        f"**{numbers['similarity']:.3f}**, exactly (each map's mean). "
        f"Computed in {1000 * numbers['seconds']:.0f} ms.")


@st.fragment
def results_panel() -> None:
    """Everything below the query: fusion, results, PR curves, feedback. A fragment: a fusion
    change or a weight reruns only this function, not the page."""
    method, weights = fusion_controls()
    if st.session_state.get("search_start") and models and (image_id is not None or image_bytes is not None):
        do_search([], method, weights)
    st.session_state.pop("search_start", None)  # after the search: one interrupted by a rerun runs again
    result = st.session_state.get("search_result")
    if not result:
        st.info("Choose a query and press **Search**.")
        return
    result, live = refuse_live(result, method, weights)
    changed = outdated(result)
    if changed:
        blocked = ("choose at least one model" if not models else
                   "upload an image this server can read, or pick a collection image" if image_id is None and image_bytes is None else None)
        st.warning(f"These results are for the previous {', '.join(changed)}: "
                   + (f"{blocked}, then press **Search**." if blocked else "press **Search** to update them."), icon="🔄")
    query = result["query"]
    # a row that wraps: on a phone the two buttons share the line under the title (columns stacked them)
    line = st.container(horizontal=True, wrap=True, vertical_alignment="center", key="search_results_head")
    title = f"query {plain(query['id'])}" if query["id"] else "uploaded image"
    line.markdown(
        f"**Results for {title}** · {metric_label(result['metric'])} distance{', centred' if result.get('centred') else ''} "
        f"· top {result['top_k']} · {1000 * result['timings'].get('total', 0):.1f} ms" + (" · from cache" if result.get("cached") else ""),
        width=520)
    name = f"search-{query['id'] or 'upload'}-{result['metric']}"
    line.download_button("⬇ CSV", lambda r=result: search_csv(r), f"{name}.csv", "text/csv", key="search_dl_csv", on_click="ignore",
                       help="Every list's hits with the parameters used")
    line.download_button("⬇ JSON", lambda r=result: search_json(r), f"{name}.json", "application/json", key="search_dl_json",
                       on_click="ignore", help="The whole response, as the API returns it")
    notes = []
    if live is not None:
        used = "" if not result.get("weights") else " (" + ", ".join(f"{model_label(m)} {w:g}" for m, w in result["weights"].items()) + ")"
        norm = result.get("normalisation")
        used += f", {NORMALISATIONS[norm].label} normalisation" if norm and norm != DEFAULT_NORMALISATION else ""
        notes.append(f"Re-fused live with {FUSIONS[result['method']].label}{used} in {1000 * live:.1f} ms, from the rankings already computed")
    if result.get("rerank"):
        notes.append(f"Re-ranked with {RERANK_LABELS[result['rerank']['method']]} (n={result['rerank']['n']}, α={result['rerank']['alpha']:g})")
    skipped = [m for m in models if m not in result["models"]] if query["upload"] else []
    if skipped:
        notes.append(f"Skipped for this uploaded image: {', '.join(model_label(m) for m in skipped)} (features imported from "
                     "elsewhere; this server cannot compute them for a new image)")
    rounds = st.session_state.get("search_rounds", [result])
    if len(rounds) > 1:
        last = st.session_state.get("search_feedback") or [{}]
        notes.append(f"Relevance feedback: {len(rounds) - 1} round(s) of Rocchio refinement (the last with "
                     f"{len(last[-1].get('relevant', []))} 👍, {len(last[-1].get('non_relevant', []))} 👎)")
    for note in notes:
        st.caption(note)
    names = list(result["models"]) + (["combined"] if result.get("combined") else [])
    view, only = view_controls(result, names)

    def why_for(name: str):  # a model's list explains with that model; Combined with the first it can
        return functools.partial(ask_why, get_spec(name).base or name if name != "combined"
                                 else next(iter(explainable(result["models"])), None))

    grid_key = f"search_fb_{st.session_state.get('search_fb_gen', 0)}_"
    if view == SIDE_BY_SIDE:  # the lists in columns, for comparing models in class
        tile = query_tile(result)
        if tile is not None:
            head = st.container(horizontal=True, vertical_alignment="center")
            head.image(tile[0], width=72)
            head.caption(plain(tile[1]))
        for col, name in zip(st.columns(len(names), border=True), names):
            ranked = result["combined"] if name == "combined" else result["models"][name]
            with col:
                st.markdown(f"**{model_label(name) if name != 'combined' else 'Combined'}**")
                measures_line(name, ranked, result)
                # two a row in a third of a projector's width (one 136 px tile a row left half of it empty)
                result_grid(engine, ranked, key=grid_key + name, feedback=True, labels=only, width=SIDE_TILE_PX, why=why_for(name))
        pr_plot(names[-1], result.get("combined") or result["models"][names[-1]], result, rounds)
    else:
        # the same labels whatever the fusion method, and a key: re-fusing keeps the tab the class is looking at
        tabs = st.tabs([model_label(n) if n != "combined" else "Combined" for n in names], key="search_tabs",
                       default="Combined" if result.get("combined") else None)
        for tab, name in zip(tabs, names):
            ranked = result["combined"] if name == "combined" else result["models"][name]
            with tab:
                measures_line(name, ranked, result)
                result_grid(engine, ranked, key=grid_key + name, feedback=True, query=query_tile(result), labels=only,
                            why=why_for(name))
                pr_plot(name, ranked, result, rounds)
    feedback_bar(method, weights)
    target = st.session_state.pop("search_why", None)
    if target is not None:
        why_dialog(target, result)



def view_controls(result: dict, names: list[str]) -> tuple[str, set | None]:
    """How the lists are shown (tabs, or side by side when there are several) and the labels
    the grids show (None: all). Filtering hides tiles only: the measures are those of the
    whole list, and a hidden result keeps its 👍/👎."""
    row = st.container(horizontal=True, wrap=True, vertical_alignment="bottom", key="search_view_row")
    view = TABS
    if len(names) > 1:
        view = row.segmented_control("View", [TABS, SIDE_BY_SIDE], default=TABS, key="view", **KEPT,
                                     help="Side by side: one column per list, to compare models") or TABS
    found = sorted({h["label"] for r in [result.get("combined"), *result["models"].values()] if r for h in r["results"] if h["label"]})
    only = None
    if len(found) > 1:
        chosen = row.pills("Show only", found, selection_mode="multi", key="search_only", format_func=plain,
                           help="Show only the results with these labels (the measures stay those of the whole list)")
        only = set(chosen) or None
    return view, only


top.button("Search", type="primary", key="search_run", on_click=fold_picker,  # in one place, folded or not
          disabled=not models or (image_id is None and image_bytes is None))
results_panel()

with stats_slot:
    stats_row(service)
