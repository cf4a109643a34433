"""The learner's training recipe: crops at native size, augmentation, rehearsal, the compute budget."""

from __future__ import annotations

import torch

from weldstream.learner.augment import Augmentation, augment
from weldstream.learner.crops import cut_crop, defect_pixels
from weldstream.learner.trainer import ContinualLearner, auto_crop_size
from weldstream.learner.window import TrainingWindow
from weldstream.model import ModelConfig, build_model
from weldstream.replay import ReferenceGradients, ReplayMemory, StepConfig, gem_step

from .conftest import learner_config, scan_with_a_defect

CPU = torch.device("cpu")


def test_augmentation_flips_image_and_mask_together_and_keeps_classes():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (16, 24, 24), generator=gen, dtype=torch.int64).to(torch.uint8)
    x = y[:, None].float() * 10  # each class has its own intensity
    xa, ya = augment(x, y, torch.Generator().manual_seed(1), Augmentation(flip=0.5, noise=0.0))
    flipped = 0
    for i in range(16):
        assert torch.equal(ya[i], y[i]) or torch.equal(ya[i], y[i].flip(-1))
        flipped += int(not torch.equal(ya[i], y[i]))
        values = {k: xa[i, 0][ya[i] == k] for k in range(5) if bool((ya[i] == k).any())}
        # gain and offset are the same for a whole scan, so one class keeps one intensity, in order
        for v in values.values():
            assert torch.allclose(v, v[0].expand_as(v))
        present = sorted(values)
        assert all(values[a][0] < values[b][0] for a, b in zip(present, present[1:], strict=False))
    assert 3 <= flipped <= 13  # about half


def test_crops_are_mostly_centred_on_defects_and_cut_at_native_size():
    sample = scan_with_a_defect(3, size=128)
    defects = defect_pixels(sample.y)
    gen = torch.Generator().manual_seed(0)
    hits = {}
    for share in (0.7, 0.0):
        crops = [cut_crop(sample.x, sample.y, defects, 32, torch.rand(1, generator=gen).item() < share, gen)
                 for _ in range(200)]
        assert all(x.shape == (1, 32, 32) and y.shape == (32, 32) for x, y in crops)
        hits[share] = sum(bool((y > 0).any()) for _, y in crops) / len(crops)
    assert hits[0.7] >= 0.65 and hits[0.0] < 0.3


def test_a_crop_keeps_its_mask_aligned_even_from_a_smaller_scan():
    x = torch.arange(40 * 40, dtype=torch.float32).view(1, 40, 40)
    y = (torch.arange(40 * 40).view(40, 40) % 5).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    cx, cy = cut_crop(x, y, defect_pixels(y), 64, True, gen)
    assert cx.shape == (1, 64, 64) and cy.shape == (64, 64)
    # the padded mask is the padded image's own class rule: value mod 5
    assert torch.equal((cx[0].long() % 5).to(torch.uint8), cy)


def test_the_crop_size_follows_the_device_and_never_exceeds_the_scan():
    assert auto_crop_size(CPU, 128, 128) == 96
    assert auto_crop_size(CPU, 64, 200) == 64
    assert auto_crop_size(torch.device("cuda"), 512, 512) == 256
    assert auto_crop_size(CPU, 40, 40) == 32


def test_the_window_is_bounded_by_scans_and_bytes():
    window = TrainingWindow(capacity=3, max_bytes=10**9)
    for i in range(5):
        s = scan_with_a_defect(i)
        window.add(s.scan_id, s.x, s.y, s.domain)
    assert window.scan_ids() == ["ut-2", "ut-3", "ut-4"]
    small = TrainingWindow(capacity=100, max_bytes=2 * (64 * 64 * 5))
    for i in range(5):
        s = scan_with_a_defect(i)
        small.add(s.scan_id, s.x, s.y, s.domain)
    assert len(small) == 2 and small.nbytes <= 2 * (64 * 64 * 5)


