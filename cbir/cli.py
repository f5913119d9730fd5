"""`cbir` command line: index, search, explain, evaluate, models, weights, users, api."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_UNEXPECTED, CBIRError, contract_for


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"cbir: error: {message}", file=sys.stderr)
    return code


def _collection(args):
    """``--collection NAME|FOLDER``: a registered name, or a folder scanned as it is (default:
    the default collection)."""
    from .collection_registry import CollectionRegistry
    from .config import get_settings

    return CollectionRegistry(get_settings()).open(args.collection)


def _engine(args):
    from .engine import Engine

    return Engine(_collection(args))


def _models_arg(value: str | None) -> list[str]:
    from .extractors import default_model, get_spec

    if not value:
        return [default_model()]
    return [get_spec(m).name for m in value.split(",") if m.strip()]


def _tqdm_progress(bar):
    """An engine progress callback (done, total) that moves a tqdm bar."""

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return progress


def _weights_arg(value: str | None, models: list[str]) -> dict[str, float] | None:
    if not value:
        return None
    try:
        vals = [float(v) for v in value.split(",")]
    except ValueError:
        raise CBIRError(f"--weights must be comma-separated numbers, got {value!r}") from None
    if len(vals) != len(models):
        raise CBIRError(f"--weights needs {len(models)} numbers, one per model")
    return dict(zip(models, vals))


def _rerank_arg(args):
    from .rerank import Rerank

    return Rerank(args.rerank, args.rerank_n, args.rerank_alpha)


def _add_backend_options(sp) -> None:
    from .index import CHOICES

    sp.add_argument("--backend", default=None, help=f"vector index: {', '.join(CHOICES)} (default: CBIR_INDEX_BACKEND, auto = "
                    "exact up to CBIR_EXACT_MAX vectors, FAISS above)")
    sp.add_argument("--depth", type=_bounded_int(1, 100_000), default=None, help="candidates per model from an approximate index (default 1000); AP is AP@depth")


def _add_normalisation_option(sp) -> None:
    from .fusion import DEFAULT_NORMALISATION, NORMALISATIONS

    sp.add_argument("--normalisation", default=DEFAULT_NORMALISATION,
                    help="score normalisation before average or weighted fusion: " + "; ".join(
                        f"{n.name}: {n.description}" for n in NORMALISATIONS.values()) + " (default %(default)s)")


def _add_centre_option(sp) -> None:
    sp.add_argument("--no-centre", dest="centre", action="store_false",
                    help="cosine and Euclidean on the stored vectors as they are, not centred on the collection's mean "
                         "(the default centres them: cbir.centring)")


def _add_rerank_options(sp) -> None:
    from .rerank import ALPHA_RANGE, DEFAULT_ALPHA, DEFAULT_N, N_RANGE, RERANK_METHODS

    sp.add_argument("--rerank", default="none", help=f"one of {', '.join(RERANK_METHODS)} (aqe: alpha query expansion; "
                    "dba_aqe: database-side augmentation + aqe); cosine only")
    sp.add_argument("--rerank-n", type=int, default=DEFAULT_N, help=f"neighbours used by the expansion, {N_RANGE[0]}-{N_RANGE[1]} (default %(default)s)")
    sp.add_argument("--rerank-alpha", type=float, default=DEFAULT_ALPHA, help=f"similarity exponent, {ALPHA_RANGE[0]:g}-{ALPHA_RANGE[1]:g} (default %(default)s)")


def cmd_models(args) -> int:
    from .extractors import RECIPE_SEP, default_model

    try:
        engine = _engine(args)
        infos = engine.model_info()
    except CBIRError:
        from .extractors import MODELS, model_status

        infos = [dict(name=n, label=s.label, dim=s.dim, available=model_status(n)[0], reason=model_status(n)[1], indexed=0) for n, s in MODELS.items()]
    default = default_model()
    if args.json:
        print(json.dumps({"default": default, "models": infos}, indent=2))
        return 0
    width = max(19, *(len(m["name"]) for m in infos))  # MODEL~PRESET and imported:NAME are longer
    print(f"{'model':<{width + 1}}{'dim':>6}  {'status':<12}{'indexed':>8}  reason")
    for m in infos:
        mark = "*" if m["name"] == default else " "
        status = "available" if m["available"] else "unavailable"
        why = f"{m['label']}: {m.get('description')}" if RECIPE_SEP in m["name"] and m["available"] else m["reason"]
        print(f"{mark}{m['name']:<{width}}{m['dim']:>6}  {status:<12}{m['indexed']:>8}  {why}")
    print("* default model")
    return 0


def cmd_index(args) -> int:
    import contextlib

    from .config import get_settings
    from .extractors import MODELS, can_extract, normalise_weights

    settings = get_settings()
    collection = _collection(args)
    if collection.label_note:
        print(f"cbir: note: {collection.label_note}", file=sys.stderr)
    weights = normalise_weights(args.weights)
    models = _models_arg(args.model) if args.model != "all" else [m for m in MODELS if can_extract(m, weights)[0]]
    if args.recipe:
        models = [_stored_recipe(m, args.recipe) for m in models]
    scheduler = args.scheduler or (None if args.workers else settings.dask_scheduler)
    if args.workers is not None and args.workers < 1:
        return _fail("--workers must be at least 1")
    status = 0
    with _dask_runner(args.workers, scheduler, args.chunk) if (args.workers or scheduler) else contextlib.nullcontext() as runner:
        if runner is not None and not args.quiet:
            print(f"Dask: {'local cluster of ' + str(args.workers) + ' workers' if args.workers else scheduler}, "
                  f"dashboard {runner.dashboard}", file=sys.stderr)
        for model in models:
            ok, reason = can_extract(model, weights)
            if not ok:
                print(f"cbir: error: {model} cannot be extracted: {reason}", file=sys.stderr)
                status = 2
                continue
            _index_one(args, settings, collection, model, weights, runner)
    return status


def _stored_recipe(model: str, preset: str) -> str:
    """``cbir index -m MODEL --recipe PRESET``: the model name ``MODEL~PRESET`` (checked)."""
    from .extractors import get_spec
    from .extractors.registry import name_of
    from .recipes import PRESETS, STORED_RECIPES, parse_recipe

    key = preset.strip().lower().replace("-", "_")
    spec = get_spec(model)
    if spec.recipe:
        raise CBIRError(f"{spec.name} is {spec.base} under a recipe already: give -m {spec.base} with --recipe {preset}")
    if key in PRESETS and key not in STORED_RECIPES:
        raise CBIRError(f"--recipe {preset}: that is how the model's own store describes images (centred at search time "
                        f"by default): index it without --recipe; stored recipes are {', '.join(STORED_RECIPES)}")
    if key not in PRESETS:
        parse_recipe(preset)  # a spelling's own error first, if it has one
        raise CBIRError(f"--recipe {preset}: a recipe is stored by its preset's name, one of {', '.join(STORED_RECIPES)} "
                        "(a spelled recipe is evaluated, not stored: cbir evaluate --recipe)")
    return get_spec(name_of(spec.name, key)).name


def _dask_runner(workers: int | None, scheduler: str | None, chunk: int):
    from .distributed import DaskRunner

    return DaskRunner(workers=workers, scheduler=None if workers else scheduler, chunk=chunk)


SHOWN_SKIPPED = 10  # `cbir index` names this many skipped images unless --all-skipped


def _index_one(args, settings, collection, model: str, weights: str, runner) -> None:
    from tqdm import tqdm

    from .extractors import get_spec
    from .extraction import index_collection

    bar = tqdm(total=len(collection), unit="img", desc=get_spec(model).label, disable=args.quiet, file=sys.stderr)
    report = index_collection(
        collection, model, Path(args.features or settings.features_dir), weights=weights,
        batch_size=args.batch_size or settings.batch_size, threads=settings.decode_threads,
        max_pixels=settings.max_image_pixels, progress=_tqdm_progress(bar), dtype=args.dtype, runner=runner,
    )
    bar.close()
    if runner is not None and runner.resumed:
        print(f"resumed {runner.resumed} images from the shards of an interrupted run")
    print(report.summary())
    skipped = report.skipped
    shown = skipped if args.all_skipped else skipped[:SHOWN_SKIPPED]
    for line in shown:
        print(f"  skipped {line}")
    if len(skipped) > len(shown):
        print(f"  ... and {len(skipped) - len(shown)} more (--all-skipped lists them all)")


def _query_image(args) -> bytes | None:
    """``--id`` or ``--image``: the query image's bytes (None for a collection id); raises
    CBIRError unless exactly one is given, or for a missing file."""
    if (args.id is None) == (args.image is None):
        raise CBIRError("give exactly one query: --id or --image")
    if args.image is None:
        return None
    p = Path(args.image)
    if p.is_dir():
        raise CBIRError(f"{p} is a folder: give an image file")
    if not p.is_file():
        raise CBIRError(f"image file {p} does not exist")
    return p.read_bytes()


def cmd_search(args) -> int:
    from .index import get_backend
    from .request import parse_search

    _check_outputs(args.csv)
    engine = _engine(args)
    models = _models_arg(args.model)
    image = _query_image(args)
    _normalisation_note(args.method if len(models) > 1 else None, args.normalisation)
    request = parse_search(models, args.metric, args.top_k, image_id=args.id, image=image, method=args.method,
                           weights=_weights_arg(args.weights, models), exclude_query=not args.include_query,
                           rerank=_rerank_arg(args), backend=args.backend, depth=args.depth, normalisation=args.normalisation,
                           centre=args.centre)
    resp = engine.search(request)
    if args.csv:
        from .export import search_csv

        _write_text(args.csv, search_csv(resp.to_dict()))
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.json:
        print(json.dumps(resp.to_dict(), indent=2))
        return 0
    lists = list(resp.per_model.values()) + ([resp.fused] if resp.fused else [])
    for rl in lists:
        title = rl.name if rl.name != "combined" else f"combined ({resp.method}{', ' + resp.normalisation if resp.normalisation else ''})"
        where = "" if get_backend(resp.backend).exact else f", {resp.backend} depth {resp.depth}"
        print(f"== {title}  [{resp.metric}{', centred' if resp.centred else ''}, top {resp.top_k}{where}, {rl.seconds * 1000:.1f} ms]")
        for h in rl.hits:
            mark = "" if h.relevant is None else ("  ✓" if h.relevant else "  ✗")
            print(f"{h.rank:>4}  {h.id:<24} {h.score:>10.5f}  {h.label or '':<12}{mark}")
        if rl.has_metrics:
            ap = "AP" if rl.depth is None else f"AP@{rl.depth}"
            print(f"P@{resp.top_k}={rl.precision_at_k:.3f}  R@{resp.top_k}={rl.recall_at_k:.3f}  {ap}={rl.average_precision:.4f}")
        elif rl.n_relevant == 0:
            print(f"P@{resp.top_k}={rl.precision_at_k:.3f}  R@{resp.top_k} and AP undefined: the query is the only image of "
                  "its class (evaluations leave such queries out of mAP)")
    return 0


def cmd_explain(args) -> int:
    """Why did RESULT match the query? Heatmaps from the model's feature maps (cbir.explain)."""
    from .explain import png, render
    from .extractors import default_model

    if args.out and Path(args.out).suffix.lower() != ".png":
        return _fail(f"--out writes a PNG picture: name it .png, not {Path(args.out).name}")
    _check_outputs(args.out)
    engine = _engine(args)
    model = _models_arg(args.model)[0] if args.model else default_model()
    image = _query_image(args)
    explanation, query_image, result_image = engine.explain(model, args.result, image_id=args.id, image=image, centre=args.centre)
    if args.out:
        try:
            Path(args.out).write_bytes(png(render(explanation, query_image, result_image)))
        except OSError as exc:
            raise CBIRError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps({**explanation.to_dict(), "query": args.id, "result": args.result}))
        return 0
    (hq, wq), (hr, wr) = explanation.query_map.shape, explanation.result_map.shape
    print(f"{model}: cosine similarity {explanation.similarity:.4f} of the pooled descriptors"
          f"{' centred on the collection mean' if explanation.centred else ''}, the mean of "
          f"{hq * wq}x{hr * wr} location-pair terms ({explanation.seconds * 1000:.0f} ms); the best pairs "
          f"(row,column of the {hq}x{wq} and {hr}x{wr} grids):")
    for n, (q, r, c) in enumerate(explanation.pairs, 1):
        print(f"{n:>3}  query {q[0]},{q[1]}  result {r[0]},{r[1]}  term {c:.4f}")
    return 0


