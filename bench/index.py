"""Indexing speed per model on image.orig/ next to the raw inference rate on pre-decoded arrays.

Models without ImageNet weights here are built with weights=none (same compute).
Usage: python bench/index.py [--models a,b] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cbir.collection import scan_collection
from cbir.extractors import MODELS, build_extractor, model_status
from cbir.images import load_resized
from cbir.extraction import extract_paths

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--limit", type=int, default=320, help="images per model (default 320)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    collection = scan_collection(ROOT / "image.orig")
    paths = collection.paths[: args.limit]
    print(f"{'model':<20}{'weights':<10}{'index img/s':>12}{'raw img/s':>11}{'ratio':>8}")
    for name in args.models.split(","):
        weights = "imagenet" if model_status(name)[0] else "none"
        ex = build_extractor(name, weights)
        warm = np.stack([load_resized(p, ex.input_size) for p in paths[: args.batch_size]])
        ex.features(warm)  # trace the graph once
        with tempfile.TemporaryDirectory():
            t = time.perf_counter()
            out = extract_paths(ex, paths, batch_size=args.batch_size, threads=2)
            index_rate = len(paths) / (time.perf_counter() - t)
        assert out.ok.all()
        arrays = np.stack([load_resized(p, ex.input_size) for p in paths])
        t = time.perf_counter()
        for i in range(0, len(arrays), args.batch_size):
            ex.features(arrays[i : i + args.batch_size])
        raw_rate = len(paths) / (time.perf_counter() - t)
        print(f"{name:<20}{weights:<10}{index_rate:>12.1f}{raw_rate:>11.1f}{index_rate / raw_rate:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
