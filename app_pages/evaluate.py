"""Evaluate: collection-wide mAP, P@10, P@20 for models x metrics (and fusions)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from cbir.centring import CENTRED_METRICS
from cbir.distances import METRICS
from cbir.experiments import plan_runs
from cbir.extractors import get_spec
from cbir.export import pr_html, pr_png, report_curves, reports_csv, reports_json
from cbir.fusion import DEFAULT_NORMALISATION, FUSION_METHODS, FUSIONS, NORMALISATIONS
from cbir.tuning import SWEEP_METHODS, sweep_weights
from cbir.recipes import PRESETS, evaluate_recipe, parse_recipe
from cbir.significance import ALPHA, CONFIDENCE, N_RESAMPLES, compare_paired, pair_by_query
from cbir.rerank import ALPHA_RANGE, DEFAULT_ALPHA, DEFAULT_N, N_RANGE, RERANK_LABELS, RERANK_METHODS, Rerank
from app_pages.common import require_login, get_engine, long_job_slot, interpolated_figure, metric_label, model_label, protocol_note, show_error

require_login()  # first: this page also runs if Streamlit ever reaches it without app.py

engine = get_engine()
st.title("📈 Evaluate")
protocol_note()

if not engine.collection.has_labels:
    st.warning(
        "This collection has no labels, so there is nothing to evaluate against: add a `labels.csv` "
        "(`id,label`) to the folder, or put each class in its own sub-folder."
    )
    st.stop()

searchable = engine.searchable_models()
if not searchable:
    st.error("No model has features for this collection yet: index one on the Collection page.")
    st.stop()

with st.form("eval_form"):
    # two rows, wide boxes: three model chips were clipped ("fficientNet-Lite0") in a third of the width
    c1, c2, c5 = st.columns([3, 2, 1.6])
    models = c1.multiselect("Models", searchable, default=searchable[:1], format_func=model_label, key="eval_models")
    metrics = c2.multiselect("Metrics", list(METRICS), default=["cosine"], format_func=metric_label, key="eval_metrics")
    centrings = c5.multiselect("Centring", [True, False], default=[True], key="eval_centring",
                               format_func=lambda c: "Centred" if c else "Not centred",
                               help="Cosine and Euclidean on vectors centred on the collection's mean (the default) or "
                                    "as stored: choose both for one row each, side by side. Chi-square and "
                                    "Bhattacharyya are never centred.")
    c3, c4, r1, r2, r3 = st.columns([2, 1.3, 2, 0.8, 0.8])
    fusions = c3.multiselect("Fusions (2+ models)", FUSION_METHODS, default=[], format_func=lambda m: FUSIONS[m].label, key="eval_fusions",
                             help="With no weights to read, Weighted and weighted RRF use equal weights: tune them below")
    norms = c4.multiselect("Normalisation", list(NORMALISATIONS), default=[DEFAULT_NORMALISATION], key="eval_norms",
                           format_func=lambda n: NORMALISATIONS[n].label,
                           help="Of each model's distances before an average or weighted fusion (one row each):\n\n"
                           + "\n\n".join(f"**{n.label}**: {n.description}" for n in NORMALISATIONS.values()))
    reranks = r1.multiselect("Re-ranking (cosine only)", RERANK_METHODS, default=["none"], format_func=lambda m: RERANK_LABELS[m], key="eval_reranks")
    rr_n = r2.number_input("n", N_RANGE[0], N_RANGE[1], DEFAULT_N, key="eval_rerank_n")
    rr_alpha = r3.number_input("α", ALPHA_RANGE[0], ALPHA_RANGE[1], DEFAULT_ALPHA, 0.5, key="eval_rerank_alpha")
    recipes = st.multiselect(
        "Descriptor recipes (each model alone, cosine; extracted now)", [n for n in PRESETS if n != "today"], default=[],
        key="eval_recipes", format_func=lambda n: f"{n.replace('_', '-')}: {PRESETS[n][1]} (x{PRESETS[n][0].cost:g} the pixels of one pass)",
        help="Describe every image again under a recipe (pooling, scales, flip, signed square root, centring on the "
             "collection's mean) and evaluate it beside the stored vectors: one row per model and recipe. The extraction "
             "takes about the recipe's cost times an indexing run (Lite0: ~20 s per x1 for 1,000 images); cached.")
    go = st.form_submit_button("Run evaluation", type="primary")


@st.cache_data(show_spinner=False, max_entries=256)
def evaluate_cached(models: tuple[str, ...], metric: str, method: str | None, rerank: tuple, versions: tuple[str, ...],
                    collection: str, normalisation: str = DEFAULT_NORMALISATION, centre: bool = True) -> dict:
    """Cached per store version and ``collection`` (its name and labels' digest: two folders of
    the same images under other labels share store versions): a second view is instant, a
    re-index recomputes."""
    report = engine.evaluate(list(models), metric, method=method, rerank=Rerank(*rerank), normalisation=normalisation,
                             centre=centre)
    return report_row(report)


def report_row(report) -> dict:
    """An evaluation report as a row of the page: its JSON, each query's AP (None: a left-out,
    singleton query) and the query ids that pair the rows' APs (the significance section)."""
    return {**report.to_dict(), "ap": [None if v != v else v for v in report.ap.tolist()], "query_ids": report.query_ids}