def cmd_evaluate(args) -> int:
    if args.plot and Path(args.plot).suffix.lower() not in (".html", ".png"):
        return _fail(f"--plot writes .html or .png, not {args.plot}")
    _check_outputs(args.json, args.csv, args.plot)
    engine = _engine(args)
    models = _models_arg(args.model)
    weights = _weights_arg(args.weights, models)
    method = args.method if len(models) > 1 else None
    rerank = _rerank_arg(args)
    settings = dict(models=models, metric=args.metric, method=method, weights=weights, rerank=rerank, backend=args.backend,
                    depth=args.depth, normalisation=args.normalisation, recipe=_recipe_arg(args.recipe), centre=args.centre)
    runs = _planned_runs(engine, settings, args)
    _normalisation_note(method, args.normalisation)
    if args.feedback_rounds:
        if len(models) != 1:
            return _fail("--feedback-rounds evaluates one model at a time")
        if args.compare or args.recipe:
            return _fail("--feedback-rounds simulates feedback on the store's vectors; leave out --compare and --recipe")
        from .distances import normalise_metric

        if normalise_metric(args.metric) != "cosine":
            return _fail(f"--feedback-rounds simulates Rocchio feedback, which is defined for cosine; leave out --metric {args.metric}")
        reports = engine.evaluate_feedback(models[0], rounds=args.feedback_rounds, k=args.feedback_k, rerank=rerank, centre=args.centre)
        print(f"Rocchio feedback with the true labels of the top {args.feedback_k} ({models[0]}, cosine"
              f"{', centred' if args.centre else ''}{', ' + rerank.label if rerank.active else ''})")
        for r, rep in enumerate(reports):
            gain = "" if r == 0 else f"  ({rep.map - reports[0].map:+.4f} mAP)"
            print(f"round {r}: mAP={rep.map:.4f}  P@10={rep.p_at_10:.4f}  P@20={rep.p_at_20:.4f}{gain}")
        return 0
    report = _evaluate_run(engine, runs[0], args)
    _print_report(report)
    body = report.to_dict()
    if len(runs) == 1:
        _write_report(args, body)
        return 0
    from .significance import compare

    body["comparisons"], reports = [], [report]
    for run in runs[1:]:
        other = _evaluate_run(engine, run, args)
        print()
        _print_report(other, per_class=False)
        comparison = compare(report, other)
        print(comparison.verdict())
        body["comparisons"].append({**comparison.to_dict(), "report": other.to_dict()})
        reports.append(other)
    _write_report(args, body, [r.to_dict() for r in reports])
    return 0


