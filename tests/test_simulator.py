"""The scan simulator: determinism, exact masks, physically distinct domains, and the dataset round trip."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from weldstream.classes import DEFECT_CLASSES
from weldstream.simulator import (
    DOMAINS,
    Domain,
    ScanSample,
    domain_names,
    generate_scan,
    read_dataset,
    read_index,
    write_dataset,
)
from weldstream.simulator import cli as simulator_cli
from weldstream.simulator.preview import save_overlay_grid
from weldstream.simulator.scan import render_scan

NAMES = domain_names()
VOID_CLASSES = [DEFECT_CLASSES.index(name) for name in ("crack", "porosity", "lack_of_fusion")]


def _normalised(image: np.ndarray) -> np.ndarray:
    array = image.astype(np.float64)
    low, high = np.percentile(array, [0.5, 99.5])
    return np.clip((array - low) / (high - low), 0, 1)


def _half_width(region: np.ndarray, axis: int) -> float:
    """Lag (pixels, interpolated) where the autocorrelation along `axis` first drops to one half."""
    region = region - region.mean(axis=axis, keepdims=True)
    n = region.shape[axis]
    power = np.abs(np.fft.rfft(region, n=2 * n, axis=axis)) ** 2
    acf = np.fft.irfft(power, axis=axis).mean(axis=1 - axis)[:n]
    acf = acf / acf[0]
    i = int(np.argmax(acf < 0.5))
    return i - 1 + (acf[i - 1] - 0.5) / (acf[i - 1] - acf[i])


def test_domains_cover_both_modalities_and_all_dtypes() -> None:
    assert len(NAMES) >= 6 and NAMES == list(DOMAINS)
    assert {DOMAINS[name].modality for name in NAMES} == {"ultrasonic", "radiograph"}
    assert {DOMAINS[name].dtype for name in NAMES} == {"uint8", "uint16", "float32"}
    for name in NAMES:
        assert isinstance(DOMAINS[name], Domain) and DOMAINS[name].description


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes_and_declared_dtype(name: str) -> None:
    first, second = generate_scan(name, 42), generate_scan(DOMAINS[name], 42)
    assert isinstance(first, ScanSample)
    assert first.image.tobytes() == second.image.tobytes() and first.mask.tobytes() == second.mask.tobytes()
    assert first.image.dtype == np.dtype(DOMAINS[name].dtype) and first.mask.dtype == np.uint8
    assert first.image.shape == first.mask.shape == (128, 128)
    assert first.scan_id == f"{name}-{42:08d}" and first.modality == DOMAINS[name].modality
    assert int(first.mask.max()) < len(DEFECT_CLASSES)
    other = generate_scan(name, 43)
    assert not np.array_equal(first.image, other.image)


def test_bytes_do_not_depend_on_the_process() -> None:
    """A fresh interpreter with another hash seed makes the same bytes: no hidden global state."""
    code = ("import hashlib; from weldstream.simulator import generate_scan, domain_names; "
            "print(hashlib.sha256(b''.join(generate_scan(n, 7, (64, 96)).image.tobytes() + "
            "generate_scan(n, 7, (64, 96)).mask.tobytes() for n in domain_names())).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = hashlib.sha256(b"".join(generate_scan(n, 7, (64, 96)).image.tobytes()
                                   + generate_scan(n, 7, (64, 96)).mask.tobytes() for n in NAMES)).hexdigest()
    assert out.stdout.strip() == here


def test_twelve_bit_rig_stays_in_twelve_bits() -> None:
    assert max(int(generate_scan("ut-pe100-5mhz", seed).image.max()) for seed in range(10)) <= 4095


@pytest.mark.parametrize("name", NAMES)
def test_every_class_appears_and_coverage_is_plausible(name: str) -> None:
    masks = [generate_scan(name, seed).mask for seed in range(50)]
    present = set(np.unique(np.concatenate([mask.ravel() for mask in masks])).tolist())
    assert present == set(range(len(DEFECT_CLASSES)))
    coverage = np.array([(mask > 0).mean() for mask in masks])
    assert 0.04 <= (coverage == 0).mean() <= 0.32  # roughly 10-20 % defect-free
    flawed = coverage[coverage > 0]
    assert 0.004 <= np.median(flawed) <= 0.05 and flawed.max() <= 0.12


@pytest.mark.parametrize("name", NAMES)
def test_mask_marks_exactly_what_the_flaws_changed(name: str) -> None:
    """Render each scan with and without its flaws (same background draws) and compare with the mask."""
    changed_share, polarities = [], set()
    ultrasonic = DOMAINS[name].modality == "ultrasonic"
    for seed in range(25):
        drawn, bare = render_scan(name, seed), render_scan(name, seed, with_defects=False)
        assert np.array_equal(drawn.mask, bare.mask)
        mask = drawn.mask > 0
        diff = drawn.image.astype(np.float64) - bare.image.astype(np.float64)
        if not mask.any():
            assert not diff.any()
            continue
        scale = float(np.ptp(bare.image.astype(np.float64)))
        changed_share.append(float((np.abs(diff[mask]) > 1e-4 * scale).mean()))
        near = ndimage.binary_dilation(mask, iterations=2)
        if ultrasonic:
            # Echoes only brighten, and only at the flaw (plus the beam's one-pixel skirt) ...
            brighter = np.clip(diff, 0, None) ** 2
            assert brighter[~near].sum() <= 0.02 * brighter.sum()
            # ... while the acoustic shadow may only darken material below a flaw.
            above = np.maximum.accumulate(ndimage.binary_dilation(mask, np.ones((1, 41), bool)), axis=0)
            assert not ((diff < 0) & ~above).any()
        else:
            assert (diff[~near] ** 2).sum() <= 0.02 * (diff**2).sum()
        voids = np.isin(drawn.mask, VOID_CLASSES)
        if voids.any():
            polarities.add(bool(diff[voids].mean() > 0))
    assert np.mean(changed_share) >= 0.9 and min(changed_share) >= 0.6
    # UT flaws are bright echoes; voids are dark on positive film, bright on a DDA and in optical density.
    bright_voids = ultrasonic or DOMAINS[name].rig.detector in ("dda", "film-density")
    assert polarities == {bright_voids}


def test_domains_differ_in_intensity_statistics() -> None:
    """Every pair of domains differs in its windowed intensity histogram (what a model first sees)."""
    histograms = {}
    for name in NAMES:
        images = [_normalised(generate_scan(name, seed).image) for seed in range(8)]
        counts = [np.histogram(image, 16, (0, 1))[0] for image in images]
        histograms[name] = np.mean(counts, axis=0) / (128 * 128)
    for a, b in itertools.combinations(NAMES, 2):
        assert np.abs(histograms[a] - histograms[b]).sum() > 0.25, (a, b)


def test_speckle_grain_follows_the_probe_wavelength() -> None:
    """Speckle correlation length in mm shrinks as frequency rises and matches the pulse and beam size."""
    grains = {}
    for name in [n for n in NAMES if DOMAINS[n].modality == "ultrasonic"]:
        domain = DOMAINS[name]
        pitch = domain.pitch_mm(128)
        top, bottom = int(domain.rig.dead_zone_mm / pitch) + 3, int(0.8 * domain.rig.wall_mm / pitch)
        axial, lateral = [], []
        for seed in range(4):
            region = render_scan(name, seed, with_defects=False).image[top:bottom].astype(np.float64)
            region /= region.mean(axis=1, keepdims=True)  # take out the TGC / attenuation trend
            axial.append(_half_width(region, 0) * pitch)
            lateral.append(_half_width(region, 1) * pitch)
        wavelength = domain.rig.wavelength_mm
        axial_fwhm, beam_fwhm = domain.rig.pulse_cycles * wavelength / 2, wavelength * domain.rig.f_number
        expected = (axial_fwhm / 2.355, beam_fwhm / 2.355)
        measured = (float(np.mean(axial)), float(np.mean(lateral)))
        assert np.allclose(measured, expected, rtol=0.35), (name, measured, expected)
        grains[domain.rig.frequency_mhz] = measured
    by_frequency = [grains[f] for f in sorted(grains)]
    for coarse, fine in itertools.pairwise(by_frequency):
        assert coarse[0] > fine[0] and coarse[1] > fine[1]


@pytest.mark.parametrize("size", [(301, 517), (32, 200), (200, 48)])
def test_odd_sizes(size: tuple[int, int]) -> None:
    for name in NAMES:
        sample = generate_scan(name, 3, size)
        assert sample.image.shape == sample.mask.shape == size
        assert np.isfinite(sample.image.astype(np.float64)).all()


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="valid domains: ut-pe100-5mhz"):
        generate_scan("ut-pe100-10mhz", 0)
    with pytest.raises(ValueError, match="xray-film-thickwall-float"):
        write_dataset("unused", "nope", 1)
    with pytest.raises(ValueError):
        generate_scan(NAMES[0], -1)
    with pytest.raises(ValueError):
        generate_scan(NAMES[0], 0, (16, 128))


def test_write_read_round_trip_is_exact(tmp_path: Path) -> None:
    for name in NAMES:
        index = write_dataset(tmp_path / name, name, count=3, seed=5, size=(48, 72))
        assert index == tmp_path / name / "index.csv"
        rows = read_dataset(index)
        assert [row["scan_id"] for row, _, _ in rows] == [f"{name}-{seed:08d}" for seed in (5, 6, 7)]
        assert read_index(index) == json.loads((index.parent / "index.json").read_text())
        for row, image, mask in rows:
            sample = generate_scan(name, row["seed"], (48, 72))
            assert image.dtype == sample.image.dtype and np.array_equal(image, sample.image)
            assert mask.dtype == np.uint8 and np.array_equal(mask, sample.mask)
            counts = np.bincount(mask.ravel(), minlength=len(DEFECT_CLASSES))
            assert [row[f"pixels_{c}"] for c in DEFECT_CLASSES] == counts.tolist()
            assert (row["height"], row["width"], row["dtype"]) == (48, 72, DOMAINS[name].dtype)
            assert row["image"].endswith(".tiff" if row["dtype"] == "float32" else ".png")
    twelve_bit = tmp_path / "ut-pe100-5mhz"
    with Image.open(twelve_bit / read_index(twelve_bit / "index.csv")[0]["image"]) as png:
        assert png.mode.startswith("I;16")  # a real 16-bit PNG, not a rescaled 8-bit one


def test_cli_writes_each_domain_and_needs_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--count", "2", "--size", "40x56", "--seed", "9"])
    assert simulator_cli.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == NAMES
    assert len(read_dataset(tmp_path / NAMES[1] / "index.csv")) == 2
    one = parser.parse_args(["--out", str(tmp_path / "one"), "--domain", NAMES[3], "--count", "1"])
    assert simulator_cli.run(one) == 0 and (tmp_path / "one" / "index.json").exists()
    with pytest.raises(SystemExit, match="--out"):
        simulator_cli.run(parser.parse_args(["--count", "1"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--size", "12by12"])


def test_overlay_grid_is_a_png(tmp_path: Path) -> None:
    samples = [generate_scan(name, 1, (64, 64)) for name in NAMES[:2]]
    path = save_overlay_grid(tmp_path / "grid.png", samples)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200


def test_fast_enough_to_stream() -> None:
    """Loose bound (the target is ~3 ms per 128 x 128 scan): catches order-of-magnitude slowdowns."""
    start = time.perf_counter()
    for seed in range(24):
        generate_scan(NAMES[seed % len(NAMES)], seed)
    assert (time.perf_counter() - start) / 24 < 0.05
