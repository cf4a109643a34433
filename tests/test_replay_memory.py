"""ReplayMemory: per-domain budgets, reservoir uniformity, checkpoint round trip, input checks."""

from __future__ import annotations

import io

import pytest
import torch

from weldstream.replay.memory import ReplayMemory


def scans(ids: range | list[int], size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 1, size, size) filled with each scan's id, y (n, size, size) = id % 5."""
    ids_t = torch.tensor(list(ids), dtype=torch.float32)
    x = ids_t[:, None, None, None].expand(-1, 1, size, size).clone()
    y = (ids_t.long() % 5)[:, None, None].expand(-1, size, size).to(torch.uint8)
    return x, y


def stored_ids(memory: ReplayMemory, domain: str) -> list[int]:
    x, _ = memory.sample(10**6, domain=domain)
    return sorted(int(v) for v in x[:, 0, 0, 0])


def test_per_domain_budget_is_exact_across_many_adds_and_new_domains() -> None:
    memory = ReplayMemory(per_domain_capacity=7, seed=1)
    gen = torch.Generator().manual_seed(0)
    shown: dict[str, int] = {}
    next_id = 0
    for step in range(60):
        domain = f"rig-{int(torch.randint(min(1 + step // 10, 5), (1,), generator=gen))}"
        n = int(torch.randint(1, 6, (1,), generator=gen))
        memory.add(*scans(range(next_id, next_id + n)), domain)
        next_id += n
        shown[domain] = shown.get(domain, 0) + n
        assert memory.seen() == shown
        assert memory.per_domain() == {d: min(7, s) for d, s in shown.items()}
        assert len(memory) == sum(min(7, s) for s in shown.values())
    assert memory.domains() == list(shown)  # first-seen order
    assert len(memory.domains()) == 5
    for d in memory.domains():
        assert len(set(stored_ids(memory, d))) == memory.per_domain()[d]  # no duplicates


def test_domains_do_not_mix() -> None:
    memory = ReplayMemory(per_domain_capacity=3)
    memory.add(*scans(range(0, 10)), "a")
    memory.add(*scans(range(100, 110)), "b")
    assert all(i < 10 for i in stored_ids(memory, "a"))
    assert all(i >= 100 for i in stored_ids(memory, "b"))
    x, _ = memory.sample(100, domain=["a", "b"])
    assert x.shape[0] == 6
    x, y = scans(range(200, 204))
    memory.add(x, y.long(), "c")  # int64 masks are accepted and stored as uint8
    assert memory.sample(4, domain="c")[1].dtype == torch.uint8


def test_reservoir_is_uniform_over_the_stream() -> None:
    """Each of 40 scans should be kept with probability 8/40 = 0.2, batch adds included."""
    stream, capacity, trials = 40, 8, 500
    counts = torch.zeros(stream)
    for trial in range(trials):
        memory = ReplayMemory(capacity, seed=trial)
        for start in range(0, stream, 5):  # batches of 5 also exercise slot collisions within a batch
            memory.add(*scans(range(start, start + 5)), "a")
        counts[stored_ids(memory, "a")] += 1
    expected = trials * capacity / stream  # 100
    std = (trials * 0.2 * 0.8) ** 0.5  # ~8.9
    assert counts.sum() == trials * capacity
    assert (counts - expected).abs().max() < 4.5 * std
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80  # 39 degrees of freedom; p(chi2 > 80) < 1e-4
    # Early and late halves of the stream are kept equally often (no recency or primacy bias).
    assert abs(float(counts[:20].sum() - counts[20:].sum())) < 0.1 * counts.sum()


def test_sample_without_replacement_and_up_to_available() -> None:
    memory = ReplayMemory(per_domain_capacity=5, seed=3)
    memory.add(*scans(range(5)), "a")
    memory.add(*scans(range(10, 13)), "b")
    x, y = memory.sample(6)
    ids = [int(v) for v in x[:, 0, 0, 0]]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert y.dtype == torch.uint8 and y.shape == (6, 4, 4)
    assert memory.sample(50)[0].shape[0] == 8
    assert memory.sample(50, domain="b")[0].shape[0] == 3
    assert memory.sample(0)[0].shape == (0, 1, 4, 4)
    with pytest.raises(ValueError):
        memory.sample(2, domain="nope")


def test_state_dict_round_trip_gives_identical_samples() -> None:
    memory = ReplayMemory(per_domain_capacity=6, seed=5)
    for i in range(8):
        memory.add(*scans(range(10 * i, 10 * i + 4)), f"d{i % 3}")
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    restored = ReplayMemory.from_state_dict(torch.load(buffer, weights_only=False), device="cpu")

    assert restored.domains() == memory.domains()
    assert restored.per_domain() == memory.per_domain()
    assert restored.seen() == memory.seen()
    for n, domain in [(4, None), (3, "d1"), (100, None)]:
        a, b = memory.sample(n, domain), restored.sample(n, domain)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The reservoir's future choices match too (the RNG state travelled with the tensors).
    memory.add(*scans(range(500, 520)), "d0")
    restored.add(*scans(range(500, 520)), "d0")
    assert stored_ids(memory, "d0") == stored_ids(restored, "d0")
    a, b = memory.sample(10), restored.sample(10)
    assert torch.equal(a[0], b[0])


def test_load_state_dict_into_an_existing_memory_with_a_device_argument() -> None:
    memory = ReplayMemory(per_domain_capacity=2, seed=0)
    memory.add(*scans(range(4)), "a")
    other = ReplayMemory(per_domain_capacity=9)
    other.load_state_dict(memory.state_dict(), device="cpu")
    assert other.per_domain_capacity == 2 and other.per_domain() == {"a": 2}
    assert other.device == torch.device("cpu")
    empty = ReplayMemory(3)
    fresh = ReplayMemory.from_state_dict(empty.state_dict())
    assert len(fresh) == 0 and fresh.domains() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_lives_on_and_moves_between_devices() -> None:
    memory = ReplayMemory(per_domain_capacity=4, device="cuda")
    memory.add(*scans(range(6)), "a")
    assert memory.sample(2)[0].device.type == "cuda"
    on_cpu = ReplayMemory.from_state_dict(memory.state_dict(), device="cpu")
    assert on_cpu.sample(2)[0].device.type == "cpu"


def test_mismatched_or_malformed_input_raises() -> None:
    memory = ReplayMemory(per_domain_capacity=4)
    memory.add(*scans(range(2), size=4), "a")
    with pytest.raises(ValueError, match="must be"):
        memory.add(*scans(range(2), size=6), "a")  # other H, W
    with pytest.raises(ValueError, match="must be"):
        memory.add(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8), "b")  # other C
    with pytest.raises(ValueError):
        memory.add(torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4, dtype=torch.uint8), "a")  # batch
    with pytest.raises(ValueError):
        memory.add(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8), "a")  # no channel dim
    with pytest.raises(ValueError):
        memory.add(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4), "a")  # float mask
    with pytest.raises(ValueError):
        memory.add(*scans(range(1)), "")
    with pytest.raises(ValueError):
        ReplayMemory(per_domain_capacity=0)
    with pytest.raises(ValueError):
        ReplayMemory(2).sample(1)  # nothing added yet
    assert memory.per_domain() == {"a": 2}  # failed adds changed nothing
    memory.add(torch.zeros(0, 1, 4, 4), torch.zeros(0, 4, 4, dtype=torch.uint8), "empty")
    assert memory.domains() == ["a"]  # an empty batch does not create a domain
