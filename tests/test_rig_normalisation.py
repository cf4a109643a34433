"""Per-rig normalisation in a real server on loopback: a shifted rig gets its own BatchNorm statistics from
its unlabeled scans, a rig like the learned domain keeps the version's, no rig's statistics move another
rig's masks, a swap re-estimates them from the reservoir before going live, and a restart keeps them."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from weldstream.codec import array_to_tensor
from weldstream.dev.versions import normalised, publish_learned_version
from weldstream.features import REFERENCE_KEY
from weldstream.gain_curve import PROFILE_KEY, undo
from weldstream.kserve import grpc_predict_v2_pb2 as pb
from weldstream.kserve import grpc_predict_v2_pb2_grpc
from weldstream.norm_stats import Moments, measure, measuring_copy
from weldstream.preprocess import pad_to_multiple, window_intensities
from weldstream.server.inference import predict_batch
from weldstream.server.loader import load_version
from weldstream.server.model_slot import LoadedModel
from weldstream.server.rig_normalisation import RigNormaliser, RigNormConfig, Served
from weldstream.simulator import generate_scan
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

from .conftest import server_config

DOMAIN = "ut-pe100-5mhz"
# How long to wait for the low-priority measuring thread: a guard against a hang, not a timing (with four
# CPU-bound processes on 2 cores, 120 s was not enough for twelve scans).
HANG_GUARD_S = 1800.0
CPU = torch.device("cpu")
SIZE = (96, 96)


def learned_scan(seed: int) -> np.ndarray:
    return generate_scan(DOMAIN, seed, SIZE).image


def shifted_scan(seed: int) -> np.ndarray:
    """The learned domain as another rig exports it: flipped, inverted, 16-bit with a strong gain."""
    return shifted_from(learned_scan(seed))


def shifted_from(scan: np.ndarray) -> np.ndarray:
    image = scan.astype(np.float32)
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    return ((1.0 - image[:, ::-1]) ** 0.5 * 40000 + 9000).astype(np.uint16)


def publish_version(store: WeightStore, seed: int, parent: int) -> None:
    """A version whose BatchNorm statistics are those of the learned domain, with drift references for it."""
    publish_learned_version(store, DOMAIN, [learned_scan(1000 + i) for i in range(32)],
                            [learned_scan(2000 + i) for i in range(16)], seed=seed, parent=parent)


def request(scan: np.ndarray, rig: str = "") -> segmenter_pb2.SegmentRequest:
    return segmenter_pb2.SegmentRequest(scan_id="s", rig_id=rig, return_confidence=True,
                                        image=tensor_pb2.Image(tensor=array_to_tensor(np.ascontiguousarray(scan))))


async def segment(stub, scan: np.ndarray, rig: str = "") -> segmenter_pb2.SegmentResponse:
    return await stub.Segment(request(scan, rig))


async def kserve_infer(channel, scan: np.ndarray, rig: str) -> pb.ModelInferResponse:
    """A KServe v2 call for one uint16 scan, the rig named by the request parameter ``rig_id``."""
    infer = pb.ModelInferRequest(model_name="weld-seg", raw_input_contents=[scan.tobytes()])
    infer.inputs.add(name="scan", datatype="UINT16", shape=[1, 1, *scan.shape])
    infer.parameters["rig_id"].string_param = rig
    return await grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)


async def test_a_shifted_rig_gets_its_own_statistics_and_no_other_rig_s_masks_move(tmp_path, started):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    publish_version(store, seed=1, parent=0)
    # the fresh weights of publish_version place every rig near the learned domain once a gain curve is undone;
    # this test is about a rig's own statistics alone
    cfg = server_config(model_dir, poll_interval_s=3600, rig_norm_min_scans=8, rig_gain_adapt_distance=0)
    server = await started(cfg)
    assert server.slot.current().version == 1
    probes = [learned_scan(5000 + i) for i in range(3)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        before = [await segment(stub, scan, "steady") for scan in probes]
        first = await segment(stub, shifted_scan(0), "shifted")
        assert (first.normalisation.source, first.normalisation.scans) == ("version", 0)
        for i in range(12):
            await segment(stub, learned_scan(100 + i), "steady")
            await segment(stub, shifted_scan(100 + i), "shifted")
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        assert server.rig_norm.decision("steady") == "keep"
        assert server.rig_norm.decision("shifted") == "adapt"
        adapted = await segment(stub, shifted_scan(0), "shifted")
        assert adapted.normalisation.source == "rig" and adapted.normalisation.scans >= 8
        assert adapted.confidence.data != first.confidence.data
        # the same scan sent without a rig id, and by the rig that keeps the version's statistics: untouched
        plain = await segment(stub, shifted_scan(0))
        assert plain.normalisation.source == "version"
        assert plain.confidence.data == first.confidence.data
        after = [await segment(stub, scan, "steady") for scan in probes]
        for old, new in zip(before, after, strict=True):
            assert new.normalisation.source == "version"
            assert new.mask.data == old.mask.data and new.confidence.data == old.confidence.data  # bit-exact
        newcomer = await segment(stub, shifted_scan(1), "newcomer")
        assert (newcomer.normalisation.source, newcomer.normalisation.scans) == ("version", 0)
        # KServe clients name the rig with the request parameter rig_id and read the answer from parameters
        scan = shifted_scan(0)
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        now = server.rig_norm.statistics("shifted", 1)
        answer = await kserve_infer(channel, scan, "shifted")
        assert answer.parameters["normalisation"].string_param == "rig"
        assert answer.parameters["normalisation_scans"].int64_param >= 8
        mask = next(i for i, o in enumerate(answer.outputs) if o.name == "mask")
        [expected] = predict_batch(server.slot.current(), [scan], statistics=[now])
        assert answer.raw_output_contents[mask] == expected.mask.tobytes()

        # A new version: the shifted rig's statistics are re-estimated from its reservoir before it goes live.
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        reservoir = list(server.rig_norm._rigs["shifted"].reservoir)
        publish_version(store, seed=2, parent=1)
        assert await server.swapper.swap_to_served()
        served = server.rig_norm.statistics("shifted", 2)  # made before the swap, from the reservoir alone
        swapped = await segment(stub, shifted_scan(0), "shifted")
        assert swapped.model_version == 2 and swapped.normalisation.source == "rig"
        v2 = server.slot.current().module
        twin = measuring_copy(v2)
        expected = Moments.pooled([Moments.of_version(v2, 1.0), Moments.pooled(
            measure(twin, pad_to_multiple(normalised([scan]), 32)) for scan in reservoir)]).buffers()
        assert served.scans == len(reservoir)
        for name, tensor in expected.items():
            assert torch.allclose(served.buffers[name], tensor, atol=1e-6), name
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        await segment(stub, shifted_scan(0), "shifted")
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        scans_before_restart = server.rig_norm.scans("shifted")
        buffers_before_restart = server.rig_norm._versions[2].served["shifted"].buffers

    # A restart keeps the rigs' statistics and decisions (saved at stop, read at start).
    await server.stop()
    again = await started(cfg)
    assert again.rig_norm.decision("shifted") == "adapt" and again.rig_norm.decision("steady") == "keep"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        restarted = await segment(stub, shifted_scan(0), "shifted")
    assert restarted.normalisation.source == "rig" and restarted.normalisation.scans == scans_before_restart
    restored = again.rig_norm._versions[2].served["shifted"].buffers
    assert all(torch.equal(restored[name], tensor) for name, tensor in buffers_before_restart.items())
    # what the restarted server answers is what those statistics give (nothing re-estimated at start)
    [expected_after] = predict_batch(again.slot.current(), [shifted_scan(0)],
                                     statistics=[Served("rig", scans_before_restart, buffers_before_restart)])
    assert restarted.mask.data == expected_after.mask.tobytes()


async def test_rigs_past_the_label_cap_and_blank_scans_are_served_with_the_version_s_statistics(tmp_path, started):
    model_dir = tmp_path / "models"
    publish_version(WeightStore(model_dir), seed=1, parent=0)
    server = await started(server_config(model_dir, poll_interval_s=3600, rig_norm_min_scans=2))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        for rig in range(40):  # the first 32 rigs get labels of their own; the rest share "other"
            await segment(stub, learned_scan(rig), f"rig-{rig}")
        blank = np.zeros(SIZE, np.uint16)
        for _ in range(4):
            await segment(stub, blank, "blank")
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
    assert "other" not in server.rig_norm.rigs() and "blank" not in server.rig_norm.rigs()
    assert server.rig_norm.scans("rig-0") == 1  # measured, still pending (fewer than min_scans)


# Stores outlive a single test (loaded_version is cached), so they live under one directory removed at exit.
_STORES = tempfile.TemporaryDirectory(prefix="weldstream-test-stores-")


def store_with_version_1() -> WeightStore:
    """A fresh store holding version 1 (as publish_version), for tests that swap to later versions."""
    store = WeightStore(Path(tempfile.mkdtemp(dir=_STORES.name)))
    publish_version(store, 1, parent=0)
    return store


@functools.cache
def loaded_version(seed: int = 1) -> LoadedModel:
    """Version 1 in memory, its BatchNorm statistics those of the learned domain (as publish_version)."""
    store = WeightStore(Path(tempfile.mkdtemp(dir=_STORES.name)))
    publish_version(store, seed, parent=0)
    return load_version(store, 1, CPU)


def running_normaliser(loaded: LoadedModel, **overrides) -> RigNormaliser:
    normaliser = RigNormaliser(RigNormConfig(**{"min_scans": 4, "patience": 4, **overrides}))
    normaliser.prepare(loaded)
    normaliser.follow(loaded.version)
    normaliser.start()
    return normaliser


def feed(normaliser: RigNormaliser, rig: str, scans: list[np.ndarray], distance: float = 5.0) -> None:
    for scan in scans:
        normaliser.observe(rig, scan, distance, drift_event=False)
    normaliser.settle()


def dim_scan(seed: int) -> np.ndarray:
    """Another physical rig: a faint 8-bit export of the learned domain."""
    image = learned_scan(seed).astype(np.float32)
    return (image / max(float(image.max()), 1.0) * 12).astype(np.uint8)


def test_a_rig_whose_scans_change_starts_over_and_then_learns_the_new_ones():
    normaliser = running_normaliser(loaded_version())
    try:
        feed(normaliser, "rig", [shifted_scan(i) for i in range(6)])
        assert normaliser.decision("rig") == "adapt" and normaliser.scans("rig") == 6
        feed(normaliser, "rig", [dim_scan(0)])  # one stray scan: held aside, not blended in
        assert normaliser.scans("rig") == 6
        feed(normaliser, "rig", [shifted_scan(50)])
        assert normaliser.scans("rig") == 7 and normaliser._rigs["rig"].strangers == []
        feed(normaliser, "rig", [dim_scan(i) for i in range(4)])  # patience: 4 unlike scans in a row
        assert normaliser._metrics.rig_statistics_resets.labels("rig", "mismatch")._value.get() == 1
        # it starts over from those four (their drift distances say "shifted", so it adapts to them at once)
        assert normaliser.decision("rig") == "adapt" and normaliser.scans("rig") == 4
        reservoir = normaliser._rigs["rig"].reservoir
        assert len(reservoir) == 4 and all(scan.dtype == np.uint8 for scan in reservoir)
        feed(normaliser, "rig", [dim_scan(10 + i) for i in range(4)])
        assert normaliser.scans("rig") == 8 and normaliser._metrics.rig_statistics_resets.labels(
            "rig", "mismatch")._value.get() == 1
    finally:
        normaliser.close()


def test_a_drift_event_starts_a_rig_over_and_a_rig_like_the_learned_domain_keeps_the_version_s_statistics():
    normaliser = running_normaliser(loaded_version())
    try:
        feed(normaliser, "near", [learned_scan(i) for i in range(4)], distance=1.0)
        assert normaliser.decision("near") == "keep" and normaliser.statistics("near", 1).source == "version"
        feed(normaliser, "far", [shifted_scan(i) for i in range(4)], distance=6.0)
        assert normaliser.statistics("far", 1).source == "rig"
        normaliser.observe("far", shifted_scan(9), 6.0, drift_event=True)
        normaliser.settle()
        assert normaliser._metrics.rig_statistics_resets.labels("far", "drift")._value.get() == 1
        assert normaliser.statistics("far", 1).source == "version" and normaliser.scans("far") == 1
    finally:
        normaliser.close()


def test_two_rigs_behind_one_id_interleaved_from_the_start_share_one_blend_of_statistics():
    """Documented limit: scans of two physical rigs alternating under one id from the first scan look like
    one rig with a wide spread, so they get one blended set of statistics (give each rig its own id); a
    rig that switches from one to the other is caught (the test above)."""
    normaliser = running_normaliser(loaded_version())
    try:
        mixed = [shifted_scan(i) if i % 2 else dim_scan(i) for i in range(12)]
        feed(normaliser, "shared", mixed)
        assert normaliser.decision("shared") == "adapt" and normaliser.scans("shared") == 12
    finally:
        normaliser.close()


def test_defect_free_scans_adapt_a_rig_like_any_others():
    """A rig that sends only background (no defect in sight) is adapted like any other: defects are a small
    share of a scan's pixels, so its statistics hardly depend on them."""
    loaded = loaded_version()
    normaliser = running_normaliser(loaded)
    try:
        samples = (generate_scan(DOMAIN, seed, SIZE) for seed in range(200))
        clean = [sample.image for sample in samples if not sample.mask.any()][:6]
        assert len(clean) == 6
        feed(normaliser, "clean", [shifted_from(scan) for scan in clean])
        assert normaliser.decision("clean") == "adapt" and normaliser.scans("clean") == 6
    finally:
        normaliser.close()