def _recipe_arg(text: str | None):
    """``--recipe``: None (the store's vectors; also ``store`` or empty, for ``--compare``), or a
    :class:`cbir.recipes.Recipe`."""
    if text is None or text.strip().lower() in ("", "store"):
        return None
    from .recipes import parse_recipe

    return parse_recipe(text)


def _planned_runs(engine, settings: dict, args) -> list[dict]:
    """The baseline run and one per ``--compare``, all parsed and checked before any work."""
    from .experiments import CHANGES_NOTHING, effective_run
    from .request import check_run

    runs = [settings] + [_compare_arg(text, settings, args.method) for text in args.compare or []]
    for text, run in zip([None, *(args.compare or [])], runs):
        check_run(engine, run["models"], run["metric"], run["rerank"], run.get("recipe"), run.get("backend"), run.get("centre", True))
        if text is not None and effective_run(run) == effective_run(settings):
            raise CBIRError(f"--compare {text!r} {CHANGES_NOTHING}")
    return runs


def _normalisation_note(method: str | None, normalisation: str) -> None:
    """A line on stderr when ``--normalisation`` is given to a fusion that reads ranks."""
    from .fusion import DEFAULT_NORMALISATION, fusion_method

    if method is not None and not fusion_method(method).normalised and normalisation != DEFAULT_NORMALISATION:
        print(f"note: {method} fusion reads ranks; --normalisation {normalisation} changes nothing", file=sys.stderr)


