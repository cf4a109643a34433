"""The U-Net as Avalanche's LFL needs it: ``get_features`` plus a final ``nn.Linear`` classifier.

LFL (Jung et al. 2016) keeps the decision boundary fixed (Avalanche freezes the model's last
``nn.Linear`` after each experience) and penalises drift of the features that feed it (MSE between
``get_features`` of the current and the previous model). In the U-Net the classifier is the
segmentation head, a 3x3 convolution over the decoder's output. Here it is rewritten, exactly, as an
``nn.Linear`` over each pixel's 3x3 neighbourhood (``unfold``), initialised from the convolution's
weights: the wrapped model computes the same function as ``build_model``'s, from the same init, and
LFL's two ingredients act on the parts they were designed for: the features are the decoder output
(N, C, H, W), the per-pixel input of the classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.models.base_model import BaseModel
from torch import Tensor, nn

from weldstream.polarity import Canonicalising, canonicalise


class LFLSegmenter(nn.Module, BaseModel):
    """Encoder + decoder of an smp U-Net, with its 3x3 segmentation head as a per-pixel nn.Linear."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        conv = unet.segmentation_head[0]
        if not isinstance(conv, nn.Conv2d) or conv.stride != (1, 1) or conv.bias is None:
            raise ValueError("expected an smp segmentation head starting with a stride-1 Conv2d with bias")
        leaves = [m for part in list(unet.segmentation_head)[1:] for m in part.modules() if not list(m.children())]
        if any(not isinstance(m, nn.Identity) for m in leaves):
            raise ValueError("the segmentation head must be a bare convolution (no upsampling or activation)")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        # A polarity head (weldstream.polarity) keeps deciding which scans to invert; LFL leaves it as it is.
        self.polarity = unet.polarity if isinstance(unet, Canonicalising) else None
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        self.head = nn.Linear(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels)
        with torch.no_grad():
            self.head.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            self.head.bias.copy_(conv.bias)

    def get_features(self, x: Tensor) -> Tensor:
        """Decoder output (N, C, H, W): what the classifier sees at every pixel."""
        if self.polarity is not None:
            x = canonicalise(self.polarity, x)
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        features = self.get_features(x)  # (N, C, H, W)
        n, _, h, w = features.shape
        patches = F.unfold(features, self.kernel_size, padding=self.padding)  # (N, C*k*k, H*W)
        logits = self.head(patches.transpose(1, 2))  # (N, H*W, K)
        return logits.transpose(1, 2).reshape(n, -1, h, w)  # (N, K, H, W)

    def unet_state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        """The weights as ``build_model``'s U-Net holds them (the head back into its 3x3 convolution),
        so a version trained with LFL is served and learned from like any other."""
        conv = unet.segmentation_head[0]
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        state["segmentation_head.0.weight"] = self.head.weight.detach().reshape(conv.weight.shape).clone()
        state["segmentation_head.0.bias"] = self.head.bias.detach().clone()
        if self.polarity is not None:
            state.update({f"polarity.{k}": v for k, v in self.polarity.state_dict().items()})
        return state
