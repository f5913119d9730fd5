"""Collection: this collection's coverage per model, (re-)indexing with progress, imports and
uploads; every collection of the server, with adding one (a zip or a server folder) and
removing one."""

from __future__ import annotations

import contextlib
import os
import time

import pandas as pd
import streamlit as st

from cbir.collection import LABELS_FILE, add_images, image_extensions
from cbir.errors import CBIRError
from cbir.extractors import default_model, get_spec, name_of
from cbir.importing import IMPORT_SUFFIXES
from cbir.extraction import index_collection
from cbir.recipes import PRESETS, STORED_RECIPES
from cbir.index import BACKENDS
from app_pages.common import (
    current_role, for_this_user, get_engine, get_services, get_users, model_label, reload_engine, require_login, show_error,
    switch_collection, upload_bytes,
)

require_login()  # first: this page also runs if Streamlit ever reaches it without app.py

engine = get_engine()
collection = engine.collection
settings = engine.settings
role = current_role()
username = st.session_state.get("username") or "unknown"
LABEL_SOURCES = {"labels.csv": "labels.csv", "folders": "sub-folder names", "none": "nowhere (unlabelled)"}

st.title(f"🗂️ Collection · {collection.name}")
st.caption(
    f"Folder `{for_this_user(str(collection.root))}` · {len(collection):,} images · labels from "
    f"{LABEL_SOURCES[collection.label_source]}"
    + (f" · {len(collection.class_counts())} classes" if collection.has_labels else "")
    + " · switch collections in the sidebar"
)
if "collection_notice" in st.session_state:
    st.success(st.session_state.pop("collection_notice"))
    skipped_entries = st.session_state.pop("collection_notice_skipped", None)
    if skipped_entries:
        with st.expander(f"{len(skipped_entries)} zip entr{'y' if len(skipped_entries) == 1 else 'ies'} skipped", expanded=True):
            st.dataframe(pd.DataFrame([{"Entry": n, "Why": w} for n, w in skipped_entries]), hide_index=True, width="stretch")

infos = engine.model_info()
coverage = {m["name"]: engine.coverage(m["name"]) for m in infos}
table = pd.DataFrame(
    [{"Model": model_label(m["name"]), "Dim": m["dim"], "Weights": "✅ available" if m["available"] else "❌ missing",
      "Indexed": coverage[m["name"]]["indexed"], "Missing": coverage[m["name"]]["missing"], "Failed": coverage[m["name"]]["failed"],
      "Up to date": "✅" if coverage[m["name"]]["indexed"] == len(collection) else ("—" if not coverage[m["name"]]["indexed"] else "⚠️ partial"),
      "Last indexed": m["last_indexed"] or "never"} for m in infos]
)
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "Indexed": st.column_config.NumberColumn(help="Images of the folder with a vector: searchable"),
    "Missing": st.column_config.NumberColumn(help="Images of the folder not extracted yet (new or changed): Index / update below"),
    "Failed": st.column_config.NumberColumn(help="Images the last indexing run could not decode or extract (named below)"),
})
if collection.label_note:
    st.warning(collection.label_note)
if collection.skipped:
    with st.expander(f"{len(collection.skipped)} file(s) skipped while reading the folder (hidden, links, formats, strays)"):
        st.dataframe(pd.DataFrame([{"File": name, "Why": why} for name, why in collection.skipped]), hide_index=True, width="stretch")
failed = [(model_label(name), image_id, why) for name, c in coverage.items() for image_id, why in c["failed_list"]]
if failed:
    with st.expander(f"{len(failed)} image(s) failed at the last indexing run (decoding or the model)"):
        st.dataframe(pd.DataFrame([{"Model": m, "Image": i, "Why": for_this_user(w)} for m, i, w in failed]), hide_index=True, width="stretch")

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



def index_models(target, models: list[str], runner=None) -> list[str]:
    """Index each of ``models`` on ``target`` (an engine) with a progress bar (and the Dask
    dashboard's address); returns each run's summary."""
    summaries = []
    if runner is not None:
        st.markdown(f"Dask dashboard: [{runner.dashboard}]({runner.dashboard}) (reachable from this machine)")
    for name in models:
        bar = st.progress(0.0, text=f"{model_label(name)}: starting…")
        started = time.perf_counter()

        def progress(done: int, total: int, bar=bar, name=name) -> None:
            rate = done / max(time.perf_counter() - started, 1e-6)
            bar.progress(done / max(total, 1), text=f"{model_label(name)}: {done}/{total} images · {rate:.1f} images/s")

        with st.spinner(f"Loading {model_label(name)}…"):
            extractor = target.extractor(name) if runner is None else None
        report = index_collection(target.collection, name, settings.features_dir, batch_size=settings.batch_size,
                                  threads=settings.decode_threads, max_pixels=settings.max_image_pixels,
                                  progress=progress, extractor=extractor, runner=runner)
        bar.progress(1.0, text=report.summary())
        summaries.append(report.summary())
        if report.skipped:
            with st.expander(f"{len(report.skipped)} image(s) skipped"):
                for line in report.skipped:
                    st.text(for_this_user(line))
    return summaries


