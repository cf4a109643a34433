"""Tiled segmentation: the same masks as one whole pass, in bounded memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weldstream.tiles import segment, segment_maps, tile_spans


@pytest.mark.parametrize("length,tile,margin", [(100, 100, 8), (101, 64, 8), (1000, 256, 32), (300, 96, 16)])
def test_kept_spans_partition_the_axis_and_keep_their_margin(length, tile, margin):
    spans = tile_spans(length, tile, margin)
    kept = [(a, b) for _, _, a, b in spans]
    assert kept[0][0] == 0 and kept[-1][1] == length
    assert all(b == c for (_, b), (c, _) in zip(kept, kept[1:], strict=False))  # contiguous, no gap, no overlap
    for start, end, keep_from, keep_to in spans:
        assert end - start == min(tile, length) and 0 <= start and end <= length
        assert keep_from - start >= (margin if start > 0 else 0)
        assert end - keep_to >= (margin if end < length else 0)


def test_a_tile_must_be_wider_than_both_margins():
    with pytest.raises(ValueError, match="margin"):
        tile_spans(500, 64, 32)


def _local_model(classes: int = 3) -> nn.Module:
    """Three 3x3 convolutions: each output pixel sees 3 pixels each way, well inside any margin below."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, classes, 3, padding=1)).eval()


def test_tiles_give_the_whole_pass_masks_when_the_margin_covers_the_receptive_field():
    model = _local_model()
    images = torch.randn(2, 1, 200, 150)
    whole_classes, whole_confidence = segment(model, images, stride=1, tile=1024)
    tiled_classes, tiled_confidence = segment(model, images, stride=1, tile=64, margin=8)
    assert torch.equal(tiled_classes, whole_classes)
    torch.testing.assert_close(tiled_confidence, whole_confidence)
    assert tiled_classes.dtype == torch.uint8 and tiled_classes.shape == (2, 200, 150)


def test_tiles_give_the_whole_pass_entropy_and_features_average_over_tiles():
    model = _local_model()
    images = torch.randn(2, 1, 200, 150)
    whole = segment_maps(model, images, stride=1, tile=1024, with_entropy=True)
    tiled = segment_maps(model, images, stride=1, tile=64, margin=8, with_entropy=True)
    assert whole.entropy is not None and tiled.entropy is not None
    torch.testing.assert_close(tiled.entropy, whole.entropy)
    assert float(whole.entropy.min()) >= 0 and float(whole.entropy.max()) <= 1
    assert whole.features is None  # no encoder, nothing to pool

    captured: list[torch.Tensor] = []

    def predict(padded: torch.Tensor):  # a backend's Predictor with a per-tile "feature": the tile's mean
        classes, confidence = segment(model, padded, stride=1)
        captured.append(padded.mean(dim=(1, 2, 3))[:, None])
        return classes, confidence, None, captured[-1]

    maps = segment_maps(predict, images, stride=1, tile=64, margin=8)
    assert maps.features is not None and len(captured) > 1
    torch.testing.assert_close(maps.features, torch.stack(captured).mean(dim=0))
    with pytest.raises(ValueError, match="entropy"):
        segment_maps(predict, images, stride=1, tile=64, margin=8, with_entropy=True)


def test_sides_that_do_not_divide_by_the_stride_are_padded_and_cropped_back():
    model = _local_model()
    classes, confidence = segment(model, torch.randn(1, 1, 70, 45), stride=32, tile=64, margin=8)
    assert classes.shape == confidence.shape == (1, 70, 45)
    assert float(confidence.min()) > 0


def test_the_server_segments_a_scan_above_the_tile_size_in_tiles_that_agree_with_one_pass():
    import numpy as np

    from weldstream.model import ModelConfig
    from weldstream.preprocess import normalise_scan
    from weldstream.server.inference import predict_batch
    from weldstream.server.loader import fresh_model
    from weldstream.simulator import generate_scan

    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    scan = generate_scan("xray-film-steel-x52", 5, (1100, 224)).image  # taller than one 1024-pixel tile
    (prediction,) = predict_batch(loaded, [scan])
    assert prediction.mask.shape == (1100, 224)
    whole, _ = segment(loaded.module, torch.from_numpy(normalise_scan(scan))[None], stride=32, tile=2048)
    agreement = float(np.mean(prediction.mask == whole[0].numpy()))
    assert (whole != 0).any() and agreement >= 0.99, agreement


@pytest.mark.parametrize("scale", [0.01, 1.0, 40.0])
def test_pixel_maps_are_the_softmax_winner_its_probability_and_normalised_entropy(scale):
    import math

    from weldstream.tiles import pixel_maps

    logits = torch.randn(2, 5, 24, 40, generator=torch.Generator().manual_seed(3)) * scale
    logits[0, :, 0, 0] = torch.tensor([-1e4, 0.0, -1e4, -1e4, -1e4])  # one class certain: entropy 0
    logits[0, :, 0, 1] = 0.0  # a uniform guess: entropy 1, the first class wins the tie
    classes, confidence, entropy = pixel_maps(logits)
    probabilities = logits.softmax(dim=1)
    expected_confidence, expected_classes = probabilities.max(dim=1)
    expected_entropy = -(probabilities * logits.log_softmax(dim=1)).sum(dim=1) / math.log(5)
    assert classes.dtype == torch.uint8 and torch.equal(classes, expected_classes.to(torch.uint8))
    assert torch.allclose(confidence, expected_confidence, atol=1e-6, rtol=0)
    assert torch.allclose(entropy, expected_entropy.clamp(0, 1), atol=1e-6, rtol=0)
    assert entropy[0, 0, 0] == 0.0 and abs(entropy[0, 0, 1] - 1.0) < 1e-6 and classes[0, 0, 1] == 0
    assert confidence[0, 0, 1] == pytest.approx(0.2)
    assert torch.equal(pixel_maps(logits, with_entropy=False)[1], confidence)