def _evaluate_run(engine, run: dict, args):
    """One run of ``cbir evaluate`` (a recipe: the collection described now, with a bar)."""
    from tqdm import tqdm

    bar = tqdm(total=len(engine.collection), unit="image" if run.get("recipe") else "query", disable=args.quiet, file=sys.stderr,
               desc="describe" if run.get("recipe") else "evaluate")
    try:
        if run.get("recipe") is not None:
            from .recipes import evaluate_recipe

            return evaluate_recipe(engine, run["models"][0], run["recipe"], _tqdm_progress(bar), ties=args.ties, metric=run["metric"],
                                   queries=args.queries, seed=args.seed)
        settings = {k: v for k, v in run.items() if k != "recipe"}
        return engine.evaluate(progress=_tqdm_progress(bar), queries=args.queries, seed=args.seed, ties=args.ties, **settings)
    finally:
        bar.close()


#: ``--compare`` keys: what a comparison run may change of the baseline run.
COMPARE_KEYS = ("model", "recipe", "metric", "method", "normalisation", "weights", "rerank", "rerank_n", "rerank_alpha", "backend",
                "depth", "centre")


def _compare_arg(text: str, base: dict, method: str = "average") -> dict:
    """``--compare "model=a,b method=rrf"``: the baseline run's settings with those changed."""
    import shlex

    from .distances import normalise_metric
    from .fusion import fusion_method, normalisation_method
    from .request import check_flag
    from .rerank import Rerank

    run = dict(base)
    rerank = {"method": base["rerank"].method, "n": base["rerank"].n, "alpha": base["rerank"].alpha}
    try:
        parts = shlex.split(text)
    except ValueError as exc:
        raise CBIRError(f"--compare {text!r}: {exc}") from None
    if not parts:
        raise CBIRError(f"--compare needs settings to change, e.g. --compare \"model=efficientnet_lite1\" (keys: {', '.join(COMPARE_KEYS)})")
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or key not in COMPARE_KEYS:
            raise CBIRError(f"--compare {text!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(COMPARE_KEYS)}")
        if key == "model":
            run["models"] = _models_arg(value)
        elif key == "weights":
            run["weights"] = value
        elif key.startswith("rerank"):
            rerank[key.removeprefix("rerank_") if key != "rerank" else "method"] = value
        elif key == "depth":
            try:
                run["depth"] = _bounded_int(1, 100_000)(value)
            except argparse.ArgumentTypeError as exc:
                raise CBIRError(f"--compare {text!r}: depth {exc}") from None
        elif key == "normalisation":
            run[key] = normalisation_method(value).name
        elif key == "recipe":
            run[key] = _recipe_arg(value)
            run["centre"] = True  # a recipe says itself whether it centres
        elif key == "metric":
            run[key] = normalise_metric(value)
        elif key == "method":
            run[key] = fusion_method(value).name
        elif key == "centre":
            run[key] = check_flag("centre", value)
        else:
            run[key] = value
    try:
        n, alpha = int(rerank["n"]), float(rerank["alpha"])
    except ValueError:
        raise CBIRError(f"--compare {text!r}: rerank_n is a whole number and rerank_alpha a number") from None
    run["rerank"] = Rerank(rerank["method"], n, alpha)  # an unknown method: its own error, naming the choices
    if len(run["models"]) > 1:
        run["method"] = run["method"] or method  # the --method asked for, when the baseline has one model
    else:
        run["method"] = None
    if isinstance(run["weights"], str) or (run["weights"] and set(run["weights"]) != set(run["models"])):
        run["weights"] = _weights_arg(run["weights"] if isinstance(run["weights"], str) else None, run["models"])
    return run