@st.cache_data(show_spinner=False, max_entries=32)
def recipe_cached(model: str, recipe: str, collection: str, files: str, _progress=None) -> dict:
    """A recipe's evaluation (cbir.recipes.evaluate_recipe: every labelled image described now),
    cached per model, recipe, collection (name and labels) and the images' signatures."""
    with long_job_slot(_progress or (lambda done, total: None)) as progress:
        report = evaluate_recipe(engine, model, parse_recipe(recipe), progress)
    return report_row(report)


def recipe_rows(models: list[str], recipes: list[str], bar) -> list[dict]:
    """One row per single model and recipe, with a progress bar over the images described."""
    files = engine.collection.files_digest()
    rows, jobs = [], [(m, r) for m in models if not get_spec(m).recipe for r in recipes]  # a stored recipe is one already
    for i, (model, name) in enumerate(jobs):
        recipe = PRESETS[name][0]
        label = f"{model_label(model)} · {recipe.label}"

        def progress(done: int, total: int, label=label, i=i) -> None:
            bar.progress(min(1.0, (i + done / max(total, 1)) / len(jobs)), text=f"Describing the images for {label}: {done:,}/{total:,}")

        try:
            rep = recipe_cached(model, recipe.name, engine.collection.labels_digest, files, _progress=progress)
        except Exception as exc:
            show_error(exc)
            continue
        rows.append({**rep, "label": f"{label} · Cosine", "model": label, "metric_label": "Cosine"})
    return rows


@st.cache_data(show_spinner=False, max_entries=256)
def compared(baseline: str, baseline_ids: tuple, baseline_ap: tuple, run: str, run_ids: tuple, run_ap: tuple) -> dict:
    """The paired comparison of two rows (cbir.significance; ~1 s for 1,000 queries), cached."""
    a, b = pair_by_query(baseline, baseline_ids, baseline_ap, run, run_ids, run_ap)
    return compare_paired(baseline, a, run, b).to_dict()


if go:
    jobs = plan_runs(models, metrics, fusions, reranks)
    if any(r != "none" for r in reranks) and any(m != "cosine" for m in metrics):
        st.info("Re-ranking rows are computed for the cosine metric only: the other metrics do not admit it.")
    if not jobs:
        st.warning("Choose at least one model and one metric.")
    else:
        bar = st.progress(0.0, text="Evaluating…")
        results = []
        # an average or weighted fusion once per normalisation chosen; every other row once
        runs = [(j, norm) for j in jobs for norm in ((norms or [DEFAULT_NORMALISATION]) if j.method and FUSIONS[j.method].normalised
                                                     else [DEFAULT_NORMALISATION])]
        # and under cosine and Euclidean once per centring chosen (the others are never centred)
        runs = [(j, norm, c) for j, norm in runs for c in ((centrings or [True]) if j.metric in CENTRED_METRICS else [False])]
        for i, (job, norm, centre) in enumerate(runs):
            ms, metric, method, rr = job.models, job.metric, job.method, job.rerank
            name = model_label(ms[0]) if method is None else f"{FUSIONS[method].short} ({' + '.join(model_label(m).replace('EfficientNet-', '') for m in ms)})"
            if method is not None and FUSIONS[method].weighted:
                name += " · equal weights"  # the form takes no weights (a Weighted row matched Average without a word)
            if method is not None and FUSIONS[method].normalised and len(norms) > 1 or norm != DEFAULT_NORMALISATION:
                name += f" · {NORMALISATIONS[norm].label}"
            rerank_key = (rr, int(rr_n), float(rr_alpha))
            if rr != "none":
                name += f" + {RERANK_LABELS[rr]}"
            if metric in CENTRED_METRICS and not centre:
                name += " · not centred"
            bar.progress(i / len(runs), text=f"Evaluating {name} · {metric_label(metric)} ({i + 1}/{len(runs)})")
            try:
                versions = tuple(engine.store(m).version for m in ms)
                rep = evaluate_cached(ms, metric, method, rerank_key, versions, engine.collection.labels_digest, norm, centre)
            except Exception as exc:
                show_error(exc)
                continue
            results.append({**rep, "label": f"{name} · {metric_label(metric)}", "model": name, "metric_label": metric_label(metric)})
        if recipes:
            results += recipe_rows(models, recipes, bar)
        counts = sorted({r["queries"] for r in results})
        over = f"over {counts[0]:,} queries each" if len(counts) == 1 else f"over {counts[0]:,} to {counts[-1]:,} queries"
        bar.progress(1.0, text=f"Done: {len(results)} evaluation(s) {over if results else ''}")
        st.session_state["eval_results"] = results

