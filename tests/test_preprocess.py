import numpy as np
import torch

from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import normalise_scan, pad_to_multiple, training_pair
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model


def test_normalisation_is_invariant_to_bit_depth_and_scale():
    rng = np.random.default_rng(0)
    base = rng.random((301, 517))
    as_uint8 = (base * 255).astype(np.uint8)
    as_uint16 = as_uint8.astype(np.uint16) * 257  # the same picture on a 16-bit scale
    as_float = as_uint8.astype(np.float32) / 255.0 - 3.0  # shifted and scaled float export
    a, b, c = (normalise_scan(x) for x in (as_uint8, as_uint16, as_float))
    assert a.shape == (1, 301, 517) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-4)
    assert -2.01 <= a.min() and a.max() <= 2.01


def test_constant_scan_normalises_to_zero():
    assert not normalise_scan(np.full((8, 8), 7, np.uint16)).any()


def test_padding_reaches_the_stride_and_keeps_content():
    x = torch.arange(301 * 517, dtype=torch.float32).reshape(1, 1, 301, 517)
    padded = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (320, 544)
    assert torch.equal(padded[..., :301, :517], x)


def test_prediction_at_odd_size_uint16_returns_mask_at_input_size():
    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    scan = (np.random.default_rng(3).random((301, 517)) * 4095).astype(np.uint16)
    (prediction,) = predict_batch(loaded, [scan])
    assert prediction.mask.shape == (301, 517) and prediction.mask.dtype == np.uint8
    assert prediction.confidence.shape == (301, 517)
    assert prediction.mask.max() < 5
    assert abs(prediction.fractions.sum() - 1) < 1e-9


def test_batched_prediction_equals_one_by_one():
    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    rng = np.random.default_rng(4)
    scans = [(rng.random(shape) * 255).astype(np.uint8) for shape in [(64, 96), (70, 50), (64, 96)]]
    together = predict_batch(loaded, scans)
    for scan, batched in zip(scans, together, strict=True):
        (alone,) = predict_batch(loaded, [scan])
        np.testing.assert_array_equal(alone.mask, batched.mask)
        np.testing.assert_allclose(alone.confidence, batched.confidence, atol=1e-5)


def test_training_pair_resizes_image_and_mask_together():
    image = np.zeros((100, 60), np.uint16)
    mask = np.zeros((100, 60), np.uint8)
    mask[40:60, 20:40] = 3
    image[mask > 0] = 1000
    x, y = training_pair(image, mask, (64, 64))
    assert x.shape == (1, 64, 64) and y.shape == (64, 64) and y.dtype == torch.uint8
    assert set(torch.unique(y).tolist()) == {0, 3}
    assert (x[0][y == 3] > x[0][y == 0].mean()).all()


def test_model_factory_lists_valid_names_on_a_miss():
    import pytest

    with pytest.raises(ValueError, match="unet"):
        ModelConfig(architecture="nope")
    model = build_model(ModelConfig(encoder="resnet18"))
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 5, 64, 64)


def test_regions_have_exact_boxes_and_skip_specks():
    from weldstream.server.regions import defect_regions

    mask = np.zeros((50, 60), np.uint8)
    mask[5:9, 10:20] = 1
    mask[30:40, 40:42] = 3
    mask[45, 1] = 2  # a one-pixel speck
    confidence = np.full((50, 60), 0.5, np.float32)
    confidence[5:9, 10:20] = 0.9
    regions = defect_regions(mask, confidence, 5)
    assert [(r.class_id, r.x, r.y, r.width, r.height, r.area_px) for r in regions] == [
        (1, 10, 5, 10, 4, 40), (3, 40, 30, 2, 10, 20)]
    assert abs(regions[0].mean_confidence - 0.9) < 1e-6
    noisy = (np.random.default_rng(0).random((256, 256)) * 5).astype(np.uint8)
    assert len(defect_regions(noisy, confidence.repeat(6, 0)[:256].repeat(5, 1)[:, :256], 5)) <= 256
