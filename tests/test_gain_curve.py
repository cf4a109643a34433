"""A rig's gain curve: fitted from unlabeled scans' brightness profiles against a learned domain's, it undoes a
depth-gain ramp or a dose falloff (on a radiograph's dark offset too) and finds nothing to undo between scans
of one rig."""

from __future__ import annotations

import numpy as np
import torch

from weldstream.gain_curve import BINS, GainCurve, match, mean_profile, profiles, reference_profiles, undo
from weldstream.preprocess import window_intensities
from weldstream.simulator import generate_scan

DOMAIN = "ut-pe100-5mhz"
SIZE = (96, 80)


def scans(first: int, count: int, domain: str = DOMAIN) -> list[np.ndarray]:
    return [generate_scan(domain, seed, SIZE).image.astype(np.float64) for seed in range(first, first + count)]


def raw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack(images), dtype=torch.float32)[:, None]


def windowed(images: list[np.ndarray]) -> torch.Tensor:
    return window_intensities(raw(images))


def matched(images: list[np.ndarray], reference: np.ndarray, domain: str) -> GainCurve:
    return match([raw([x]) for x in images], reference, domain)


def corrected(images: list[np.ndarray], curve: GainCurve) -> torch.Tensor:
    return window_intensities(undo(raw(images), curve))


def ramped(image: np.ndarray, db: float, axis: int = 0) -> np.ndarray:
    """A gain rising ``db`` dB linearly from the first row (or column) to the last, as another TGC slope."""
    length = image.shape[axis]
    gain = 10.0 ** (db * np.arange(length) / (length - 1) / 20.0)
    return image * (gain[:, None] if axis == 0 else gain[None, :])


def test_a_profile_is_in_db_against_the_scan_s_own_mean_so_a_uniform_gain_changes_nothing():
    images = scans(0, 4)
    assert profiles(windowed(images)).shape == (4, 2, BINS)
    torch.testing.assert_close(profiles(windowed(images)), profiles(windowed([3.0 * x for x in images])))


def test_the_curve_of_a_depth_ramp_is_the_ramp_and_correcting_by_it_gives_back_the_learned_look():
    reference = mean_profile([windowed(scans(100, 32))])
    rig = [ramped(x, 26.0) for x in scans(0, 16)]
    curve = matched(rig, reference, DOMAIN)
    depth_gain = curve.db("rows", SIZE[0])
    # a 26 dB ramp: the fitted rise from top to bottom is within a few dB of it, the columns stay flat
    assert 20.0 < depth_gain[-1] - depth_gain[0] < 30.0
    assert np.ptp(curve.db("columns", SIZE[1])) < 3.0
    assert curve.span_db > 20.0
    learned = windowed(scans(0, 16))
    before = (windowed(rig) - learned).abs().mean().item()
    after = (corrected(rig, curve) - learned).abs().mean().item()
    assert after < 0.2 * before


def test_a_dose_falloff_across_the_width_is_found_on_the_columns():
    domain = "xray-dda-steel-x70-inverted"
    reference = mean_profile([windowed(scans(100, 32, domain))])
    rig = [ramped(x, -9.5, axis=1) for x in scans(0, 16, domain)]
    curve = matched(rig, reference, domain)
    columns = curve.db("columns", SIZE[1])
    # the raw falloff, though windowing subtracts the parent metal's level from every scan first
    assert -12.0 < columns[-1] - columns[0] < -7.0 and np.ptp(curve.db("rows", SIZE[0])) < 3.0
    learned = windowed(scans(0, 16, domain))
    before = (windowed(rig) - learned).abs().mean().item()
    assert (corrected(rig, curve) - learned).abs().mean().item() < 0.3 * before


def test_other_scans_of_the_learned_rig_have_no_gain_curve_worth_correcting():
    reference = mean_profile([windowed(scans(100, 32))])
    curve = matched(scans(0, 8), reference, DOMAIN)
    assert curve.span_db < 3.0  # RigNormConfig.min_gain_db: below it no rig is corrected


def test_a_curve_survives_the_state_file_and_a_manifest_without_profiles_gives_none():
    curve = GainCurve(DOMAIN, (1.0, -2.0, 0.5), (0.0, 0.25, -0.1))
    assert GainCurve.from_state(curve.to_state()) == curve
    assert reference_profiles({DOMAIN: {"mean": [0.0], "std": [1.0]}}) == {}
    assert set(reference_profiles({DOMAIN: {"gain_profile": np.zeros((2, BINS)).tolist()}})) == {DOMAIN}


def test_scans_of_any_size_have_a_profile_and_a_curve_applies_at_any_size():
    curve = GainCurve(DOMAIN, (0.0, 20.0, 0.0), (0.0, 0.0, 0.0))
    for height, width in ((7, 5), (100, 37), (16, 16)):
        scan = torch.rand(1, 1, height, width) * 100 + 1
        assert torch.isfinite(profiles(window_intensities(scan))).all()
        rise = curve.db("rows", height)
        assert np.isclose(rise[-1] - rise[0], 20.0 * (height - 1) / height)
        assert undo(scan, curve).shape == scan.shape