def test_a_swap_to_a_version_that_learned_the_rig_gives_it_back_the_version_s_statistics():
    """After its labels are learned a rig's own statistics cost points (bench adapt), so a version whose drift
    references place the rig's reservoir within the keep distance takes it back to the version's statistics
    when it goes live; a version that learned something else leaves it adapted."""
    store = store_with_version_1()
    normaliser = running_normaliser(load_version(store, 1, CPU), gain_adapt_distance=0)  # own statistics alone
    try:
        feed(normaliser, "shifted", [shifted_scan(i) for i in range(4)], distance=6.0)
        assert normaliser.decision("shifted") == "adapt"
        publish_version(store, 2, parent=1)  # the learned domain again, other weights
        normaliser.prepare(load_version(store, 2, CPU))
        normaliser.follow(2)
        assert normaliser.decision("shifted") == "adapt" and normaliser.statistics("shifted", 2).source == "rig"
        publish_learned_version(store, "shifted-rig", [shifted_scan(100 + i) for i in range(32)],
                                [shifted_scan(200 + i) for i in range(16)], seed=3, parent=2)
        normaliser.prepare(load_version(store, 3, CPU))
        assert normaliser.statistics("shifted", 2).source == "rig"  # until version 3 goes live
        normaliser.follow(3)
        assert normaliser.decision("shifted") == "keep" and normaliser.statistics("shifted", 3).source == "version"
        feed(normaliser, "shifted", [shifted_scan(i) for i in range(4, 8)], distance=1.0)
        assert normaliser.statistics("shifted", 3).source == "version" and normaliser.scans("shifted", 3) == 0
    finally:
        normaliser.close()