def test_rehearsal_batches_hold_memory_scans_of_every_past_domain():
    model = build_model(ModelConfig(), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    memory = ReplayMemory(8, seed=0)
    past = ["ut-a", "ut-b", "xray-c"]
    for index, domain in enumerate(past):
        memory.add(torch.full((8, 1, 32, 32), float(index + 10)), torch.zeros(8, 32, 32, dtype=torch.uint8), domain)
    seen: list[set[float]] = []

    def record(x, y):
        seen.append({float(v) for v in x[:, 0, 0, 0] if v >= 10})
        return x, y

    cfg = StepConfig(strategy="replay-gem", rehearsal=4, memory_batch=2)
    current = (torch.zeros(4, 1, 32, 32), torch.zeros(4, 32, 32, dtype=torch.uint8))
    references = ReferenceGradients()
    for _ in range(6):
        stats = gem_step(model, optimizer, current, memory, cfg, "new", references, transform=record)
        assert stats.rehearsed == 4 and stats.past_domains == 3 and stats.guarded == 0  # nothing forgotten yet
    assert set().union(*seen) == {10.0, 11.0, 12.0}  # every past domain rehearsed within a few steps
    naive = StepConfig(strategy="naive", rehearsal=4)
    seen.clear()
    assert gem_step(model, optimizer, current, memory, naive, "new", references, transform=record).rehearsed == 0
    assert seen == [set()]


def test_steps_follow_the_budget_the_scans_earned_and_stop_when_it_is_spent(tmp_path):
    cfg = learner_config("unused:9092", tmp_path, crop_size=32, batch_size=2, max_steps_per_scan=2)
    learner = ContinualLearner(cfg, CPU)
    assert not learner.has_work()
    for i in range(3):
        learner.add(scan_with_a_defect(i))
    assert learner.has_work()
    assert len(learner.train_for(max_steps=100, max_seconds=60)) == 6
    assert learner.remaining() == 0 and not learner.has_work()
    assert learner.train_for(max_steps=100, max_seconds=60) == []
    learner.add(scan_with_a_defect(9))
    assert len(learner.train_for(max_steps=1, max_seconds=60)) == 1  # a chunk stops at its own limit
    assert len(learner.train_for(max_steps=100, max_seconds=60)) == 1
    assert learner.steps == 8 and len(learner.window) == 4 and learner.memory.per_domain() == {"ut": 4}


def test_the_learning_rate_warms_up_and_anneals_as_the_budget_runs_out(tmp_path):
    cfg = learner_config("unused:9092", tmp_path, learning_rate=1e-3, warmup_steps=10, decay_steps=100,
                         final_lr_share=0.1)
    learner = ContinualLearner(cfg, CPU)
    learner.budget = 1000
    assert learner.learning_rate() == 1e-4  # first step of the warm-up
    learner.steps = 500
    assert learner.learning_rate() == 1e-3
    learner.steps = 950
    assert abs(learner.learning_rate() - 5e-4) < 1e-12
    learner.steps = 1000
    assert abs(learner.learning_rate() - 1e-4) < 1e-12


def test_a_paused_stream_settles_once_and_new_scans_raise_the_budget_again(tmp_path):
    cfg = learner_config("unused:9092", tmp_path, crop_size=32, max_steps_per_scan=100, decay_steps=50,
                         settle_after_s=10.0)
    learner = ContinualLearner(cfg, CPU)
    for i in range(3):
        learner.add(scan_with_a_defect(i))
    learner.absorb()
    arrived = learner.last_arrival
    assert learner.remaining() == 300 and learner.learning_rate() == cfg.learning_rate / cfg.warmup_steps
    assert not learner.settle_if_paused(now=arrived + 9.9)  # quiet, but not for long enough
    assert learner.remaining() == 300
    assert learner.settle_if_paused(now=arrived + 10.0)
    assert learner.remaining() == 50  # the anneal starts now: the rate is already below its peak
    learner.steps = 30  # past the warm-up
    assert abs(learner.learning_rate() - cfg.learning_rate * 20 / 50) < 1e-12
    assert not learner.settle_if_paused(now=arrived + 60)  # once per pause
    assert learner.remaining() == 20
    learner.add(scan_with_a_defect(7))
    learner.absorb()
    assert learner.remaining() == 120 and learner.learning_rate() == cfg.learning_rate
    assert learner.settle_if_paused(now=learner.last_arrival + 10) and learner.remaining() == 50


def test_a_learner_told_never_to_settle_keeps_its_budget(tmp_path):
    cfg = learner_config("unused:9092", tmp_path, crop_size=32, max_steps_per_scan=100, decay_steps=50,
                         settle_after_s=0)
    learner = ContinualLearner(cfg, CPU)
    learner.add(scan_with_a_defect(0))
    learner.absorb()
    assert not learner.settle_if_paused(now=learner.last_arrival + 1e6) and learner.remaining() == 100


def test_a_checkpoint_restores_window_memory_and_the_next_step(tmp_path):
    cfg = learner_config("unused:9092", tmp_path, crop_size=32, batch_size=2, max_steps_per_scan=3)
    learner = ContinualLearner(cfg, CPU)
    for i in range(4):
        learner.add(scan_with_a_defect(i, domain="ut" if i < 2 else "xray"))
    learner.train_for(max_steps=5, max_seconds=60)
    state = learner.state_dict()
    restored = ContinualLearner(cfg, CPU)
    restored.load_state_dict(state)
    assert restored.window.scan_ids() == learner.window.scan_ids()
    assert restored.memory.per_domain() == learner.memory.per_domain() == {"ut": 2, "xray": 2}
    assert (restored.steps, restored.remaining()) == (5, 7)
    assert restored.references.probe_state() == learner.references.probe_state()
    assert abs(restored.step().loss - learner.step().loss) < 1e-5
