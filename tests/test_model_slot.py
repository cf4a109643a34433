"""The model slot: forward-only swaps, leases that keep a batch's module intact, and reuse of the retired module."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig, build_model
from weldstream.server.loader import fresh_model, load_version, loader_thread
from weldstream.server.model_slot import LoadedModel, ModelSlot
from weldstream.weight_store import WeightStore

CPU = torch.device("cpu")
SMALL = ModelConfig(encoder_depth=3, decoder_channels=(16, 8, 8))


def _model(version: int) -> LoadedModel:
    fresh = fresh_model(SMALL, CPU)
    return LoadedModel(version, fresh.module, SMALL, CPU, untrained=version == 0)


def test_swap_only_moves_forward_and_retires_the_old_model() -> None:
    slot = ModelSlot(_model(1))
    newer, older = _model(2), _model(1)
    assert slot.swap(newer)
    assert not slot.swap(older)
    assert slot.current() is newer
    spare = slot.take_spare(timeout_s=0.1)
    assert spare is not None and spare.version == 1
    assert slot.take_spare(timeout_s=0.1) is None  # taken: it belongs to the caller now


def test_an_untrained_version_zero_is_replaced_but_a_trained_version_only_by_a_newer_one() -> None:
    slot = ModelSlot(_model(0))
    assert slot.swap(_model(1))
    assert not slot.swap(_model(1))
    assert slot.current().version == 1


def test_a_retired_module_is_not_handed_out_while_a_batch_still_runs_on_it() -> None:
    slot = ModelSlot(_model(1))
    taken: list[LoadedModel | None] = []
    with slot.lease() as batch_model:
        assert batch_model.version == 1
        slot.swap(_model(2))
        assert slot.take_spare(timeout_s=0.05) is None  # the batch on version 1 has not finished
        waiter = threading.Thread(target=lambda: taken.append(slot.take_spare(timeout_s=5)))
        waiter.start()
        time.sleep(0.05)
        assert not taken  # still waiting for the batch
    waiter.join(5)
    assert taken and taken[0] is not None and taken[0].module is batch_model.module


def test_a_spare_given_back_is_offered_again() -> None:
    spare = _model(0)
    slot = ModelSlot(_model(1), spare)
    taken = slot.take_spare(timeout_s=0.1)
    assert taken is spare
    slot.give_back(taken)
    assert slot.take_spare(timeout_s=0.1) is spare


def test_a_spare_is_not_given_back_while_the_slot_has_one_or_serves_it() -> None:
    live, spare, other = _model(1), _model(0), _model(0)
    slot = ModelSlot(live, spare)
    slot.give_back(other)  # the slot already has a spare
    slot.give_back(live)  # the live model can never be a spare
    assert slot.take_spare(timeout_s=0.1) is spare
    slot.give_back(live)
    assert slot.take_spare(timeout_s=0.1) is None


def test_loading_into_a_spare_copies_weights_without_building_a_module(tmp_path) -> None:
    store = WeightStore(tmp_path)
    trained = build_model(SMALL, seed=7)
    store.publish(trained.state_dict(), SMALL, parent_version=0)
    spare = _model(0)
    loaded = load_version(store, 1, CPU, reuse=spare)
    assert loaded.module is spare.module
    assert loaded.version == 1 and not loaded.untrained
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[name], tensor, rtol=0, atol=0)
    convolution = next(p for p in loaded.module.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    assert convolution.is_contiguous(memory_format=torch.channels_last)  # the layout survives the copy
    assert not loaded.module.training


def test_a_spare_of_another_architecture_is_not_reused(tmp_path) -> None:
    store = WeightStore(tmp_path)
    store.publish(build_model(ModelConfig(), seed=1).state_dict(), ModelConfig(), parent_version=0)
    spare = _model(0)
    loaded = load_version(store, 1, CPU, reuse=spare)
    assert loaded.module is not spare.module
    assert loaded.config == ModelConfig()


def test_weights_that_produce_nan_are_refused(tmp_path) -> None:
    store = WeightStore(tmp_path)
    state = build_model(SMALL, seed=1).state_dict()
    first_conv = next(name for name, tensor in state.items() if tensor.ndim == 4)
    state[first_conv] = torch.full_like(state[first_conv], float("nan"))
    store.publish(state, SMALL, parent_version=0)
    with pytest.raises(CorruptVersion, match="non-finite"):
        load_version(store, 1, CPU, reuse=_model(0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_the_loader_thread_runs_at_the_lowest_priority() -> None:
    loader = loader_thread()
    try:
        niceness = loader.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        loader.shutdown()
    assert niceness == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # the caller is untouched
