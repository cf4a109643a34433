"""Display polarity: a model that turns every scan so its defects read bright, learned from labels.

Rigs disagree on which way a flaw reads. An ultrasonic echo is bright, a DDA radiograph counts more dose
through a void (bright), a film density export reads a void as higher density (bright), but a positive
film print shows the weld bright and its voids dark. A network that has learned "a flaw is a bright
blob" from the first rigs barely learns the dark one beside them within a step budget (on `bench cl`'s
stream, the X52 film domain at 0.0 mIoU; the same scans inverted are learned like the others). So the
model carries a small polarity head: from the scan alone (no rig id, no metadata) it decides whether to
invert the normalised scan before the segmentation network sees it. The learner trains the head on the
polarity each domain's labels show (``defect_contrast``: are its defects darker than what surrounds
them?); until a domain with dark defects has been seen, the head decides "keep" for every scan and the
model computes exactly the network's function.

The head is part of the module, so the server, the ONNX and TorchScript exports, the learner's
validation and every benchmark run the same decision. Versions saved before the head existed load into
a model with it (``load_weights``): the missing head starts at "keep", the same function as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEARNING_RATE = 3e-3  # Adam, for the head alone
CROPS_PER_STEP = 16  # spread over the domains with labeled defects, at least 2 each
KEEP_BIAS = -2.0  # the untrained head's logit for every scan: "keep" (sigmoid 0.12), never flip
RING_PX = 3  # the surroundings a defect is compared with: pixels within 3 px of it, outside it
POLARITY_KEY = "polarity"  # where a version's manifest (its metrics) records each domain's polarity


class PolarityHead(nn.Module):
    """(N, C, H, W) normalised scans -> (N,) logits of "invert this scan". Three strided convolutions
    (receptive field ~35 px) pooled by mean and max: film grain, speckle and a dark blob inside a bright
    band are local textures, so any size of scan or tile gets the same answer. No BatchNorm, so a rig's
    own normalisation statistics (server/rig_normalisation.py) never touch it."""

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 5, stride=4, padding=2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decide = nn.Linear(2 * width, 1)
        with torch.no_grad():  # "keep" for every scan until trained: the model is the network alone
            self.decide.weight.zero_()
            self.decide.bias.fill_(KEEP_BIAS)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.decide(pooled).squeeze(1)


class Canonicalising:
    """Mixed into an smp model class: ``forward`` inverts the scans the polarity head picks, then runs the
    network unchanged. The head's decision carries no gradient (the learner trains it on its own loss)."""

    polarity: PolarityHead

    def inverts(self, x: Tensor) -> Tensor:
        """(N,) bool: the scans this model inverts."""
        return inverted(self.polarity, x)

    def canonical(self, x: Tensor) -> Tensor:
        """The scans as the network sees them: defects bright."""
        return canonicalise(self.polarity, x)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.canonical(x))  # type: ignore[misc]


def inverted(head: PolarityHead, x: Tensor) -> Tensor:
    """(N,) bool: the scans ``head`` decides to invert (no gradient: the head has its own loss)."""
    with torch.no_grad():
        return head(x) > 0


def canonicalise(head: PolarityHead, x: Tensor) -> Tensor:
    """x with the scans ``head`` picks inverted (normalised scans are centred, so inverting is a sign)."""
    sign = torch.where(inverted(head, x), -1.0, 1.0).to(x.dtype)
    return x * sign.view(-1, *([1] * (x.dim() - 1)))