def _print_report(report, per_class: bool = True) -> None:
    from .evaluation import PROTOCOL

    scored = f" (scored {report.n_scored}, {report.n_singleton} left out: singleton classes)" if report.n_singleton else ""
    print(f"{report.name}  metric={report.metric}  queries={report.n_queries}{scored}  ({report.seconds:.1f} s)")
    print(f"{report.map_label}={report.map:.4f}  P@10={report.p_at_10:.4f}  P@20={report.p_at_20:.4f}  R-precision={report.r_precision:.4f}")
    if per_class:
        print(f"{'class':<16}{'AP':>8}")
        for c, v in report.per_class_ap.items():
            print(f"{c:<16}{v:>8.4f}")
    for note in report.notes:
        print(f"note: {note}")
    if per_class:
        print(f"protocol: {PROTOCOL}")


def _check_outputs(*paths: str | None) -> None:
    """Refuse, before any work, an output file whose folder is missing or not writable."""
    for path in filter(None, paths):
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise CBIRError(f"cannot write {path}: the folder {folder.name or folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise CBIRError(f"cannot write {path}: the folder is not writable")


def _write_text(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise CBIRError(f"cannot write {path}: {exc.strerror or exc}") from None


def _bounded_int(low: int, high: int):
    """An argparse type: a whole number in low..high (one line of usage error otherwise)."""

    from .request import check_whole

    def parse(text: str) -> int:
        try:
            return check_whole("the value", text, low, high)  # the parser's rule, one line from argparse
        except CBIRError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None

    return parse


def _write_report(args, report: dict, reports: list[dict] | None = None) -> None:
    """--json, --csv and --plot (.html or .png) of an evaluation report (``reports``: it and
    the runs compared with it, one CSV row and one curve each)."""
    from .export import report_curves, reports_csv, write_figure

    reports = reports or [report]
    if args.json:
        _write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.csv:
        _write_text(args.csv, reports_csv(reports))
        print(f"wrote {args.csv}")
    if args.plot:
        title = report["name"] if len(reports) == 1 else f"{len(reports)} runs"
        write_figure(args.plot, report_curves(reports), f"Mean 11-point interpolated PR: {title}")
        print(f"wrote {args.plot}")


def cmd_tune_weights(args) -> int:
    from tqdm import tqdm

    from .tuning import sweep_weights

    _check_outputs(args.json)
    engine = _engine(args)
    models = _models_arg(args.model)
    bar = tqdm(unit="point", desc="weight sweep", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    result = sweep_weights(engine, models, args.method, args.step, args.metric, progress, centre=args.centre)
    bar.close()
    out = result.to_dict()
    if args.json:
        text = json.dumps(out, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
            return 0
        _write_text(args.json, text)
    order = sorted(range(len(result.map)), key=lambda i: -result.map[i])
    print(f"{args.method} fusion of {', '.join(result.models)}, {result.metric}{', centred' if result.centred else ''}, step {args.step:g}: {len(result.map)} weightings x "
          f"{result.queries} queries in {result.seconds:.1f} s")
    print("".join(f"{m[:18]:>20}" for m in result.models) + f"{'mAP':>9}{'P@20':>9}")
    for i in order[: args.top]:
        print("".join(f"{w:>20.2f}" for w in result.weights[i]) + f"{result.map[i]:>9.4f}{result.p_at_20[i]:>9.4f}")
    best, equal = out["best"], out["equal_weights"]
    print(f"best: {', '.join(f'{m}={w:g}' for m, w in best['weights'].items())}  mAP={best['mAP']:.4f}  P@20={best['P@20']:.4f}")
    print(f"equal weights: mAP={equal['mAP']:.4f}  P@20={equal['P@20']:.4f}  -> gain {out['gain_over_equal']:+.4f} mAP"
          + ("  (equal weights are as good, within 0.001)" if abs(out["gain_over_equal"]) < 0.001 else ""))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_collections(args) -> int:
    import getpass

    from .collection_registry import CollectionRegistry, describe
    from .config import get_settings

    registry = CollectionRegistry(get_settings())
    if args.collections_command == "add":
        actor = f"cli:{getpass.getuser()}"
        if Path(args.folder).is_file() and args.folder.lower().endswith(".zip"):
            from tqdm import tqdm

            bars = []  # the bar appears once the zip passed its checks: a refusal is one line

            def progress(done: int, total: int) -> None:
                if not bars:
                    bars.append(tqdm(total=total, unit="B", unit_scale=True, desc="unpacking", file=sys.stderr))
                _tqdm_progress(bars[0])(done, total)

            try:
                entry, unpacked = registry.add_zip(args.name, args.folder, actor, progress=progress)
            finally:
                for bar in bars:
                    bar.close()
            print(f"unpacked {unpacked.files} file(s) into {entry.folder}" + (f", {len(unpacked.skipped)} skipped" if unpacked.skipped else ""))
            for name, why in unpacked.skipped[:10]:
                print(f"  skipped {name}: {why}")
        else:
            entry = registry.add(args.name, args.folder, actor=actor)
        print(f"added {entry.name} -> {entry.folder}; index it: cbir index --collection {entry.name}")
        return 0
    if args.collections_command == "remove":
        entry = registry.remove(args.name)
        print(f"removed {entry.name} and its feature stores" + (" and its uploaded images" if entry.uploaded else
                                                                  f" (its images in {entry.folder} are left in place)"))
        return 0
    rows = [describe(registry, entry) for entry in registry.entries().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<24}{'images':>8}  {'labels':<12}folder; models indexed")
    for r in rows:
        images = "?" if r["images"] is None else str(r["images"])
        print(f"{r['name'] + (' *' if r['default'] else ''):<24}{images:>8}  {r['labels']:<12}{r['folder']}; "
              f"{', '.join(r['models']) or 'none'}" + (f"  ({r['error']})" if r["error"] else ""))
    print("* default collection")
    return 0


def cmd_import_features(args) -> int:
    from .config import get_settings
    from .importing import import_features

    settings = get_settings()
    report = import_features(Path(args.file), args.name, _collection(args),
                             Path(args.features or settings.features_dir), replace=args.replace)
    if settings.redis_url:  # the audit log, best effort (an embedded Redis is not started for one line)
        from .redisdb import get_redis
        from .auth.users import UserStore

        UserStore(get_redis(settings)).log("features_imported", report.model, "cli", "replaced" if report.replaced else "created",
                                           report.imported_by)
    print(report.summary())
    print(f"search with it: cbir search --id ID -m {report.model}   (fuse it: -m {report.model},efficientnet_lite0)")
    return 0


def cmd_weights_download(args) -> int:
    from .errors import WeightsUnavailableError
    from .extractors import MODELS, ensure_keras_home, get_spec, keras_models_dir

    ensure_keras_home()
    names = [get_spec(m).name for m in args.models] or [n for n, s in MODELS.items() if s.family == "keras"]
    from .extractors.keras_apps import download_weights

    for name in names:
        spec = get_spec(name)
        if spec.family != "keras":
            print(f"{name}: bundled with its package, nothing to download")
            continue
        try:
            path = download_weights(spec)
        except WeightsUnavailableError:
            raise WeightsUnavailableError(
                f"cannot download {spec.weights_file} for {name} (no network?); copy it into {keras_models_dir()}/"
            ) from None
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import get_settings
    from .distances import METRICS
    from .fusion import FUSIONS
    from .distributed import CHUNK
    from .store import DTYPES

    settings = get_settings()
    metric_help = f"one of {', '.join(METRICS)} (default %(default)s)"
    method_help = f"fusion for several models: {'; '.join(f'{n} ({f.formula})' for n, f in FUSIONS.items())} (default %(default)s)"
    p = argparse.ArgumentParser(prog="cbir", description="Content-based image retrieval workbench.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--collection", default=None, metavar="NAME|FOLDER",
                        help=f"a registered collection (`cbir collections list`) or a folder (default: {settings.collection})")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    sp = sub.add_parser("models", help="list models, their availability and why")
    common(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("index", help="extract features of a collection (incremental)")
    common(sp)
    sp.add_argument("--model", "-m", default=None, help="model name, comma-separated list, or 'all' (default: best available)")
    sp.add_argument("--weights", default="imagenet", help="imagenet (default), none (random init) or a weights file")
    sp.add_argument("--features", default=None, help=f"feature store folder (default: {settings.features_dir})")
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--workers", type=int, default=None, help="extract on a local Dask cluster of N worker processes")
    sp.add_argument("--scheduler", default=None, help="extract on the Dask cluster at tcp://host:8786 (default: CBIR_DASK_SCHEDULER); "
                    "the workers must see the collection at the same path")
    sp.add_argument("--chunk", type=int, default=CHUNK, help="images per Dask task (default %(default)s)")
    sp.add_argument("--dtype", choices=DTYPES, default=None,
                    help="vectors on disk: float32, or float16 (half the disk and memory); default: the store's, else float32")
    sp.add_argument("--all-skipped", action="store_true", help=f"list every image skipped (default: the first {SHOWN_SKIPPED})")
    sp.add_argument("--recipe", default=None, help="store the vectors under a descriptor recipe, beside the model's own store, "
                    "as the model MODEL~PRESET: category (2 scales, flip, signed sqrt: x5.5 the extraction) or "
                    "near_duplicate (3 scales, signed sqrt: x3.3); searched, fused and centred like any model")
    sp.set_defaults(func=cmd_index)

    sp = sub.add_parser("search", help="search by collection id or image file")
    common(sp)
    sp.add_argument("--id", help="query: an image id of the collection")
    sp.add_argument("--image", help="query: an image file")
    sp.add_argument("--model", "-m", default=None, help="model or comma-separated models")
    sp.add_argument("--metric", default="cosine", help=metric_help)
    sp.add_argument("--top-k", "-k", type=int, default=10)
    sp.add_argument("--method", default="average", help=method_help)
    sp.add_argument("--weights", help="comma-separated fusion weights, one per model")
    _add_normalisation_option(sp)
    sp.add_argument("--include-query", action="store_true", help="keep the query in its own results")
    _add_centre_option(sp)
    _add_rerank_options(sp)
    _add_backend_options(sp)
    sp.add_argument("--json", action="store_true", help="print the response as JSON (with the parameters used)")
    sp.add_argument("--csv", metavar="FILE", help="also write the results as CSV, one row per hit of every list")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("explain", help="why did a result match? heatmaps of where query and result agree")
    common(sp)
    sp.add_argument("result", help="the result: an image id of the collection")
    sp.add_argument("--id", help="query: an image id of the collection")
    sp.add_argument("--image", help="query: an image file")
    sp.add_argument("--model", "-m", default=None, help="a model this server extracts (default: the default model)")
    sp.add_argument("--out", "-o", metavar="FILE.png", help="write the pair with both heatmaps and the best pairs as PNG")
    sp.add_argument("--json", action="store_true", help="print the maps, pairs and similarity as JSON")
    _add_centre_option(sp)
    sp.set_defaults(func=cmd_explain)

    sp = sub.add_parser("evaluate", help="mAP, P@10, P@20, R-precision and per-class AP")
    common(sp)
    sp.add_argument("--model", "-m", default=None, help="model or comma-separated models (fused)")
    sp.add_argument("--metric", default="cosine", help=metric_help)
    sp.add_argument("--method", default="average", help=method_help)
    sp.add_argument("--weights", help="comma-separated fusion weights, one per model")
    _add_normalisation_option(sp)
    _add_centre_option(sp)
    _add_rerank_options(sp)
    _add_backend_options(sp)
    sp.add_argument("--queries", type=_bounded_int(1, 10_000_000), default=None, help="evaluate a seeded random sample of N queries (default: every labelled image)")
    sp.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=0, help="seed of the --queries sample (default 0)")
    sp.add_argument("--ties", choices=("stable", "average"), default="stable",
                    help="equal distances: 'stable' (collection order, default) or 'average' (tie-aware AP, P@k, "
                         "R-precision: McSherry & Najork 2008)")
    sp.add_argument("--feedback-rounds", type=_bounded_int(0, 20), default=0, help="simulate N rounds of Rocchio feedback with the true labels")
    sp.add_argument("--feedback-k", type=_bounded_int(1, 1000), default=20, help="results judged per feedback round (default 20)")
    sp.add_argument("--recipe", default=None, help="describe every image now under this recipe instead of reading the "
                    "store (one model, exact): a preset (today, centred, category, near_duplicate) or "
                    "pooling[,scales=A+B][,flip][,sqrt][,centre][,pca=D], pooling one of avg, mac, gemP, rmac")
    sp.add_argument("--compare", metavar="'KEY=VALUE ...'", action="append",
                    help="also evaluate a run that changes these settings of this one (keys: " + ", ".join(COMPARE_KEYS)
                    + "; e.g. 'rerank=aqe', 'model=efficientnet_lite0,efficientnet_lite1 method=rrf'), and say whether "
                    "its mAP differs significantly: the paired difference, a 95%% bootstrap interval and a paired "
                    "randomisation test's p-value over the queries both scored (repeatable)")
    sp.add_argument("--json", metavar="FILE", help="also write the report as JSON (with the comparisons)")
    sp.add_argument("--csv", metavar="FILE", help="also write the report as CSV (summary and per-class AP, a row per run)")
    sp.add_argument("--plot", metavar="FILE", help="also write the PR figure: FILE.html (interactive, offline) or FILE.png")
    sp.set_defaults(func=cmd_evaluate)

    from .tuning import DEFAULT_STEP, SWEEP_METHODS

    sp = sub.add_parser("tune-weights", help="mAP and P@20 of fusion over a grid of weights (2-3 models)")
    common(sp)
    sp.add_argument("--model", "-m", required=True, help="two or three comma-separated models")
    sp.add_argument("--method", default="weighted", choices=SWEEP_METHODS, help="fusion method (default %(default)s)")
    sp.add_argument("--step", type=float, default=DEFAULT_STEP, help="grid step on the weight simplex (default %(default)s)")
    sp.add_argument("--metric", default="cosine", help=metric_help)
    sp.add_argument("--top", type=int, default=10, help="rows of the table, best first (default %(default)s)")
    _add_centre_option(sp)
    sp.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the whole sweep as JSON (to FILE, or stdout alone)")
    sp.set_defaults(func=cmd_tune_weights)

    sp = sub.add_parser("import-features", help="import features computed elsewhere as the model imported:NAME")
    common(sp)
    sp.add_argument("file", help=".npz (ids + vectors), .npy, .parquet, .csv, or a .pkl list of (image path, vector)")
    sp.add_argument("--name", required=True, help="the model becomes imported:NAME (lower-case letters, digits, _)")
    sp.add_argument("--features", default=None, help=f"feature store folder (default: {settings.features_dir})")
    sp.add_argument("--replace", action="store_true", help="overwrite an existing imported:NAME (else it is an error)")
    sp.set_defaults(func=cmd_import_features)

    sp = sub.add_parser("weights", help="manage model weights")
    wsub = sp.add_subparsers(dest="weights_command", required=True)
    dl = wsub.add_parser("download", help="download Keras ImageNet weights into the models cache (needs network)")
    dl.add_argument("models", nargs="*", help="vgg16, resnet50, mobilenet (default: all three)")
    dl.set_defaults(func=cmd_weights_download)
    sp = sub.add_parser("collections", help="the collections this server knows (name -> folder)")
    csub = sp.add_subparsers(dest="collections_command", required=True)
    cl = csub.add_parser("list", help="name, folder, images, labels, models indexed")
    cl.add_argument("--json", action="store_true", help="machine-readable output")
    ca = csub.add_parser("add", help="register a folder of images under a name")
    ca.add_argument("name", help="1-64 letters, digits, '_', '.' or '-'")
    ca.add_argument("folder", help="a folder on this machine (class sub-folders or a labels.csv give labels), or a .zip "
                    "of one: unpacked safely into CBIR_COLLECTIONS_ROOT/NAME and removed with the collection")
    cr = csub.add_parser("remove", help="forget a collection and delete its feature stores (its images stay)")
    cr.add_argument("name")
    for c in (cl, ca, cr):
        c.set_defaults(func=cmd_collections)
    sp = sub.add_parser("redis", help="the embedded Redis (when CBIR_REDIS_URL is unset)")
    rsub = sp.add_subparsers(dest="redis_command", required=True)
    for name, text in (("start", "start it and keep it running with no owner (reused by app, API and CLI)"),
                       ("stop", "stop it (owners still running get 'Redis unavailable')"),
                       ("status", "is it running, where is its data")):
        rsub.add_parser(name, help=text).set_defaults(func=cmd_redis)
    sp = sub.add_parser("api", help="serve the REST API (FastAPI + uvicorn)")
    sp.add_argument("--host", default=None, help=f"default {settings.api_host}")
    sp.add_argument("--port", type=int, default=None, help=f"default {settings.api_port}")
    sp.add_argument("--workers", type=int, default=None, help=f"worker processes (default {settings.api_workers})")
    sp.set_defaults(func=cmd_api)
    return p


def cmd_redis(args) -> int:
    from .config import get_settings
    from .redis_server import _answers, embedded_dir, embedded_path, ensure_server, socket_path, stop_kept, supervisor_pid

    settings = get_settings()
    if settings.redis_url:
        return _fail(f"CBIR_REDIS_URL is set ({settings.redis_url}): there is no embedded Redis to manage")
    folder = embedded_dir(settings)
    if args.redis_command == "start":
        running = _answers(socket_path(folder))
        sock = ensure_server(folder, keep=True)
        print(f"embedded Redis {'already running' if running else 'started'}: unix://{sock} (data {embedded_path(settings)})")
        if running:
            print("it stops when its last owner exits unless it was started with `cbir redis start`")
    elif args.redis_command == "stop":
        if not stop_kept(settings):
            return _fail(f"no embedded Redis is running for {folder}")
        print("embedded Redis stopped")
    else:
        pid = supervisor_pid(folder)
        if pid is None:
            print(f"embedded Redis: not running (data {embedded_path(settings)})")
            return 1
        print(f"embedded Redis: running (supervisor pid {pid}), unix://{socket_path(folder)}, data {embedded_path(settings)}")
    return 0


def cmd_api(args) -> int:
    from .api.app import serve

    serve(args.host, args.port, args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes (``cbir.errors``): 0 ok; an error of the contract table
    (``cbir.errors.CONTRACTS``) prints one line and exits with its code: 2 bad input, 3 a
    service away or busy; 130 interrupted; 1 anything else (a traceback: a bug)."""
    try:
        parser = build_parser()  # its defaults are the settings': invalid ones raise ConfigError
    except CBIRError as exc:
        return _fail(str(exc), contract_for(exc).exit_code)
    args = parser.parse_args(argv)
    quiet = contextlib.nullcontext()
    if args.command != "api":  # one-line errors: no TensorFlow banner on stderr (the API server leaves stderr alone)
        from .extractors import quiet_tensorflow_import

        quiet = quiet_tensorflow_import()
    try:
        with quiet:
            status = args.func(args)
            sys.stdout.flush()  # here, so that a reader gone away (`cbir evaluate | head`) is caught below
        return status
    except BrokenPipeError:
        # the Python docs' way (signal, "Note on SIGPIPE"): the rest of the output goes to
        # /dev/null, so that the flush at exit does not fail again with a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNEXPECTED
    except CBIRError as exc:
        return _fail(str(exc), contract_for(exc).exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; the previous feature store is intact", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