def index_section() -> None:
    """Index or update: researchers and admins (a student only sees the counts above)."""
    st.subheader("Index or update")
    if role not in ("admin", "researcher"):
        st.caption("Researchers and admins index collections (extraction takes the server's cores).")
        return
    available = [m["name"] for m in infos if m["available"] and m["extracts"]]  # imported features are never extracted
    c1, c4, c2, c3 = st.columns([3, 1.6, 1, 1])
    chosen = c1.multiselect("Models to index", available, default=[m for m in available if coverage[m]["indexed"] != len(collection)][:1],
                            format_func=model_label, key="coll_models")
    where = c2.selectbox("Run on", ["This process", "Local Dask cluster"] + (["Dask scheduler"] if settings.dask_scheduler else []),
                         key="coll_where", help="A local Dask cluster runs one worker process per core; the Dask scheduler is "
                         f"{settings.dask_scheduler or 'unset (CBIR_DASK_SCHEDULER)'}. Workers must see the collection at the same path.")
    workers = c3.number_input("Workers", 1, 64, max(1, os.cpu_count() or 1), key="coll_workers", disabled=where != "Local Dask cluster")
    preset = c4.selectbox("Recipe", [None, *STORED_RECIPES], key="coll_recipe",
                          format_func=lambda p: "Average pooling (the model's store)" if p is None else
                          f"{p.replace('_', '-')}: {PRESETS[p][0].extraction.label} (x{PRESETS[p][0].cost:g})",
                          help="Store the vectors under a descriptor recipe, beside the model's own store, as a model of its "
                               "own (e.g. EfficientNet-Lite1 · 3-scale · √): searched, fused and centred like any model. "
                               "Category: what Wang measures (fused mAP 0.923); near-duplicate: crops and re-encodings of "
                               "one picture. The cost is in passes of the model per image.")
    if preset is not None:
        chosen = list(dict.fromkeys(name_of(get_spec(m).base or m, preset) for m in chosen))
    if not st.button("Index / update", type="primary", key="coll_index", disabled=not chosen):
        return
    from cbir.distributed import DaskRunner

    try:
        if where == "Local Dask cluster":
            runner = DaskRunner(workers=int(workers))
        elif where == "Dask scheduler":
            runner = DaskRunner(scheduler=settings.dask_scheduler)
        else:
            runner = contextlib.nullcontext()
        with st.spinner("Indexing…" if where == "This process" else f"Indexing on the {where.lower()}…"), runner as dask:
            summaries = index_models(engine, chosen, dask)
        st.session_state["collection_notice"] = "\n\n".join(["Indexing finished. Searches use the new features right away."]
                                                             + [for_this_user(line) for line in summaries])
        st.rerun()  # the counts above, up to date
    except Exception as exc:
        show_error(exc)


index_section()

def delete_imported_section() -> None:
    """Delete an imported model: its owner or an admin (the store records who imported it)."""
    from cbir.importing import Importer, delete_imported, imported_models

    names = imported_models(settings.features_dir, collection.name)
    if not names:
        return
    with st.form("coll_delete_imported"):
        c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
        victim = c1.selectbox("Delete an imported model", names, format_func=model_label, key="coll_delete_model")
        sure = c2.checkbox("Yes, delete its features", key="coll_delete_sure")
        go = c3.form_submit_button("Delete", width="stretch")
    if not go:
        return
    if not sure:
        st.warning("Tick the confirmation box first.")
        return
    try:
        model = delete_imported(victim, collection, settings.features_dir, Importer(username, admin=role == "admin"))
        get_users().log("features_deleted", model, "app", "ok", username)
        reload_engine()
        st.session_state["coll_import_done"] = f"Deleted {model} and its features."
        st.rerun()
    except CBIRError as exc:
        show_error(exc)


