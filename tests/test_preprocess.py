import numpy as np
import pytest
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


def _numpy_window(image: np.ndarray) -> np.ndarray:
    """The reference: percentile windowing as the server did it in numpy (np.percentile, a host sort)."""
    array = np.asarray(image, dtype=np.float32)
    array = array[None] if array.ndim == 2 else array
    low, high = (float(v) for v in np.percentile(array, [0.5, 99.5]))
    if high - low <= 0:
        return np.zeros_like(array)
    return (((np.clip(array, low, high) - low) / (high - low) - 0.5) * 4.0).astype(np.float32)


@pytest.mark.parametrize("shape,dtype", [((301, 517), np.uint16), ((512, 512), np.uint8), ((7, 9), np.float32),
                                         ((1, 1), np.uint16), ((2, 64, 48), np.float32), ((3, 1000), np.uint16)])
def test_torch_windowing_equals_the_numpy_percentile_windowing(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    image = (rng.random(shape) ** 3 * 4000).astype(dtype)  # skewed, so the tails matter
    np.testing.assert_allclose(normalise_scan(image), _numpy_window(image), atol=1e-5)


def test_a_batch_is_windowed_scan_by_scan_on_its_own_percentiles():
    from weldstream.preprocess import window_intensities

    rng = np.random.default_rng(1)
    scans = [(rng.random((40, 30)) * scale).astype(np.float32) for scale in (1.0, 100.0, 0.0)]
    batch = window_intensities(torch.from_numpy(np.stack(scans))[:, None])
    for row, scan in zip(batch, scans, strict=True):
        np.testing.assert_allclose(row.numpy(), _numpy_window(scan), atol=1e-5)


def test_staging_keeps_the_wire_dtype_fixes_byte_order_and_fetch_returns_views_on_the_cpu():
    from weldstream.server.staging import fetch, stage

    little = (np.arange(12, dtype=np.uint16) * 300).reshape(3, 4)
    big = little.astype(">u2")  # a big-endian scan (e.g. from a TIFF) is made native in the one copy
    staged = stage([little, big], torch.device("cpu"))
    assert staged.dtype == torch.uint16 and staged.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(staged.numpy()[:, 0], np.stack([little, little]))
    assert stage([little.astype(np.uint8)], torch.device("cpu")).dtype == torch.uint8
    tensor = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    (view,) = fetch(tensor)
    assert np.shares_memory(view, tensor.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_staging_on_cuda_goes_through_pinned_memory_and_back():
    from weldstream.server.staging import fetch, stage

    scan = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    staged = stage([scan], torch.device("cuda"))
    assert staged.is_cuda and staged.dtype == torch.uint16
    (back,) = fetch(staged)
    np.testing.assert_array_equal(back[0, 0], scan)


def test_regions_match_the_per_class_reference_on_random_masks():
    from scipy import ndimage

    from weldstream.server.regions import defect_regions

    def reference(mask, confidence, num_classes):
        found = []
        for class_id in range(1, num_classes):
            labels, count = ndimage.label(mask == class_id, structure=np.ones((3, 3), bool))
            for index, box in enumerate(ndimage.find_objects(labels), start=1):
                area = int((labels[box] == index).sum())
                if area >= 4:
                    found.append((class_id, box[1].start, box[0].start, box[1].stop - box[1].start,
                                  box[0].stop - box[0].start, area, float(confidence[labels == index].mean())))
        found.sort(key=lambda r: r[5], reverse=True)
        return found[:256]

    rng = np.random.default_rng(7)
    for trial in range(12):
        small = (rng.random((rng.integers(3, 40), rng.integers(3, 40))) * rng.integers(1, 6)).astype(np.uint8)
        mask = np.kron(small, np.ones((3, 3), np.uint8)) if trial % 2 else small
        confidence = rng.random(mask.shape).astype(np.float32)
        ours = [(r.class_id, r.x, r.y, r.width, r.height, r.area_px) for r in defect_regions(mask, confidence, 5)]
        expected = reference(mask, confidence, 5)
        assert ours == [r[:6] for r in expected]
        means = [r.mean_confidence for r in defect_regions(mask, confidence, 5)]
        np.testing.assert_allclose(means, [r[6] for r in expected], rtol=1e-6)


def test_regions_are_only_extracted_for_scans_that_ask():
    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    rng = np.random.default_rng(5)
    scans = [(rng.random((64, 64)) * 4095).astype(np.uint16) for _ in range(2)]
    with_regions, without = predict_batch(loaded, scans, [True, False])
    assert with_regions.regions and not without.regions
    (alone,) = predict_batch(loaded, scans[1:], True)
    np.testing.assert_array_equal(without.mask, alone.mask)
    assert without.regions == [] and alone.regions


def test_one_thread_lowers_and_restores_the_callers_thread_count():
    from weldstream.threads import one_thread

    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
