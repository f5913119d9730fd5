"""Time to a usable bundled model: first start (reads the .pth and converts) vs later starts
(loads the converted Keras weights from the models cache). Each start is a fresh process;
the model build is also timed inside the process, after the TensorFlow import."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

CODE = (
    "import time; from cbir.extractors import build_extractor, ensure_keras_home; ensure_keras_home(); "
    "t = time.perf_counter(); build_extractor('{m}'); print(time.perf_counter() - t)"
)


def timed_start(model: str, keras_home: str) -> tuple[float, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CODE.format(m=model)], check=True, capture_output=True, text=True,
                         env={**os.environ, "KERAS_HOME": keras_home})
    return time.perf_counter() - t, float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"{'model':<20}{'first: process':>15}{'build':>8}{'later: process':>16}{'build':>8}   seconds")
    for model in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        with tempfile.TemporaryDirectory() as home:
            first = timed_start(model, home)
            later = min((timed_start(model, home) for _ in range(2)), key=lambda t: t[1])
        print(f"{model:<20}{first[0]:>15.2f}{first[1]:>8.2f}{later[0]:>16.2f}{later[1]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
