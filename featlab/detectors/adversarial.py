"""L-infinity attacks in pixel space (torchattacks), shared by ``featlab attack`` and adversarial training.

An attacked image is rounded to uint8 and clipped to the budget around the original, so
``|adv - x| <= eps`` holds in whole grey levels after rounding: a real image a user could save.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from torch import nn

from featlab.core.errors import FeatlabError

ATTACKS = ("fgsm", "pgd")


def parse_eps(text: str) -> list[float]:
    """``"0,1/255,2/255"`` or ``"0.004"`` -> budgets as fractions of the 0-255 range."""
    values = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            value = float(Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise FeatlabError(f"eps {part!r}: expected a number or a fraction such as 4/255") from None
        if not 0 <= value <= 1:
            raise FeatlabError(f"eps {part!r} must lie in [0, 1] (fractions of the pixel range)")
        values.append(value)
    if not values:
        raise FeatlabError("name at least one eps")
    return values


def eps_levels(eps: float) -> int:
    """The budget in whole grey levels (an attacked uint8 image can only move by whole levels)."""
    return int(np.floor(eps * 255 + 1e-6))


class BinaryLogits(nn.Module):
    """[0, 1] pixels -> two logits ``[0, s]``, ``s`` the log-odds of "fake" (so cross-entropy is the BCE).

    ``network`` maps float pixels in 0-255 to a score; ``probability``: the score is p(fake);
    otherwise ``score - threshold`` is the logit.
    """

    def __init__(self, network: nn.Module, threshold: float = 0.0, probability: bool = False) -> None:
        super().__init__()
        self.network = network
        self.probability = probability
        self.threshold = threshold

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        score = self.network(x01 * 255.0).float()
        s = torch.logit(score.clamp(1e-6, 1 - 1e-6)) if self.probability else score - self.threshold
        return torch.stack([torch.zeros_like(s), s], dim=1)


def attack_batch(model: BinaryLogits, images: torch.Tensor, labels: torch.Tensor, eps: float, attack: str = "pgd",
                 steps: int = 10, restarts: int = 1, seed: int = 0) -> torch.Tensor:
    """Adversarial uint8 copies of ``images`` (N, 3, H, W) pushing each away from its label.

    ``|adv - images| <= eps * 255`` grey levels after rounding. PGD uses step ``2.5 * eps / steps`` and a
    random start; with ``restarts`` > 1 each image keeps its most successful restart.
    """
    if attack not in ATTACKS:
        raise FeatlabError(f"attack must be one of {', '.join(ATTACKS)}")
    levels = eps_levels(eps)
    if levels == 0:
        return images.clone()
    # torchattacks attacks in eval mode, then puts ``model`` back in the mode it found it in:
    # an evaluation passes an eval-mode model, training a train-mode one
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    x = images.to(device, torch.float32) / 255.0
    y = labels.to(device).long()
    best, best_margin = images.clone(), None
    for restart in range(max(1, restarts) if attack == "pgd" else 1):
        with torch.random.fork_rng(devices=[]):  # the random start must not move the caller's RNG (resume-exact)
            torch.manual_seed(seed * 1_000 + restart)
            adv = _run(model, x, y, attack, levels, steps)
        rounded = (adv * 255).round()
        original = images.to(rounded.device, torch.float32)
        rounded = torch.maximum(torch.minimum(rounded, original + levels), original - levels).clamp(0, 255)
        candidate = rounded.to(torch.uint8).cpu()
        with torch.no_grad():
            logits = _eval_logits(model, candidate.to(device, torch.float32) / 255.0)
        margin = torch.where(labels.bool(), logits, -logits)  # > 0: still on the right side
        if best_margin is None:
            best, best_margin = candidate, margin
        else:
            better = margin < best_margin
            best[better], best_margin[better] = candidate[better], margin[better]
    return best


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, levels: int, steps: int) -> torch.Tensor:
    import torchattacks

    if attack == "fgsm":
        return torchattacks.FGSM(model, eps=levels / 255)(x, y)
    return torchattacks.PGD(model, eps=levels / 255, alpha=2.5 * levels / 255 / steps, steps=steps,
                            random_start=True)(x, y)


def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(x)[:, 1].cpu()
    finally:
        model.train(was_training)