st.subheader("Import features computed elsewhere")
if role in ("admin", "researcher"):
    with st.form("coll_import", clear_on_submit=True):
        c1, c2 = st.columns([3, 1])
        features_file = c1.file_uploader("Features file", type=[t[1:] for t in IMPORT_SUFFIXES], key="coll_import_file",
                                         max_upload_size=settings.max_upload_mb,
                                         help="ids (or paths / file names) and vectors; the legacy pickled list of (path, vector) is read "
                                              "by a restricted unpickler")
        import_name = c2.text_input("Name", key="coll_import_name", placeholder="e.g. clip")
        import_replace = c2.checkbox("Replace", key="coll_import_replace", help="overwrite an existing model of this name "
                                     "(yours, or any as an admin)")
        imported = st.form_submit_button("Import")
    features_bytes = upload_bytes(features_file) if imported and features_file is not None else None
    if features_bytes is not None:
        from cbir.importing import ImportLimits, Importer, import_upload

        try:
            report = import_upload(features_bytes, features_file.name, import_name, collection, settings.features_dir,
                                   limits=ImportLimits.from_settings(settings, len(collection)),
                                   by=Importer(username, admin=role == "admin"), replace=import_replace)
            get_users().log("features_imported", report.model, "app", "replaced" if report.replaced else "created", username)
            reload_engine()
            st.session_state["coll_import_done"] = report.summary() + f". It is now the model **{report.model}** on every page."
            st.rerun()  # the tables above list the new model
        except CBIRError as exc:
            show_error(exc)
    if "coll_import_done" in st.session_state:
        st.success(st.session_state.pop("coll_import_done"))
    delete_imported_section()
else:
    st.caption("Researchers and admins can import features (`.npz`, `.npy`, Parquet, CSV, or a pickled list of (path, vector)).")


def add_images_section() -> None:
    st.subheader("Add images")
    if role not in ("admin", "researcher"):
        st.info("Researchers and admins can upload images into the collection.")
        return
    if not os.access(collection.root, os.W_OK):
        st.info(f"The collection folder `{for_this_user(str(collection.root))}` is read-only here (in Docker Compose it is "
                "mounted read-only); mount it read-write to add images.")
        return
    with st.form("coll_upload", clear_on_submit=True):
        files = st.file_uploader("Images", type=sorted(e[1:] for e in image_extensions()), accept_multiple_files=True,
                                 key="coll_files", max_upload_size=settings.max_upload_mb)
        known = sorted(collection.class_counts())
        if collection.label_source == "labels.csv":
            c1, c2 = st.columns(2)
            label_pick = c1.selectbox("Label", ["(new label)"] + known, key="coll_label_pick")
            label_new = c2.text_input("New label", key="coll_label_new", placeholder="e.g. boats")
        else:
            label_pick, label_new = "(none)", ""
            st.caption("This collection takes labels from sub-folders or has none; uploads go to an `uploads/` folder.")
        submitted = st.form_submit_button("Add to collection")
    if not (submitted and files):
        return
    label = (label_new.strip() if label_pick == "(new label)" else label_pick) if collection.label_source == LABELS_FILE else None
    uploads = [(f.name, upload_bytes(f)) for f in files]  # the uploader's limit is the browser's; the server checks it again
    try:
        report = add_images(collection, [(name, data) for name, data in uploads if data is not None], label, settings.max_image_pixels)
    except CBIRError as exc:
        show_error(exc)
        return
    for r in report.rejected:
        st.error(r)
    if report.added:
        reload_engine()
        st.success(f"Added {len(report.added)} image(s)" + (f" labelled '{label}'" if label else "") + ". Index them above to make them searchable.")
        st.button("Refresh", key="coll_refresh")


add_images_section()


# -- every collection of the server -------------------------------------------------------
@st.cache_data(ttl=30, max_entries=8, show_spinner="Reading the collections…")
def collection_rows(names: tuple[str, ...], registry_mtime: float) -> list[dict]:
    """What the server's collections hold (their folders scanned): cached 30 s per registry version."""
    from cbir.collection_registry import describe

    registry = get_services().registry
    entries = registry.entries()
    return [describe(registry, entries[n]) for n in names if n in entries]


def registry_mtime() -> float:
    try:
        return get_services().registry.path.stat().st_mtime
    except OSError:
        return 0.0


def unpack_and_index(name: str, upload, model: str | None) -> None:
    """The zip ``upload`` made into the collection ``name``, indexed with ``model``, with progress."""
    services = get_services()
    bar = st.progress(0.0, text="Unpacking the zip…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Unpacking: {done / 2**20:,.1f} / {total / 2**20:,.1f} MiB")

    upload.seek(0)
    entry, unpacked = services.registry.add_zip(name, upload, username, progress=progress)
    get_users().log("collection_added", entry.name, "app", "ok", username)
    bar.progress(1.0, text=f"Unpacked {unpacked.images:,} image(s), {unpacked.bytes / 2**20:,.1f} MiB"
                 + (f" (the top folder {unpacked.prefix}/ stripped)" if unpacked.prefix else ""))
    st.session_state["collection_notice_skipped"] = unpacked.skipped  # shown on the new collection's page
    notice = (f"The collection **{entry.name}** was added from the zip ({unpacked.images:,} images"
              + (f", {len(unpacked.skipped)} entr{'y' if len(unpacked.skipped) == 1 else 'ies'} skipped: listed below"
                 if unpacked.skipped else "") + ").")
    if model:
        try:
            index_models(services.get(entry.name).engine, [model])
            notice += f" It is indexed with {model_label(model)}: search it now."
        except Exception as exc:
            show_error(exc)
            notice += " Indexing failed (above); index it on this page."
    st.session_state["collection_notice"] = notice
    switch_collection(entry.name)


