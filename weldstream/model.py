"""One factory for the segmentation model, shared by the server, the learner and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from weldstream.classes import DEFECT_CLASSES
from weldstream.polarity import with_polarity

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "linknet": smp.Linknet,
    "deeplabv3plus": smp.DeepLabV3Plus,
}


@dataclass(frozen=True)
class ModelConfig:
    """What a model is, stored in every weight-store manifest so any version can be rebuilt."""

    architecture: str = "unet"
    encoder: str = "mobilenet_v2"
    in_channels: int = 1
    classes: tuple[str, ...] = DEFECT_CLASSES
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = field(default=(128, 64, 32, 16, 8))
    # A polarity head in front of the network (weldstream.polarity): scans whose defects read dark are
    # inverted first. Manifests written before it existed have none (``from_dict``).
    polarity: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        if self.encoder not in smp.encoders.get_encoder_names():
            raise ValueError(f"unknown encoder {self.encoder!r}; see smp.encoders.get_encoder_names()")
        if len(self.classes) < 2:
            raise ValueError("a segmentation model needs at least two classes (background + one defect)")

    @property
    def stride(self) -> int:
        """Inputs are padded to a multiple of this so every encoder stage divides evenly."""
        return 2**self.encoder_depth

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["decoder_channels"] = list(self.decoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["classes"] = tuple(data.get("classes", DEFECT_CLASSES))
        data.setdefault("polarity", False)
        if "decoder_channels" in data:
            data["decoder_channels"] = tuple(data["decoder_channels"])
        return cls(**data)


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: ModelConfig, seed: int | None = 0) -> nn.Module:
    """A freshly initialised model; never downloads weights (encoder_weights=None)."""
    if seed is not None:
        torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        encoder_name=cfg.encoder,
        encoder_weights=None,
        encoder_depth=cfg.encoder_depth,
        in_channels=cfg.in_channels,
        classes=len(cfg.classes),
    )
    if cfg.architecture in ("unet", "unetplusplus"):
        kwargs["decoder_channels"] = cfg.decoder_channels[: cfg.encoder_depth]
    model = ARCHITECTURES[cfg.architecture](**kwargs)
    # The head is built after the network, so the network's initial weights do not depend on it.
    return with_polarity(model, cfg.in_channels) if cfg.polarity else model