def sweep_figure(sweep: dict):
    """Two models: mAP and P@20 against the first model's weight; three: a ternary map of
    mAP. The best point is a star, equal weights a dashed line or a ring."""
    import plotly.graph_objects as pgo

    models, points, best = sweep["models"], sweep["points"], sweep["best"]
    labels = [model_label(m).replace("EfficientNet-", "") for m in models]
    maps = [p["mAP"] for p in points]
    if len(models) == 2:
        x = [p["weights"][models[0]] for p in points]
        fig = pgo.Figure([pgo.Scatter(x=x, y=maps, mode="lines+markers", name="mAP"),
                          pgo.Scatter(x=x, y=[p["P@20"] for p in points], mode="lines+markers", name="P@20", line=dict(dash="dot")),
                          pgo.Scatter(x=[best["weights"][models[0]]], y=[best["mAP"]], mode="markers", name="best",
                                      marker=dict(symbol="star", size=18, color="#d62728"))])
        fig.add_hline(y=sweep["equal_weights"]["mAP"], line_dash="dash", annotation_text="equal weights", line_color="grey")
        fig.update_layout(xaxis_title=f"weight of {labels[0]} (the rest to {labels[1]})", yaxis_title="score")
    else:
        w = {m: [p["weights"][m] for p in points] for m in models}
        fig = pgo.Figure([pgo.Scatterternary(a=w[models[0]], b=w[models[1]], c=w[models[2]], mode="markers", name="mAP",
                                             text=[f"mAP {m:.4f}" for m in maps],
                                             marker=dict(color=maps, colorscale="Viridis", size=13, symbol="hexagon",
                                                         colorbar=dict(title="mAP"))),
                          pgo.Scatterternary(a=[best["weights"][models[0]]], b=[best["weights"][models[1]]],
                                             c=[best["weights"][models[2]]], mode="markers", name="best",
                                             marker=dict(symbol="star", size=20, color="#d62728")),
                          pgo.Scatterternary(a=[1 / 3], b=[1 / 3], c=[1 / 3], mode="markers", name="equal weights",
                                             marker=dict(symbol="circle-open", size=20, color="black"))])
        # the legend under the triangle: it sat over the colour bar
        fig.update_layout(ternary=dict(aaxis_title=labels[0], baxis_title=labels[1], caxis_title=labels[2]),
                          legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="center", x=0.5))
    fig.update_layout(title=f"{FUSIONS[sweep['method']].label} fusion over the weight simplex (step {sweep['step']:g})",
                      height=460, margin=dict(l=40, r=40, t=60, b=40))
    return fig


