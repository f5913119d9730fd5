"""Time to a usable bundled model: first start (reads the .pth and converts) vs later starts
(loads the converted Keras weights from the models cache). Each start is a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

CODE = "from cbir.extractors import build_extractor; build_extractor('{m}')"


def timed_start(model: str, keras_home: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE.format(m=model)], check=True, env={**os.environ, "KERAS_HOME": keras_home})
    return time.perf_counter() - t


def main() -> None:
    print(f"{'model':<20}{'first start s':>14}{'later start s':>14}  (whole process, incl. TensorFlow import)")
    for model in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        with tempfile.TemporaryDirectory() as home:
            first = timed_start(model, home)
            later = min(timed_start(model, home) for _ in range(2))
        print(f"{model:<20}{first:>14.2f}{later:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
