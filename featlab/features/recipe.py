"""Feature recipes: which feature maps of a backbone become the embedding, and how they are pooled.

A recipe is part of every cache key and every report. All chosen stages come from **one**
forward pass: forward hooks on the stage modules pool each map as soon as it is computed,
so no full-resolution activation is kept.

* ``layers``   stage names from the backbone's registry entry (``featlab backbones``), or
  ``pool`` for the backbone's own global-average-pooled penultimate output (the classic embedding).
* ``pooling``  ``avg`` (mean over positions), ``avg+std`` (mean and standard deviation: first and
  second moments, i.e. texture statistics), ``gem`` (generalised mean, p = 3).
* ``view``     image geometry (:data:`featlab.features.specs.VIEWS`): ``crop``, ``native``, ``full``.
* ``flip``     average the embedding of the image and of its mirror image.

Why mid-level stages: the traces that give a generated or edited face away are local texture
statistics; the last stage encodes what the pretraining task needed (objects, NSFW content).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.features.specs import VIEWS, BackboneSpec

POOLINGS = ("avg", "avg+std", "gem", "cls", "cls+avg")
#: Poolings of token maps only (ViT stages: the class token, and the class token beside the mean patch token).
TOKEN_POOLINGS = ("cls", "cls+avg")
POOL_LAYER = "pool"
GEM_P = 3.0


@dataclass(frozen=True)
class FeatureRecipe:
    """What an embedding is made of (see module docstring).

    Parameters
    ----------
    layers : stage names, or ``("pool",)`` for the backbone's own pooled output.
    pooling : ``avg``, ``avg+std`` or ``gem`` (applies to stages; ``pool`` is already pooled).
    view : ``crop``, ``native`` or ``full``.
    flip : average with the horizontally mirrored image.
    """

    layers: tuple[str, ...] = (POOL_LAYER,)
    pooling: str = "avg"
    view: str = "crop"
    flip: bool = False

    def validate(self, spec: BackboneSpec) -> FeatureRecipe:
        """Check the recipe against a registry entry; returns self."""
        if not self.layers:
            raise FeatlabError("layers: name at least one stage")
        known = [POOL_LAYER, *spec.stages]
        unknown = [name for name in self.layers if name not in known]
        if unknown:
            raise FeatlabError(f"layers: {', '.join(unknown)} not a stage of {spec.name} (choose from {', '.join(known)})")
        if len(set(self.layers)) != len(self.layers):
            raise FeatlabError(f"layers: {','.join(self.layers)} names a stage twice")
        if self.pooling not in POOLINGS:
            raise FeatlabError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling in TOKEN_POOLINGS and not spec.tokens:
            raise FeatlabError(f"pooling {self.pooling} is for ViT token maps; {spec.name} has feature maps "
                               "(use avg, avg+std or gem)")
        if self.pooling == "gem" and spec.tokens:
            raise FeatlabError(f"pooling gem is for non-negative feature maps; {spec.name} outputs tokens "
                               "(use cls, avg, avg+std or cls+avg)")
        if self.view not in VIEWS:
            raise FeatlabError(f"view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        return self

    def dim(self, spec: BackboneSpec) -> int:
        """Length of the embedding this recipe gives on ``spec``."""
        return sum(part_dim(spec, part) for part in self.parts)

    @property
    def parts(self) -> tuple[tuple[str, str], ...]:
        """The embedding's pieces in order: (stage, pooling); the backbone's own pooled output is ``("pool", "")``."""
        return tuple((name, "" if name == POOL_LAYER else self.pooling) for name in self.layers)

    @property
    def is_classic(self) -> bool:
        """The backbone's plain pooled embedding, computed by the model itself."""
        return self.layers == (POOL_LAYER,)

    def as_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict | None) -> FeatureRecipe:
        """Inverse of :meth:`as_dict`; ``None`` (a cache from before recipes) is the classic embedding."""
        if not data:
            return cls()
        return cls(layers=tuple(data["layers"]), pooling=data["pooling"], view=data["view"], flip=bool(data["flip"]))

    def describe(self) -> str:
        flip = ", flip-averaged" if self.flip else ""
        return f"{'+'.join(self.layers)} / {self.pooling} pooling / {self.view} view{flip}"


#: The classic embedding: the backbone's own pooled penultimate output on its standard crop.
CLASSIC = FeatureRecipe()


def part_dim(spec: BackboneSpec, part: tuple[str, str]) -> int:
    """Length of one (stage, pooling) piece of an embedding."""
    name, pooling = part
    if name == POOL_LAYER:
        return spec.embed_dim
    return spec.stages[name][1] * (2 if pooling in ("avg+std", "cls+avg") else 1)


@dataclass(frozen=True)
class JointRecipe:
    """Several recipes of one backbone and one view, computed together: one forward pass yields the union of their
    pooled stages (:attr:`parts`), and :meth:`columns` picks each recipe's embedding out of it.

    Used to extract a set of recipes from one decode of every image (``featlab benchmark``'s recipe comparison);
    every recipe's embedding is the same as when it is extracted alone.
    """

    recipes: tuple[FeatureRecipe, ...]

    def validate(self, spec: BackboneSpec) -> JointRecipe:
        if not self.recipes:
            raise FeatlabError("a joint recipe needs at least one recipe")
        if len({r.view for r in self.recipes}) > 1:
            raise FeatlabError("recipes computed together must share their view")
        for recipe in self.recipes:
            recipe.validate(spec)
        return self

    @property
    def parts(self) -> tuple[tuple[str, str], ...]:
        return tuple(dict.fromkeys(part for recipe in self.recipes for part in recipe.parts))

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _ in self.parts))

    def columns(self, recipe: FeatureRecipe, spec: BackboneSpec) -> list[int]:
        """Indices, in the joint output, of ``recipe``'s embedding (in its own order)."""
        starts, position = {}, 0
        for part in self.parts:
            starts[part] = position
            position += part_dim(spec, part)
        return [column for part in recipe.parts for column in range(starts[part], starts[part] + part_dim(spec, part))]