def crops_per_domain(domains: int) -> int:
    """Crops of each domain in one step of the head: ``CROPS_PER_STEP`` spread over them, at least 2 each."""
    return max(2, CROPS_PER_STEP // domains)


_CLASSES: dict[type, type] = {}


def with_polarity(model: nn.Module, in_channels: int) -> nn.Module:
    """The same model object, now with a polarity head in front of its network."""
    base = type(model)
    if base not in _CLASSES:
        cls = type(f"Canonicalising{base.__name__}", (Canonicalising, base), {"__module__": __name__})
        globals()[cls.__name__] = cls  # importable by name, so a pickled model unpickles
        _CLASSES[base] = cls
    model.add_module("polarity", PolarityHead(in_channels))
    model.__class__ = _CLASSES[base]
    return model


def canonical_input(model: nn.Module, x: Tensor) -> Tensor:
    """What ``model``'s network sees of x (x itself for a model without a polarity head)."""
    return model.canonical(x) if isinstance(model, Canonicalising) else x


def load_weights(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``load_state_dict``, except that weights saved before the polarity head existed load into a model
    with one (the head keeps its "keep" start). Any other missing or unexpected key is refused."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("polarity.")] + list(unexpected)
    if wrong:
        raise RuntimeError(f"weights do not fit the model: {', '.join(wrong[:5])}"
                           f"{' …' if len(wrong) > 5 else ''}")
    if missing and isinstance(model, Canonicalising):
        model.polarity.load_state_dict(PolarityHead(model.polarity.features[0].in_channels).state_dict())


def defect_contrast(x: Tensor, y: Tensor) -> float | None:
    """x (C, H, W) normalised scan, y (H, W) class map -> mean of the defect pixels minus the mean of the
    pixels within ``RING_PX`` around them (first channel); None when the scan has no defect or no ring.
    Positive: its defects read bright."""
    defect = (y > 0).float()[None, None]
    if not bool(defect.any()):
        return None
    ring = (F.max_pool2d(defect, 2 * RING_PX + 1, stride=1, padding=RING_PX) - defect)[0, 0] > 0
    inside = defect[0, 0] > 0
    if not bool(ring.any()):
        return None
    image = x[0].float()
    return float(image[inside].mean() - image[ring].mean())


def teach_step(head: PolarityHead, optimizer: torch.optim.Optimizer, crops: dict[str, Tensor], dark: set[str],
               generator: torch.Generator, jitter: float = 0.2) -> float:
    """One step of the head on normalised crops of each domain (domain -> (n, C, h, w)), "invert" for the
    ``dark`` domains, with the training steps' contrast jitter; returns the loss."""
    x = torch.cat(list(crops.values()))
    target = torch.cat([torch.full((len(v),), float(d in dark), device=x.device) for d, v in crops.items()])
    gain = 1 + (torch.rand(len(x), 1, 1, 1, generator=generator) * 2 - 1) * jitter
    loss = F.binary_cross_entropy_with_logits(head(x * gain.to(x.device)), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def describe(summary: dict[str, dict[str, int | bool]]) -> str:
    """A manifest's polarity record in a line: the domains the model inverts, with their evidence."""
    dark = [f"{d} ({v['dark_scans']} of {v['defect_scans']} labeled defect scans read dark)"
            for d, v in sorted(summary.items()) if v.get("dark")]
    return ", ".join(dark) or "none"


class DomainPolarity:
    """Per domain, the evidence of its labels: how many labeled scans had defects, and how many of those
    read darker than their surroundings. A domain is dark when most of its defect scans are."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # domain -> [scans with defects, of which dark]

    def observe(self, domain: str, x: Tensor, y: Tensor) -> None:
        contrast = defect_contrast(x, y)
        if contrast is None:
            return
        seen = self.counts.setdefault(domain, [0, 0])
        seen[0] += 1
        seen[1] += int(contrast < 0)

    def dark(self, domain: str) -> bool | None:
        """True: its defects read dark (invert it); None: no labeled defect seen yet."""
        seen = self.counts.get(domain)
        if not seen or not seen[0]:
            return None
        return 2 * seen[1] > seen[0]

    def dark_domains(self) -> list[str]:
        return [d for d in self.counts if self.dark(d)]

    def summary(self) -> dict[str, dict[str, int | bool]]:
        """For a version's manifest: per domain, the decision and the scans it rests on."""
        return {d: {"dark": bool(self.dark(d)), "defect_scans": n, "dark_scans": k}
                for d, (n, k) in self.counts.items() if n}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {d: list(v) for d, v in self.counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = {d: [int(v[0]), int(v[1])] for d, v in state.get("counts", {}).items()}