def significance(results: list[dict]) -> None:
    """Each row against a baseline row, paired query by query: the difference in mAP with its
    95% bootstrap interval (a forest plot) and a paired randomisation test's p-value. The
    comparisons are also written into the rows (the JSON download)."""
    import plotly.graph_objects as pgo

    st.subheader("Is the difference significant?")
    labels = [r["label"] for r in results]
    baseline_label = st.selectbox("Baseline", labels, index=0, key="eval_baseline",
                                  help="Every other row is compared with this one on the queries both scored")
    base = results[labels.index(baseline_label)]
    rows = []
    for r in results:
        r.pop("comparison", None)
        if r is base:
            continue
        try:
            c = compared(base["label"], tuple(base.get("query_ids") or ()), tuple(base["ap"]),
                         r["label"], tuple(r.get("query_ids") or ()), tuple(r["ap"]))
        except Exception as exc:  # no shared queries: said for that row
            st.caption(f"{r['label']}: {exc}")
            continue
        r["comparison"] = c
        rows.append((r["label"], c))
    if not rows:
        return
    colour = ["#16a34a" if c["significant"] and c["delta_mAP"] > 0 else "#dc2626" if c["significant"] else "#6b7280" for _, c in rows]
    fig = pgo.Figure(pgo.Scatter(
        x=[c["delta_mAP"] for _, c in rows], y=[name for name, _ in rows], mode="markers",
        marker=dict(size=11, color=colour),
        error_x=dict(type="data", symmetric=False, array=[c["ci95"][1] - c["delta_mAP"] for _, c in rows],
                     arrayminus=[c["delta_mAP"] - c["ci95"][0] for _, c in rows], thickness=2, width=6),
        customdata=[[c["ci95"][0], c["ci95"][1], c["p_value"], c["queries_paired"]] for _, c in rows],
        hovertemplate="Δ mAP %{x:+.4f}<br>95% CI %{customdata[0]:+.4f} to %{customdata[1]:+.4f}<br>"
                      "p = %{customdata[2]:.3g} · %{customdata[3]} queries<extra>%{y}</extra>"))
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"Δ mAP against {baseline_label} (95% bootstrap interval)", xaxis_title="Δ mAP (row − baseline)",
                      height=max(220, 110 + 44 * len(rows)), margin=dict(l=10, r=10, t=50, b=40), showlegend=False)
    fig.update_yaxes(autorange="reversed")
    st.plotly_chart(fig, key="eval_significance")
    st.dataframe(pd.DataFrame([{"Row": name, "Δ mAP": c["delta_mAP"], "95% CI": f"{c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f}",
                                "p-value": c["p_value"], "Queries paired": c["queries_paired"],
                                "Verdict": ("significantly " + ("better" if c["delta_mAP"] > 0 else "worse")) if c["significant"] else "not significant"}
                               for name, c in rows]),
                 hide_index=True, width="stretch", column_config={"Δ mAP": st.column_config.NumberColumn(format="%+.4f"),
                                                                  "p-value": st.column_config.NumberColumn(format="%.4f")})
    for note in dict.fromkeys(c["note"] for _, c in rows if c.get("note")):
        st.warning(f"{note}.", icon="⚖️")
    st.caption(f"Paired over the queries both rows scored: the mean difference of their APs, its {CONFIDENCE:.0%} bootstrap "
               f"interval (BCa, {N_RESAMPLES:,} resamples of the queries) and a two-sided paired randomisation test (each "
               f"query's two APs swapped at random; Smucker et al. 2007); significant below p = {ALPHA:g}. The smallest "
               f"p-value {N_RESAMPLES:,} resamples can show is about {2 / (N_RESAMPLES + 1):.4f}.")