st.divider()
st.subheader("Collections on this server")
services = get_services()
try:
    names = tuple(services.registry.entries())
except CBIRError as exc:
    show_error(exc)
    names = (collection.name,)
rows = collection_rows(names, registry_mtime())
st.dataframe(pd.DataFrame([
    {"Name": r["name"] + (" (default)" if r["default"] else ""), "Images": r["images"],
     "Labels": LABEL_SOURCES.get(r["labels"], r["labels"]), "Models indexed": ", ".join(model_label(m) for m in r["models"]) or "none",
     "Added by": r["added_by"], "Images uploaded": "yes" if r["uploaded"] else "", "Problem": for_this_user(r["error"] or "")}
    for r in rows]), hide_index=True, width="stretch")

if role in ("admin", "researcher"):
    zip_tab, folder_tab = st.tabs(["Add from a zip", "Add a folder of the server"])
    with zip_tab:
        with st.form("coll_zip", clear_on_submit=False):
            c1, c2 = st.columns([2, 1])
            zip_file = c1.file_uploader("Zip of images", type=["zip"], key="coll_zip_file", max_upload_size=settings.zip_max_mb,
                                        help=f"Up to {settings.zip_max_mb} MB. One folder per class gives labels (or a "
                                             "labels.csv); a single top folder is stripped. Links, hidden files and files "
                                             "that are not images are skipped and listed.")
            zip_name = c2.text_input("Name", key="coll_zip_name", placeholder="e.g. class-photos", max_chars=64)
            extractable = [m["name"] for m in infos if m["available"] and m["extracts"]]
            zip_model = c2.selectbox("Index with", [*extractable, None], key="coll_zip_model",
                                     index=extractable.index(default_model()) if default_model() in extractable else 0,
                                     format_func=lambda m: "(index later)" if m is None else model_label(m))
            add_zip = st.form_submit_button("Upload and index", type="primary")
        if add_zip:
            if zip_file is None or not zip_name.strip():
                st.warning("Choose a zip file and a name.")
            elif zip_file.size > settings.zip_max_mb << 20:
                st.error(f"The zip is {zip_file.size / 2**20:,.0f} MB; at most {settings.zip_max_mb} MB (CBIR_ZIP_MAX_MB).")
            else:
                try:
                    unpack_and_index(zip_name.strip(), zip_file, zip_model)
                except CBIRError as exc:
                    show_error(exc)
    with folder_tab:
        with st.form("coll_folder", clear_on_submit=False):
            c1, c2 = st.columns([2, 1])
            folder = c1.text_input("Folder", key="coll_folder_path", placeholder="e.g. holidays (inside the collections folder)",
                                   help="A folder inside CBIR_COLLECTIONS_ROOT on the server (an admin adds others with "
                                        "`cbir collections add NAME FOLDER`). Its images stay where they are.")
            folder_name = c2.text_input("Name", key="coll_folder_name", max_chars=64)
            add_folder = st.form_submit_button("Add folder")
        if add_folder:
            try:
                entry = services.registry.add(folder_name.strip(), folder.strip(), username, confined=True)
                get_users().log("collection_added", entry.name, "app", "ok", username)
                st.session_state["collection_notice"] = f"The collection **{entry.name}** was added: index it below to search it."
                switch_collection(entry.name)
            except CBIRError as exc:
                show_error(exc)
else:
    st.caption("Researchers and admins can add collections (a zip, or a folder of the server).")

removable = [r["name"] for r in rows if not r["default"]]
if role == "admin" and removable:
    with st.form("coll_remove"):
        st.markdown("**Remove a collection** (its feature stores go; its images only if they were uploaded as a zip)")
        c1, c2 = st.columns([2, 1])
        gone = c1.selectbox("Collection", removable, key="coll_remove_name")
        sure = c2.checkbox("Yes, remove it", key="coll_remove_sure")
        remove = st.form_submit_button("Remove")
    if remove:
        if not sure:
            st.warning("Tick “Yes, remove it” first.")
        else:
            try:
                entry = services.registry.remove(gone)
                services.forget(entry.name)
                get_users().log("collection_removed", entry.name, "app", "ok", username)
                st.session_state["collection_notice"] = f"The collection {entry.name} was removed" + (
                    " with its uploaded images." if entry.uploaded else "; its folder was left in place.")
                switch_collection(services.default.engine.collection.name if entry.name == collection.name else collection.name)
            except CBIRError as exc:
                show_error(exc)