def default_recipe(spec: BackboneSpec) -> FeatureRecipe:
    """featlab's default: the two middle stages (or the entry's ``default_layers``), mean + std pooled, on the
    image's own pixels.

    Chosen on the valid split of the combined ``../shared/faces`` build (docs/results.md has
    the recipe table); a backbone without declared stages falls back to :data:`CLASSIC`.
    """
    stages = list(spec.stages)
    if spec.default_layers:
        return FeatureRecipe(layers=tuple(spec.default_layers), pooling="cls+avg" if spec.tokens else "avg+std",
                             view="native", flip=False)
    if len(stages) < 3:
        return CLASSIC
    return FeatureRecipe(layers=tuple(stages[1:3]), pooling="avg+std", view="native", flip=False)


def parse_recipe(
    spec: BackboneSpec, layers: str | None = "auto", pooling: str | None = None, view: str | None = None,
    flip: bool | None = None,
) -> FeatureRecipe:
    """Build a recipe from user words; ``None``/``"auto"`` parts take the backbone's default.

    ``layers="pool"`` is the classic pooled embedding (its pooling is fixed: ``avg``).
    """
    base = default_recipe(spec)
    if layers and layers != "auto":
        names = tuple(part.strip() for part in layers.split(",") if part.strip())
        base = CLASSIC if names == (POOL_LAYER,) else FeatureRecipe(names, base.pooling, base.view, base.flip)
    recipe = FeatureRecipe(
        layers=base.layers,
        pooling="avg" if base.is_classic else (pooling or base.pooling),
        view=view or base.view,
        flip=base.flip if flip is None else flip,
    )
    if base.is_classic and pooling not in (None, "avg"):
        raise FeatlabError(f"pooling {pooling!r} needs stage layers; 'pool' is already the backbone's average pool")
    return recipe.validate(spec)


def pool_map(feature_map: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) or (N, 2C) for ``avg+std``, computed in float32. A ViT's token map (N, 1 + P, C),
    class token first, is pooled over its patch tokens (``avg``, ``avg+std``) or by its class token (``cls``,
    ``cls+avg``: class token, then the mean patch token)."""
    x = feature_map.float()
    if x.ndim == 2:  # already pooled
        return x
    if x.ndim == 3:
        cls, patches = x[:, 0], x[:, 1:]
        if pooling == "cls":
            return cls
        if pooling == "cls+avg":
            return torch.cat([cls, patches.mean(dim=1)], dim=1)
        if pooling == "avg":
            return patches.mean(dim=1)
        if pooling == "avg+std":
            return torch.cat([patches.mean(dim=1), patches.std(dim=1, correction=0)], dim=1)
        raise FeatlabError(f"pooling {pooling!r} does not apply to token maps")
    if pooling == "avg":
        return x.mean(dim=(2, 3))
    if pooling == "avg+std":
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1)
    if pooling == "gem":
        return x.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    raise FeatlabError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


class LayerTap(nn.Module):
    """Run an embedding model once and return the recipe's pooled stages, concatenated.

    Parameters
    ----------
    model : the backbone's embedding model (its output is the ``pool`` layer).
    spec : its registry entry (stage name -> submodule).
    recipe : which stages and pooling (a :class:`JointRecipe`: the union of several recipes' pieces).
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, recipe: FeatureRecipe | JointRecipe) -> None:
        super().__init__()
        recipe.validate(spec)
        self.model = model
        self.recipe = recipe
        self.stage_modules = {name: spec.stages[name][0] for name in recipe.layers if name != POOL_LAYER}

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        # hooks live only for this call, so a copied LayerTap (copy.deepcopy) taps its own model
        pooled: dict[tuple[str, str], torch.Tensor] = {}
        hooks = [self.model.get_submodule(path).register_forward_hook(self._store(name, pooled))
                 for name, path in self.stage_modules.items()]
        try:
            pooled_output = self.model(batch)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.cat([pooled_output.float() if name == POOL_LAYER else pooled[(name, pooling)]
                          for name, pooling in self.recipe.parts], dim=1)

    def _store(self, name: str, pooled: dict):
        poolings = [pooling for stage, pooling in self.recipe.parts if stage == name]

        def store(_module, _inputs, output):
            for pooling in poolings:
                pooled[(name, pooling)] = pool_map(output, pooling)

        return store


def parse_recipe_list(spec: BackboneSpec, text: str) -> list[FeatureRecipe]:
    """``"pool; layer3:avg+std; layer2,layer3:avg+std:native:flip"`` -> recipes.

    Each item is ``layers[:pooling[:view[:flip]]]``; empty parts take the default's value.
    """
    recipes = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        fields = [f.strip() for f in item.split(":")]
        if len(fields) > 4 or (len(fields) == 4 and fields[3] not in ("flip", "")):
            raise FeatlabError(f"recipe {item!r}: expected layers[:pooling[:view[:flip]]]")
        fields += [""] * (4 - len(fields))
        layers, pooling, view, flip = fields
        recipes.append(parse_recipe(spec, layers or "auto", pooling or None, view or None, flip == "flip"))
    return recipes
