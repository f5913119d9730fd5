"""Collection: per-model index status, (re-)indexing with progress, uploads into the collection."""

from __future__ import annotations

import contextlib
import os
import time

import pandas as pd
import streamlit as st

from cbir.collection import LABELS_FILE, add_images, image_extensions
from cbir.errors import CBIRError
from cbir.importing import IMPORT_SUFFIXES
from cbir.extraction import index_collection
from cbir.index import BACKENDS
from app_pages.common import current_role, for_this_user, get_engine, get_users, model_label, reload_engine, require_login, show_error

require_login()  # first: this page also runs if Streamlit ever reaches it without app.py

engine = get_engine()
collection = engine.collection
settings = engine.settings
st.title("🗂️ Collection")
st.caption(
    f"Folder `{collection.root}` · {len(collection):,} images · labels from "
    f"{ {'labels.csv': 'labels.csv', 'folders': 'sub-folder names', 'none': 'nowhere (unlabelled)'}[collection.label_source] }"
    + (f" · {len(collection.class_counts())} classes" if collection.has_labels else "")
)

infos = engine.model_info()
table = pd.DataFrame(
    [{"Model": model_label(m["name"]), "Dim": m["dim"], "Weights": "✅ available" if m["available"] else "❌ missing",
      "Indexed images": m["indexed"], "Up to date": "✅" if m["indexed"] == len(collection) else ("—" if not m["indexed"] else "⚠️ partial"),
      "Last indexed": m["last_indexed"] or "never"} for m in infos]
)
st.dataframe(table, hide_index=True, width="stretch")
if collection.label_note:
    st.warning(collection.label_note)
if collection.skipped:
    with st.expander(f"{len(collection.skipped)} file(s) skipped while reading the folder (hidden, links, formats, strays)"):
        st.dataframe(pd.DataFrame([{"File": name, "Why": why} for name, why in collection.skipped]), hide_index=True, width="stretch")

st.subheader("Vector indexes")
folders = {m["name"]: engine.store_folder(m["name"]) for m in infos if m["searchable"]}
default = engine.resolve_backend(None, list(folders)) if folders and settings.index_backend == "auto" else settings.index_backend
st.dataframe(pd.DataFrame([
    {"Backend": b.label, "Available": "✅" if ok else "❌", "Why": why, "Search": "exact" if b.exact else "approximate",
     "Metrics": ", ".join(b.metrics), "Re-ranking": ", ".join(b.reranks),
     "Built for": ", ".join(model_label(m) for m, f in folders.items() if list(f.glob(b.files))) if b.files else b.keeps,
     "Default": "●" if name == default else ""}
    for name, b in BACKENDS.items() for ok, why in [b.available(settings)]
]), hide_index=True, width="stretch")

missing = [m for m in infos if not m["available"]]
if missing:
    with st.expander(f"Missing weights ({len(missing)}) and how to get them"):
        for m in missing:
            st.markdown(f"**{model_label(m['name'])}**: {for_this_user(m['reason'])}")

st.subheader("Index or update")
available = [m["name"] for m in infos if m["available"] and m["extracts"]]  # imported features are never extracted
c1, c2, c3 = st.columns([3, 1, 1])
chosen = c1.multiselect("Models to index", available, default=[m["name"] for m in infos if m["name"] in available and m["indexed"] != len(collection)][:1], format_func=model_label, key="coll_models")
where = c2.selectbox("Run on", ["This process", "Local Dask cluster"] + (["Dask scheduler"] if settings.dask_scheduler else []),
                     key="coll_where", help="A local Dask cluster runs one worker process per core; the Dask scheduler is "
                     f"{settings.dask_scheduler or 'unset (CBIR_DASK_SCHEDULER)'}. Workers must see the collection at the same path.")
workers = c3.number_input("Workers", 1, 64, max(1, os.cpu_count() or 1), key="coll_workers", disabled=where != "Local Dask cluster")


def index_models(runner) -> None:
    """Index each chosen model with a progress bar (and the Dask dashboard's address)."""
    if runner is not None:
        st.markdown(f"Dask dashboard: [{runner.dashboard}]({runner.dashboard}) (reachable from this machine)")
    for name in chosen:
        bar = st.progress(0.0, text=f"{model_label(name)}: starting…")
        started = time.perf_counter()

        def progress(done: int, total: int, bar=bar, name=name) -> None:
            rate = done / max(time.perf_counter() - started, 1e-6)
            bar.progress(done / max(total, 1), text=f"{model_label(name)}: {done}/{total} images · {rate:.1f} images/s")

        with st.spinner(f"Loading {model_label(name)}…"):
            extractor = engine.extractor(name) if runner is None else None
        report = index_collection(collection, name, settings.features_dir, batch_size=settings.batch_size,
                                  threads=settings.decode_threads, max_pixels=settings.max_image_pixels,
                                  progress=progress, extractor=extractor, runner=runner)
        bar.progress(1.0, text=report.summary())
        if report.skipped:
            with st.expander(f"{len(report.skipped)} image(s) skipped"):
                for line in report.skipped:
                    st.text(for_this_user(line))


