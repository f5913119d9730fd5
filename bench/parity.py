"""Max abs difference of the pooled features between our Keras EfficientNet-Lite models and
the PyTorch reference (efficientnet-lite-pytorch, torch==2.13.0: `pip install -e '.[parity]'`)
on 10 images of image.orig/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.extractors import BUNDLED, build_extractor, bundled_weights_path, get_spec
from cbir.extractors.efficientnet_lite import preprocess
from cbir.images import load_resized

ROOT = Path(__file__).resolve().parent.parent
IMAGES = [0, 105, 233, 342, 456, 571, 689, 777, 845, 960]


def main() -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    for name in BUNDLED:
        spec = get_spec(name)
        ref = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(bundled_weights_path(spec)))
        ref.eval()
        batch = np.stack([load_resized(ROOT / "image.orig" / f"{i}.jpg", spec.input_size) for i in IMAGES])
        x = torch.from_numpy(np.ascontiguousarray(preprocess(batch.astype(np.float32)).transpose(0, 3, 1, 2)))
        with torch.no_grad():
            expected = ref.extract_features(x).mean((2, 3)).numpy()
        got = build_extractor(name).features(batch)
        print(f"{name:<20} max abs difference {np.abs(got - expected).max():.2e} over {len(IMAGES)} images x 1280 features")


if __name__ == "__main__":
    main()