def depth_gain_scan(seed: int, db: float = 26.0, blurred: bool = False) -> np.ndarray:
    """The learned domain from a rig whose gain rises ``db`` dB from the top row to the bottom (another TGC
    slope), exported with the headroom that keeps the ramp unclipped; ``blurred``: behind another probe too
    (a 3-tap blur first)."""
    image = learned_scan(seed).astype(np.float64)
    if blurred:
        kernel = np.array([0.25, 0.5, 0.25])
        for axis in (0, 1):
            image = np.apply_along_axis(lambda line: np.convolve(np.pad(line, 1, mode="edge"), kernel, "valid"),
                                        axis, image)
    gain = 10.0 ** (db * np.arange(SIZE[0]) / (SIZE[0] - 1) / 20.0)
    return np.round(image * gain[:, None] / gain[-1] * 16).astype(np.uint16)


async def test_a_rig_with_another_gain_curve_keeps_the_version_s_statistics_on_corrected_scans(tmp_path, started):
    """A depth-gain ramp changes a scan's brightness along depth, which a rig's own BatchNorm statistics cannot
    undo: the server fits the rig's gain curve against the learned domain's brightness profile (published by
    the learner) and serves its corrected scans with the version's statistics; no other rig's masks move, the
    answer says so on both APIs, a restart keeps the curve and a drift event starts the rig over."""
    model_dir = tmp_path / "models"
    publish_version(WeightStore(model_dir), seed=1, parent=0)
    cfg = server_config(model_dir, poll_interval_s=3600, rig_norm_min_scans=8)
    server = await started(cfg)
    probes = [learned_scan(5000 + i) for i in range(3)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        before = [await segment(stub, scan, "steady") for scan in probes]
        for i in range(10):
            await segment(stub, depth_gain_scan(100 + i), "tgc")
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        assert server.rig_norm.decision("tgc") == "keep"
        served = server.rig_norm.statistics("tgc", 1)
        assert served.source == "version" and served.gain is not None and served.gain.domain == DOMAIN
        rise = served.gain.db("rows", SIZE[0])
        assert 20.0 < rise[-1] - rise[0] < 32.0 and np.ptp(served.gain.db("columns", SIZE[1])) < 3.0
        corrected = await segment(stub, depth_gain_scan(7), "tgc")
        assert corrected.normalisation.source == "version" and corrected.normalisation.gain_domain == DOMAIN
        assert corrected.normalisation.gain_db > 20.0 and corrected.normalisation.gain_scans >= 8
        plain = await segment(stub, depth_gain_scan(7))  # the same scan without a rig id: not corrected
        assert plain.normalisation.gain_domain == "" and plain.confidence.data != corrected.confidence.data
        [expected] = predict_batch(server.slot.current(), [depth_gain_scan(7)], statistics=[served])
        assert corrected.mask.data == expected.mask.tobytes()
        assert expected.backend == server.slot.current().runner.name  # the version's backend, not eager's fallback
        # corrected, the rig's scans sit as near the learned domain's references as the domain's own scans
        live = server.slot.current()
        table = server.rig_norm._versions[1]
        ramped = [RigNormaliser._distance(table, depth_gain_scan(300 + i)) for i in range(4)]
        fixed = [RigNormaliser._distance(table, window_intensities(undo(RigNormaliser._raw(table, depth_gain_scan(
            300 + i)), served.gain)), windowed=True) for i in range(4)]
        learned = [RigNormaliser._distance(table, learned_scan(300 + i)) for i in range(4)]
        assert min(ramped) > 2.0 and max(fixed) < max(learned) + 0.5, (ramped, fixed, learned)
        after = [await segment(stub, scan, "steady") for scan in probes]
        for old, new in zip(before, after, strict=True):
            assert new.mask.data == old.mask.data and new.confidence.data == old.confidence.data  # bit-exact
        answer = await kserve_infer(channel, depth_gain_scan(7), "tgc")
        assert answer.parameters["normalisation"].string_param == "version"
        assert answer.parameters["normalisation_gain_domain"].string_param == DOMAIN
        assert answer.parameters["normalisation_gain_db"].double_param > 20.0
        assert server.metrics.rig_gain_db.labels("tgc")._value.get() > 20.0
        assert live.version == 1

    await server.stop()
    again = await started(cfg)
    assert again.rig_norm.decision("tgc") == "keep" and again.rig_norm.statistics("tgc", 1).gain == served.gain
    again.rig_norm.observe("tgc", depth_gain_scan(8), 9.0, drift_event=True)
    await asyncio.to_thread(again.rig_norm.settle, HANG_GUARD_S)
    assert again.rig_norm.statistics("tgc", 1).gain is None and again.rig_norm.decision("tgc") == "pending"


def test_a_swap_keeps_a_rig_s_gain_curve_even_to_a_version_that_learned_its_scans_as_they_come():
    """Corrected, the rig's scans look like the domain a version knows best: after its labels the corrected scans
    still scored above the uncorrected ones with the version's statistics at every label count (bench adapt)."""
    store = store_with_version_1()
    normaliser = running_normaliser(load_version(store, 1, CPU))
    try:
        feed(normaliser, "tgc", [depth_gain_scan(i) for i in range(4)], distance=6.0)
        curve = normaliser.statistics("tgc", 1).gain
        assert normaliser.decision("tgc") == "keep" and curve is not None
        publish_version(store, 2, parent=1)  # the learned domain again, other weights: the curve carries over
        normaliser.prepare(load_version(store, 2, CPU))
        normaliser.follow(2)
        assert normaliser.statistics("tgc", 2).gain == curve
        publish_learned_version(store, "tgc-rig", [depth_gain_scan(100 + i) for i in range(32)],
                                [depth_gain_scan(200 + i) for i in range(16)], seed=3, parent=2)
        normaliser.prepare(load_version(store, 3, CPU))
        assert normaliser.statistics("tgc", 2).gain == curve  # until version 3 goes live
        normaliser.follow(3)
        served = normaliser.statistics("tgc", 3)
        assert normaliser.decision("tgc") == "keep" and served.gain == curve and served.source == "version"
    finally:
        normaliser.close()


def test_a_rig_adapted_before_versions_had_brightness_profiles_is_matched_by_the_first_version_that_has_them():
    """An installation upgraded from a learner that published no profiles: its adapted rigs get their gain curve
    when the first version with profiles goes live, not only after they start over."""
    store = store_with_version_1()
    old = load_version(store, 1, CPU)
    for reference in old.manifest.metrics[REFERENCE_KEY].values():
        reference.pop(PROFILE_KEY)  # as a version published before profiles existed
    normaliser = running_normaliser(old)
    try:
        feed(normaliser, "tgc", [depth_gain_scan(i) for i in range(6)], distance=6.0)
        assert normaliser.decision("tgc") == "adapt" and normaliser.statistics("tgc", 1).gain is None
        publish_version(store, 2, parent=1)
        normaliser.prepare(load_version(store, 2, CPU))
        assert normaliser.statistics("tgc", 1).source == "rig"  # until version 2 goes live
        normaliser.follow(2)
        served = normaliser.statistics("tgc", 2)
        assert normaliser.decision("tgc") == "keep" and served.gain is not None and served.gain.domain == DOMAIN
        assert served.source == "version" and served.gain_scans == 6
        publish_version(store, 3, parent=2)  # later versions carry the curve; nothing is matched again
        normaliser.prepare(load_version(store, 3, CPU))
        normaliser.follow(3)
        assert normaliser.statistics("tgc", 3).gain == served.gain
    finally:
        normaliser.close()


def corrected_moments(loaded: LoadedModel, scans: list[np.ndarray], served: Served) -> dict[str, torch.Tensor]:
    """The blend the rig should be served with: the version's statistics (one scan's weight) and those of its
    scans corrected by its gain curve, each measured alone."""
    twin = measuring_copy(loaded.module)
    raw = [torch.tensor(scan, dtype=torch.float32)[None, None] for scan in scans]
    parts = [measure(twin, pad_to_multiple(window_intensities(undo(x, served.gain)), 32)) for x in raw]
    return Moments.pooled([Moments.of_version(loaded.module, 1.0), Moments.pooled(parts)]).buffers()


def test_a_rig_with_another_gain_curve_and_another_probe_gets_its_own_statistics_on_corrected_scans(tmp_path):
    """A gain curve that brings a rig closer to a learned domain but not within the keep distance (the blur of
    another probe stays): its own statistics are measured on its corrected scans, kept across a restart and a
    swap; a rig that changes starts over without the curve; with the option at 0 it is adapted as it is."""
    store = store_with_version_1()
    loaded = load_version(store, 1, CPU)
    scans = [depth_gain_scan(i, blurred=True) for i in range(8)]
    plain = running_normaliser(loaded, gain_adapt_distance=0.0)
    try:
        feed(plain, "probe", scans)
        assert plain.decision("probe") == "adapt" and plain.statistics("probe", 1).gain is None
    finally:
        plain.close()
    normaliser = running_normaliser(loaded, state_dir=tmp_path)
    try:
        feed(normaliser, "probe", scans)
        served = normaliser.statistics("probe", 1)
        assert normaliser.decision("probe") == "adapt" and served.kind == "rig+gain"
        assert served.source == "rig" and served.scans == 8 and served.gain_scans == 4  # fitted when decided
        rise = served.gain.db("rows", SIZE[0])
        assert 18.0 < rise[-1] - rise[0] < 32.0, rise
        for name, tensor in corrected_moments(loaded, scans, served).items():
            assert torch.allclose(served.buffers[name], tensor, atol=1e-5), name
        [answer] = predict_batch(loaded, [scans[0]], statistics=[served])
        [uncorrected] = predict_batch(loaded, [scans[0]], statistics=[plain.statistics("probe", 1)])
        assert answer.normalisation is served and answer.confidence.tobytes() != uncorrected.confidence.tobytes()
        normaliser.save()
    finally:
        normaliser.close()

    restored = RigNormaliser(RigNormConfig(min_scans=8, patience=4, state_dir=tmp_path))
    restored.restore(loaded)
    restored.start()
    try:
        back = restored.statistics("probe", 1)
        assert back.kind == "rig+gain" and back.gain == served.gain
        assert all(torch.equal(back.buffers[k], served.buffers[k]) for k in served.buffers)
        publish_version(store, 2, parent=1)  # other weights: re-estimated from the reservoir, corrected
        v2 = load_version(store, 2, CPU)
        restored.prepare(v2)
        restored.follow(2)
        swapped = restored.statistics("probe", 2)
        assert swapped.kind == "rig+gain" and swapped.gain == served.gain
        for name, tensor in corrected_moments(v2, scans, swapped).items():
            assert torch.allclose(swapped.buffers[name], tensor, atol=1e-5), name
        # another rig behind the id: its first scans are measured as they come, not through the old curve
        others = [shifted_scan(i) for i in range(4)]
        feed(restored, "probe", others)
        assert restored.statistics("probe", 2).gain is None and restored.decision("probe") == "pending"
        twin = measuring_copy(v2.module)
        expected = Moments.pooled(measure(twin, pad_to_multiple(normalised([x]), 32)) for x in others)
        measured = restored._versions[2].rigs["probe"]
        assert measured.scans == 4 and all(torch.allclose(measured.mean[k], expected.mean[k]) for k in expected.mean)
    finally:
        restored.close()


async def test_a_rig_adapted_on_corrected_scans_is_told_both_on_both_apis(tmp_path, started):
    """Served through the server: the answer names the rig's own statistics and the curve its scans were
    corrected by (native and KServe), and the scans are counted as ``rig+gain`` on eager torch."""
    model_dir = tmp_path / "models"
    publish_version(WeightStore(model_dir), seed=1, parent=0)
    server = await started(server_config(model_dir, poll_interval_s=3600, rig_norm_min_scans=8))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        for i in range(10):
            await segment(stub, depth_gain_scan(100 + i, blurred=True), "probe")
        await asyncio.to_thread(server.rig_norm.settle, HANG_GUARD_S)
        served = server.rig_norm.statistics("probe", 1)
        assert server.rig_norm.decision("probe") == "adapt" and served.kind == "rig+gain"
        answer = await segment(stub, depth_gain_scan(7, blurred=True), "probe")
        assert answer.normalisation.source == "rig" and answer.normalisation.scans >= 8
        assert answer.normalisation.gain_domain == DOMAIN and answer.normalisation.gain_db >= 12.0
        [expected] = predict_batch(server.slot.current(), [depth_gain_scan(7, blurred=True)], statistics=[served])
        assert answer.mask.data == expected.mask.tobytes()
        reply = await kserve_infer(channel, depth_gain_scan(8, blurred=True), "probe")
        assert reply.parameters["normalisation"].string_param == "rig"
        assert reply.parameters["normalisation_gain_domain"].string_param == DOMAIN
        assert server.metrics.normalisation_scans.labels("rig+gain", "torch")._value.get() >= 2
        assert server.metrics.rig_gain_db.labels("probe")._value.get() >= 12.0


def test_negative_rig_distances_are_refused(tmp_path):
    for field in ("rig_keep_distance", "rig_gain_adapt_distance"):
        with pytest.raises(ValueError, match=field):
            server_config(tmp_path, **{field: -1.0})