if st.button("Index / update", type="primary", key="coll_index", disabled=not chosen):
    from cbir.distributed import DaskRunner

    try:
        if where == "Local Dask cluster":
            runner = DaskRunner(workers=int(workers))
        elif where == "Dask scheduler":
            runner = DaskRunner(scheduler=settings.dask_scheduler)
        else:
            runner = contextlib.nullcontext()
        with st.spinner("Indexing…" if where == "This process" else f"Indexing on the {where.lower()}…"), runner as dask:
            index_models(dask)
        st.success("Indexing finished. Searches use the new features right away.")
    except Exception as exc:
        show_error(exc)

st.subheader("Import features computed elsewhere")
if current_role() in ("admin", "researcher"):
    with st.form("coll_import", clear_on_submit=True):
        c1, c2 = st.columns([3, 1])
        features_file = c1.file_uploader("Features file", type=[t[1:] for t in IMPORT_SUFFIXES], key="coll_import_file",
                                         help="ids (or paths / file names) and vectors; the legacy pickled list of (path, vector) is read "
                                              "by a restricted unpickler")
        import_name = c2.text_input("Name", key="coll_import_name", placeholder="e.g. clip")
        import_replace = c2.checkbox("Replace", key="coll_import_replace", help="overwrite an existing model of this name "
                                     "(yours, or any as an admin)")
        imported = st.form_submit_button("Import")
    if imported and features_file is not None:
        from cbir.importing import ImportLimits, Importer, import_upload

        try:
            username = st.session_state.get("username") or "unknown"
            report = import_upload(features_file.getvalue(), features_file.name, import_name, collection, settings.features_dir,
                                   limits=ImportLimits.from_settings(settings, len(collection)),
                                   by=Importer(username, admin=current_role() == "admin"), replace=import_replace)
            get_users().log("features_imported", report.model, "app", "replaced" if report.replaced else "created", username)
            reload_engine()
            st.session_state["coll_import_done"] = report.summary() + f". It is now the model **{report.model}** on every page."
            st.rerun()  # the tables above list the new model
        except CBIRError as exc:
            show_error(exc)
    if "coll_import_done" in st.session_state:
        st.success(st.session_state.pop("coll_import_done"))
else:
    st.caption("Researchers and admins can import features (`.npz`, `.npy`, Parquet, CSV, or a pickled list of (path, vector)).")

st.subheader("Add images")
if current_role() not in ("admin", "researcher"):
    st.info("Researchers and admins can upload images into the collection.")
    st.stop()
if not os.access(collection.root, os.W_OK):
    st.info(f"The collection folder `{collection.root}` is read-only here (in Docker Compose it is mounted read-only); "
            "mount it read-write to add images.")
    st.stop()

with st.form("coll_upload", clear_on_submit=True):
    files = st.file_uploader("Images", type=sorted(e[1:] for e in image_extensions()), accept_multiple_files=True, key="coll_files")
    known = sorted(collection.class_counts())
    if collection.label_source == "labels.csv":
        c1, c2 = st.columns(2)
        label_pick = c1.selectbox("Label", ["(new label)"] + known, key="coll_label_pick")
        label_new = c2.text_input("New label", key="coll_label_new", placeholder="e.g. boats")
    else:
        label_pick, label_new = "(none)", ""
        st.caption("This collection takes labels from sub-folders or has none; uploads go to an `uploads/` folder.")
    submitted = st.form_submit_button("Add to collection")

if submitted and files:
    label = (label_new.strip() if label_pick == "(new label)" else label_pick) if collection.label_source == LABELS_FILE else None
    try:
        report = add_images(collection, [(f.name, f.getvalue()) for f in files], label, settings.max_image_pixels)
    except CBIRError as exc:
        show_error(exc)
        st.stop()
    for r in report.rejected:
        st.error(r)
    if report.added:
        reload_engine()
        st.success(f"Added {len(report.added)} image(s)" + (f" labelled '{label}'" if label else "") + ". Index them above to make them searchable.")
        st.button("Refresh", key="coll_refresh")