def show_results(results: list[dict]) -> None:
    """The table, the PR curves, the downloads and the per-class heatmap of the last run."""

    table = pd.DataFrame(
        [{"Model": r["model"], "Metric": r["metric_label"], "mAP": r["mAP"], "P@10": r["P@10"], "P@20": r["P@20"],
          "R-precision": r["R-precision"], "Queries": r["queries"], "Scored": r.get("queries_scored", r["queries"]),
          "Left out (singleton)": r.get("singleton_queries_left_out", 0), "Mixed ties": r.get("ties", 0),
          "Seconds": r["seconds"]} for r in results]
    ).sort_values("mAP", ascending=False)
    st.subheader("Summary")
    counts = sorted({r["queries"] for r in results})
    if len(counts) > 1:  # ranked together without a word before
        st.warning(f"These rows use different query sets ({', '.join(f'{c:,}' for c in counts)} queries): a model indexed on part "
                   "of the collection is evaluated on its images only. Compare rows with the same number of queries.", icon="⚖️")
    for note in dict.fromkeys(n for r in results for n in r.get("notes", []) if "singleton" in n):
        st.warning(note)
    if any(r.get("ties") for r in results):
        st.caption("Mixed ties: groups of equal distances holding relevant and non-relevant images; they keep the "
                   "collection's order (the README's evaluation protocol), so such a class's AP can depend on file names.")
    st.dataframe(
        table, hide_index=True, width="stretch",
        column_config={c: st.column_config.ProgressColumn(c, format="%.3f", min_value=0, max_value=1) for c in ("mAP", "P@10", "P@20", "R-precision")},
    )
    st.plotly_chart(interpolated_figure(results), key="eval_pr")
    if len(results) > 1:
        significance(results)
    downloads = st.container(horizontal=True)  # each button as wide as its label (two read "⬇ PR figur…")
    for label, make, ext, mime in (
            ("⬇ CSV", lambda: reports_csv(results), "csv", "text/csv"),
            ("⬇ JSON", lambda: reports_json(results), "json", "application/json"),
            ("⬇ PR figure (HTML)", lambda: pr_html(report_curves(results), "Mean 11-point interpolated PR"), "html", "text/html"),
            ("⬇ PR figure (PNG)", lambda: pr_png(report_curves(results), "Mean 11-point interpolated PR"), "png", "image/png")):
        downloads.download_button(label, make, f"evaluation.{ext}", mime, key=f"eval_dl_{ext}", on_click="ignore", width="content")

    st.subheader("Average precision per class")
    classes = list(results[0]["per_class_AP"])
    heat = pd.DataFrame([[r["per_class_AP"].get(c, 0.0) for c in classes] for r in results], index=[r["label"] for r in results], columns=classes)
    fig = px.imshow(heat, text_auto=".2f", color_continuous_scale="Blues", zmin=0, zmax=1, aspect="auto")
    # at least 260 px: with one row the colour bar collapsed to a sliver
    fig.update_layout(height=max(260, 120 + 40 * len(results)), margin=dict(l=10, r=10, t=30, b=10), coloraxis_colorbar=dict(title="AP"))
    st.plotly_chart(fig, key="eval_heatmap")


# the evaluation's results under its form; the weight sweep after them (its results pushed them far down)
if st.session_state.get("eval_results"):
    show_results(st.session_state["eval_results"])
else:
    st.info("Choose models and metrics, then **Run evaluation**. Every labelled image is used once as a query.")

st.subheader("Tune fusion weights")
with st.form("sweep_form"):
    c1, c2, c3 = st.columns([3, 1.3, 1])
    sweep_models = c1.multiselect("Models (2 or 3)", searchable, default=searchable[:2], max_selections=3,
                                  format_func=model_label, key="sweep_models")
    sweep_method = c2.selectbox("Fusion", SWEEP_METHODS, format_func=lambda m: FUSIONS[m].label, key="sweep_method")
    sweep_step = c3.selectbox("Step", [0.25, 0.2, 0.1, 0.05], index=2, key="sweep_step")
    run_sweep = st.form_submit_button("Sweep the weights")
    st.caption("Swept on vectors centred on the collection's mean under cosine and Euclidean, as searches are by default.")
if run_sweep:
    bar = st.progress(0.0, text="Sweeping…")
    try:
        with long_job_slot(lambda done, total: bar.progress(done / total, text=f"Weightings evaluated: {done}/{total}")) as progress:
            st.session_state["eval_sweep"] = sweep_weights(engine, sweep_models, sweep_method, float(sweep_step),
                                                           progress=progress).to_dict()
    except Exception as exc:
        show_error(exc)
sweep = st.session_state.get("eval_sweep")
if sweep:
    best, equal = sweep["best"], sweep["equal_weights"]
    st.plotly_chart(sweep_figure(sweep), key="eval_sweep_plot")
    c1, c2 = st.columns([4, 1])
    verdict = "equal weights are as good (within 0.001 mAP)" if abs(sweep["gain_over_equal"]) < 0.001 else \
        f"{sweep['gain_over_equal']:+.4f} mAP over equal weights"
    c1.markdown(f"**Best:** {', '.join(f'{model_label(m)} {w:g}' for m, w in best['weights'].items())} · mAP {best['mAP']:.4f} · "
                f"P@20 {best['P@20']:.4f} — {verdict} (mAP {equal['mAP']:.4f}); {len(sweep['points'])} weightings × "
                f"{sweep['queries']} queries in {sweep['seconds']:.1f} s.")
    if c2.button("Use these weights", key="eval_use_weights", type="primary"):
        st.session_state["search_apply"] = {"models": sweep["models"], "method": sweep["method"], "weights": best["weights"]}
        st.switch_page("app_pages/search.py")
