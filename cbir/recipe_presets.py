"""What a descriptor recipe is, by name: the :class:`Recipe` value, its spelling
(:func:`parse_recipe`), the presets a user picks (:data:`PRESETS`) and those a store can hold
(:data:`STORED_RECIPES`). Pure data, imported by the model registry (a stored recipe is the model
``MODEL~PRESET``) without the maths of :mod:`cbir.recipes`, which re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import RequestError

POOLINGS = ("avg", "mac", "gem", "rmac")
SQRT2 = math.sqrt(2.0)
#: The largest input scale (a 2x input costs 4x the extraction) and the most scales a recipe takes.
MAX_SCALE, MAX_SCALES = 2.0, 4
#: The most a recipe may cost, in passes of the model at its own size (:attr:`Recipe.cost`):
#: the category preset is 6; four scales of 2 with the flip would be 32.
RECIPE_MAX_COST = 8.0


#: A recipe's yes/no parts: (its field and spelling, its word in a label), in spelling order.
FLAGS = (("flip", "flip"), ("sqrt", "√"), ("centre", "centred"))


@dataclass(frozen=True)
class Recipe:
    """How a descriptor is made; see the module docstring. ``scales`` are factors of the
    model's input size, sorted; ``pca`` None keeps every dimension."""

    pooling: str = "avg"
    p: float = 3.0
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    sqrt: bool = False
    centre: bool = False
    pca: int | None = None

    @property
    def name(self) -> str:
        """The recipe's spelling, read back by :func:`parse_recipe`."""
        parts = [f"gem{self.p:g}" if self.pooling == "gem" else self.pooling]
        if self.scales != (1.0,):
            parts.append("scales=" + "+".join(f"{s:.3g}" for s in self.scales))
        parts += [flag for flag, _ in FLAGS if getattr(self, flag)]
        if self.pca:
            parts.append(f"pca={self.pca}")
        return ",".join(parts)

    @property
    def label(self) -> str:
        """A short label for model lists (``3-scale · flip · √ · centred``); "" for today's."""
        bits = [] if self.pooling == "avg" else [{"mac": "MAC", "gem": f"GeM p={self.p:g}", "rmac": "R-MAC"}[self.pooling]]
        if len(self.scales) > 1:
            bits.append(f"{len(self.scales)}-scale")
        elif self.scales != (1.0,):
            bits.append(f"scale {self.scales[0]:.3g}")
        bits += [word for flag, word in FLAGS if getattr(self, flag)]
        if self.pca:
            bits.append(f"PCA {self.pca}")
        return " · ".join(bits)

    @property
    def cost(self) -> float:
        """Extraction cost relative to one pass at the model's size: sum of squared scales,
        twice with the flip."""
        return sum(s * s for s in self.scales) * (2 if self.flip else 1)

    @property
    def extraction(self) -> "Recipe":
        """The part of the recipe a store holds: pooling, scales, flip and signed sqrt (centring
        is done at search time on every store, :mod:`cbir.centring`; PCA is not stored)."""
        return replace(self, centre=False, pca=None)

    @property
    def learned(self) -> bool:
        """Whether the recipe learns something from the collection (centring, PCA)."""
        return self.centre or bool(self.pca)


#: Recipes a user picks without knowing the maths (costs: :attr:`Recipe.cost`).
PRESETS: dict[str, tuple[Recipe, str]] = {
    "today": (Recipe(), "average pooling of one pass, L2: what the stores hold"),
    "centred": (Recipe(centre=True), "today's, centred on the collection's mean: same extraction"),
    "category": (Recipe(scales=(1.0, SQRT2), flip=True, sqrt=True, centre=True),
                 "what Wang measures (same class): 2 scales, flip, signed sqrt, centred"),
    "near_duplicate": (Recipe(scales=(1 / SQRT2, 1.0, SQRT2), sqrt=True, centre=True),
                       "instance search (crops, rotations, re-encodings of one image): 3 scales, signed sqrt, centred"),
}


#: Presets ``cbir index --recipe`` stores beside a model's own store (``MODEL~PRESET``): those
#: whose extraction differs from the stores' (``today`` and ``centred`` are the store itself).
STORED_RECIPES = ("category", "near_duplicate")


def parse_recipe(text: str | Recipe | None) -> Recipe:
    """A :class:`Recipe` from a preset's name or a spelling (see the module docstring); None:
    today's. Raises RequestError naming what is wrong."""
    if isinstance(text, Recipe):
        return text
    if text is None or not str(text).strip():
        return Recipe()
    spelled = str(text).strip().lower().replace("-", "_")
    if spelled in PRESETS:
        return PRESETS[spelled][0]
    head, *rest = [part.strip() for part in spelled.split(",")]
    recipe = _pooling(head, text)
    for part in rest:
        key, _, value = part.partition("=")
        if key in ("flip", "sqrt", "centre", "center") and not value:
            recipe = replace(recipe, **{"centre" if key == "center" else key: True})
        elif key == "scales" and value:
            recipe = replace(recipe, scales=_scales(value, text))
        elif key == "pca" and value.isascii() and value.isdigit() and 1 <= int(value) <= 100_000:
            recipe = replace(recipe, pca=int(value))
        else:
            raise RequestError(f"recipe {text!r}: {part!r} is not one of scales=A+B, flip, sqrt, centre, pca=D; "
                               f"or name a preset: {', '.join(PRESETS)}")
    if recipe.cost > RECIPE_MAX_COST:
        raise RequestError(f"recipe {text!r} costs {recipe.cost:g} passes of the model (the sum of the squared scales, twice "
                           f"with flip); the most is {RECIPE_MAX_COST:g}: use fewer or smaller scales")
    return recipe


def _pooling(head: str, text: str) -> Recipe:
    if head in ("avg", "mac", "rmac"):
        return Recipe(pooling=head)
    if head.startswith("gem"):
        try:
            p = float(head[3:] or 3)
        except ValueError:
            p = float("nan")
        if math.isfinite(p) and 1 <= p <= 20:
            return Recipe(pooling="gem", p=p)
        raise RequestError(f"recipe {text!r}: GeM's p is a number from 1 to 20, as in gem3")
    raise RequestError(f"recipe {text!r}: unknown pooling {head!r}; choose one of {', '.join(POOLINGS)} "
                       f"(gem takes p: gem3), or name a preset: {', '.join(PRESETS)}")


def _scales(value: str, text: str) -> tuple[float, ...]:
    try:
        scales = tuple(sorted({round(float(v), 4) for v in value.split("+")}))
    except ValueError:
        scales = ()
    if not scales or len(scales) > MAX_SCALES or not all(0.25 <= s <= MAX_SCALE for s in scales):
        raise RequestError(f"recipe {text!r}: scales are 1 to {MAX_SCALES} numbers from 0.25 to {MAX_SCALE:g} "
                           "joined by +, as in scales=0.707+1+1.414")
    return scales


# -- pooling ----------------------------------------------------------------------------------------
