"""Results and reports as files: search results (CSV, and JSON with the parameters used),
evaluation reports (CSV, JSON) and precision-recall figures (one self-contained HTML file
with Plotly inside, or a PNG drawn with matplotlib, no browser needed). The app offers
them as downloads, the CLI writes them."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Sequence

import plotly.graph_objects as go

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04", "#db2777", "#65a30d"]
Curve = tuple[str, Sequence[float], Sequence[float]]  # name, recall, precision
SEARCH_FIELDS = ["query_id", "query_label", "metric", "backend", "method", "list", "rank", "id", "label", "score", "relevant",
                 "collection", "centred"]
#: A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """``value`` as a spreadsheet will show it, never run it: a string that starts with
    ``= + - @``, tab or CR gets a leading ``'`` (OWASP's rule), so ``=HYPERLINK(...)`` stays
    text. Anything else, numbers included (-0.5 is a number, not a formula), is unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(header: Sequence[str], rows) -> str:
    """The one CSV writer of every export (CLI ``--csv``, API ``?format=csv``, the app's
    downloads): every cell, header included, through :func:`safe_cell`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([safe_cell(h) for h in header])
    writer.writerows([safe_cell(v) for v in row] for row in rows)
    return out.getvalue()


def search_json(result: dict) -> str:
    """The search response with its parameters (metric, top k, fusion, weights, re-ranking,
    backend, depth), as the API returns it."""
    return json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2) + "\n"


def search_csv(result: dict) -> str:
    """One row per hit of every list (each model, then the fusion), with the parameters."""
    lists = list(result["models"].items()) + ([("combined", result["combined"])] if result.get("combined") else [])
    query = [result["query"]["id"] or "(upload)", result["query"]["label"] or "", result["metric"], result.get("backend", "exact"),
             result.get("method") or ""]
    return write_csv(SEARCH_FIELDS, ([*query, name, *(hit[k] for k in ("rank", "id", "label", "score", "relevant")),
                                      result.get("collection") or "", bool(result.get("centred"))]
                                     for name, ranked in lists for hit in ranked["results"]))


def reports_json(reports: Sequence[dict]) -> str:
    return json.dumps(list(reports), indent=2) + "\n"


def reports_csv(reports: Sequence[dict]) -> str:
    """One row per evaluation: the summary figures, then the AP of every class."""
    classes = sorted({c for r in reports for c in r.get("per_class_AP", {})})
    return write_csv(["name", "metric", "queries", "mAP", "P@10", "P@20", "R-precision", "queries scored",
                      "singleton queries left out", "mixed ties", "collection", "centred", *[f"AP {c}" for c in classes]],
                     ([r["name"], r["metric"], r["queries"], r["mAP"], r["P@10"], r["P@20"], r["R-precision"],
                       r.get("queries_scored", r["queries"]), r.get("singleton_queries_left_out", 0), r.get("ties", 0), r.get("collection") or "", bool(r.get("centred")),
                       *[r.get("per_class_AP", {}).get(c, "") for c in classes]] for r in reports))


def pr_figure(curves: Sequence[Curve], title: str = "Precision–recall") -> go.Figure:
    """The Plotly PR figure of the app (a fused curve, named "Combined…", drawn thicker)."""
    fig = go.Figure()
    for i, (name, recall, precision) in enumerate(curves):
        shown = html.escape(name)  # Plotly renders names as HTML, and pr_html puts them in a <script>
        fig.add_trace(go.Scatter(
            x=list(recall), y=list(precision), mode="lines", name=shown,
            line=dict(color=PALETTE[i % len(PALETTE)], width=3 if name.startswith("Combined") else 2),
            hovertemplate="recall %{x:.2f}<br>precision %{y:.3f}<extra>" + shown + "</extra>",
        ))
    fig.update_layout(
        title=html.escape(title), xaxis_title="Recall", yaxis_title="Precision", height=380, margin=dict(l=10, r=10, t=50, b=10),
        xaxis=dict(range=[0, 1.0]), yaxis=dict(range=[0, 1.05]), legend=dict(orientation="h", y=-0.2), template="plotly_white",
    )
    return fig


def report_curves(reports: Sequence[dict]) -> list[Curve]:
    """The mean 11-point interpolated PR curve of each evaluation report."""
    from .evaluation import RECALL_LEVELS

    return [(r.get("label") or r["name"], list(RECALL_LEVELS), r["pr_11_point"]) for r in reports]


def pr_html(curves: Sequence[Curve], title: str = "Precision–recall") -> str:
    """A self-contained interactive page (Plotly's script inside: opens offline)."""
    return pr_figure(curves, title).to_html(include_plotlyjs=True, full_html=True)


def pr_png(curves: Sequence[Curve], title: str = "Precision–recall") -> bytes:
    """The same curves as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for i, (name, recall, precision) in enumerate(curves):
            ax.plot(recall, precision, label=name, color=PALETTE[i % len(PALETTE)], linewidth=2.5 if name.startswith("Combined") else 1.6)
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="Recall", ylabel="Precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def write_figure(path: str, curves: Sequence[Curve], title: str) -> None:
    """``path`` ending in .html or .png; anything else is a clear error."""
    from pathlib import Path

    from .errors import CBIRError

    suffix = Path(path).suffix.lower()
    if suffix not in (".html", ".png"):
        raise CBIRError(f"the figure is written as .html or .png, not {suffix or 'a file without extension'}: {path}")
    if suffix == ".html":
        Path(path).write_text(pr_html(curves, title))
    else:
        Path(path).write_bytes(pr_png(curves, title))
