"""The weight store in an S3 bucket, against a real S3 server (SeaweedFS): no mocks, real 412s and 304s.

What a server, the learner and the operator rely on, as for the directory store: versions read back exactly,
two writers never share a number, half an upload is never seen, damage is refused, a follower's poll costs one
conditional GET, a signing key is enforced, and a wrong secret or a store that is down is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig, build_model
from weldstream.object_store import ObjectWeightStore, StoreUnavailable, default_cache_dir
from weldstream.s3_client import S3Location, StoreAccessDenied
from weldstream.stores import is_object_store, open_store
from weldstream.weight_store import WEIGHTS_FILE, WeightStore

KEY = b"0123456789abcdef-signing"


def small_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(32, 32, generator=gen), "b": torch.randn(32, generator=gen)}


def publish(store: ObjectWeightStore, seed: int, **details) -> int:
    return store.publish(small_state(seed), ModelConfig(), parent_version=0, **details).version


def pointer_of(store: ObjectWeightStore, version: int) -> dict:
    return json.loads(store.bucket.read(f"versions/{version:08d}.json"))


def record_calls(store: ObjectWeightStore) -> list[tuple[str, int]]:
    """Every S3 call the store's client makes from now on: (operation, HTTP status)."""
    calls: list[tuple[str, int]] = []
    store.bucket.client.meta.events.register(
        "after-call.s3.*", lambda http_response, model, **_: calls.append((model.name, http_response.status_code)))
    return calls


def test_published_versions_read_back_exactly(s3_store_url, tmp_path):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "writer")
    assert (store.versions(), store.latest(), store.served(), store.pinned()) == ([], None, None, None)
    model = build_model(ModelConfig())
    first = store.publish(model.state_dict(), ModelConfig(), parent_version=0, strategy="gem",
                          scores={"ut": {"miou": 0.5, "dice": 0.6, "samples": 10}})
    second = store.publish(small_state(2), ModelConfig(), parent_version=1)
    assert (first.version, second.version) == (1, 2)

    reader = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "reader")
    assert (reader.versions(), reader.latest(), reader.served()) == ([1, 2], 2, 2)
    loaded = reader.load(1)
    assert loaded.manifest == first == reader.manifest(1) and loaded.model_config == ModelConfig()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value)
    stored_weights = store.bucket.read(pointer_of(store, 1)["weights"])
    assert hashlib.sha256(stored_weights).hexdigest() == first.sha256 == pointer_of(store, 1)["sha256"]
    assert reader.load(2).manifest == second and torch.equal(reader.load(2).state_dict["w"], small_state(2)["w"])
    assert str(reader.root) == s3_store_url and s3_store_url in reader.versions_dir


def test_open_store_picks_the_store_by_location(s3_store_url, tmp_path):
    assert type(open_store(tmp_path / "models")) is WeightStore and not is_object_store(tmp_path)
    assert type(open_store(s3_store_url, cache_dir=tmp_path)) is ObjectWeightStore and is_object_store(s3_store_url)
    through_path = open_store(Path(s3_store_url), cache_dir=tmp_path)  # a URL that went through a Path setting
    assert isinstance(through_path, ObjectWeightStore) and through_path.root == s3_store_url
    assert default_cache_dir(S3Location.parse("s3://models/plant 7/unet")).name == "models_plant_7_unet"


def test_pin_holds_every_server_until_unpinned(s3_store_url, tmp_path):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    for seed in range(3):
        publish(store, seed)
    follower = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    store.pin(2)
    assert (follower.pinned(), follower.served()) == (2, 2)
    publish(store, 9)
    assert (follower.latest(), follower.served()) == (4, 2)
    with pytest.raises(ValueError, match="version 9 is not in"):
        store.pin(9)
    store.unpin()
    assert (follower.pinned(), follower.served()) == (None, 4)


def test_two_racing_writers_never_share_a_number(s3_store_url, tmp_path):
    writers = {name: ObjectWeightStore(s3_store_url, cache_dir=tmp_path / name) for name in ("learner", "consolidate")}
    rounds, errors = threading.Barrier(2), []

    def write(name: str) -> None:
        try:
            for i in range(5):
                rounds.wait()  # both start each publish at once: mostly both aim at one number, one gets 412
                publish(writers[name], i, strategy=f"{name}-{i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "reader")
    assert reader.versions() == list(range(1, 11)) and reader.latest() == 10
    strategies = sorted(reader.load(v).manifest.strategy for v in range(1, 11))
    assert strategies == sorted(f"{name}-{i}" for name in writers for i in range(5))
    assert all(reader.manifest(v).version == v for v in range(1, 11))
    with pytest.raises(FileExistsError, match="immutable"):
        publish(reader, 0, version=4)


def test_a_publisher_that_loses_the_race_for_a_number_takes_the_next(s3_store_url, tmp_path, monkeypatch):
    """Its pointer gets 412, so it writes its manifest (and signature) again for the next number."""
    store = ObjectWeightStore(s3_store_url, signing_key=KEY, cache_dir=tmp_path)
    publish(store, 0)
    monkeypatch.setattr(store, "latest", lambda: None)  # its look misses version 1, just written by the other writer
    calls = record_calls(store)
    assert publish(store, 1, strategy="consolidate-ewc") == 2 and ("PutObject", 412) in calls
    assert (store.manifest(1).strategy, store.load(2).manifest.strategy) == ("", "consolidate-ewc")
    assert sorted(name.rsplit("/", 1)[1] for name in store.bucket.names("blobs/")) == [
        "manifest-00000001.json", "manifest-00000001.sig", "manifest-00000002.json", "manifest-00000002.sig",
        WEIGHTS_FILE, WEIGHTS_FILE]  # the loser's manifest for 1 is removed


def test_an_explicit_version_taken_meanwhile_is_refused_and_its_upload_removed(s3_store_url, tmp_path, monkeypatch):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(store, 0, version=3)
    real_size = store.bucket.size  # the pre-check misses version 3, as if it were written just after it
    monkeypatch.setattr(store.bucket, "size", lambda name: None if name.startswith("versions/") else real_size(name))
    with pytest.raises(FileExistsError, match="another writer"):  # the pointer's If-None-Match got 412
        publish(store, 1, version=3)
    assert len(store.bucket.names("blobs/")) == 2  # the first version's weights and manifest only
    assert store.manifest(3).sha256 == hashlib.sha256(store.bucket.read(pointer_of(store, 3)["weights"])).hexdigest()


def test_a_cut_upload_is_never_seen(s3_store_url, tmp_path, monkeypatch):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(store, 0)
    real_put = store.bucket.put

    def put(name: str, body: bytes, **conditions) -> str:
        if name.startswith("versions/"):
            raise ConnectionResetError("writer killed before its pointer")
        return real_put(name, body, **conditions)

    monkeypatch.setattr(store.bucket, "put", put)
    with pytest.raises(ConnectionResetError):
        publish(store, 1)
    monkeypatch.setattr(store.bucket, "put", real_put)
    store.bucket.put("blobs/by-hand/weights.safetensors", b"not even safetensors")
    store.bucket.put("blobs/by-hand/manifest-00000005.json", b"{}")
    follower = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    assert len(store.bucket.names("blobs/")) == 6  # two uploads of ours, one by hand: all there, none seen
    assert (follower.versions(), follower.latest(), follower.served()) == ([1], 1, 1)
    with pytest.raises(FileNotFoundError):
        follower.load(2)
    assert publish(store, 2) == 2


def test_damage_in_the_bucket_is_refused(s3_store_url, tmp_path):
    """A flipped byte raises CorruptVersion; a deleted weights object FileNotFoundError (as a missing file does
    in the directory store)."""
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "writer")
    for seed in range(2):
        publish(store, seed)
    weights = pointer_of(store, 1)["weights"]
    damaged = bytearray(store.bucket.read(weights))
    damaged[len(damaged) // 2] ^= 0xFF
    store.bucket.put(weights, bytes(damaged))
    reader = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "reader")
    with pytest.raises(CorruptVersion, match="does not match"):
        reader.load(1)
    assert list((tmp_path / "reader").iterdir()) == []  # nothing damaged is cached
    store.bucket.client.delete_object(Bucket=store.bucket.location.bucket,
                                      Key=store.bucket.location.key(pointer_of(store, 2)["weights"]))
    with pytest.raises(FileNotFoundError, match="weights.safetensors is missing"):
        reader.load(2)


def test_a_damaged_cached_copy_is_downloaded_again(s3_store_url, tmp_path):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(store, 7)
    store.load(1)
    calls = record_calls(store)
    assert torch.equal(store.load(1).state_dict["w"], small_state(7)["w"])
    assert calls == [("GetObject", 200)]  # the pointer only: the weights came from the cache
    cached = next(tmp_path.glob(f"*/versions/00000001/{WEIGHTS_FILE}"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    calls.clear()
    assert torch.equal(store.load(1).state_dict["w"], small_state(7)["w"])
    assert calls.count(("GetObject", 200)) == 3  # pointer, weights, manifest: downloaded again
    repaired = next(tmp_path.glob(f"*/versions/00000001/{WEIGHTS_FILE}")).read_bytes()
    assert hashlib.sha256(repaired).hexdigest() == store.manifest(1).sha256


def test_the_cache_keeps_the_most_recently_loaded_versions(s3_store_url, tmp_path):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path, cache_versions=2)
    for seed in range(3):
        publish(store, seed)
    for version in (1, 2, 1, 3):
        store.load(version)
    assert sorted(p.name[:8] for p in tmp_path.iterdir()) == ["00000001", "00000003"]


def test_followers_poll_the_head_with_a_conditional_get(s3_store_url, tmp_path):
    writer = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(writer, 0)
    follower = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    assert follower.served() == 1
    calls = record_calls(follower)
    assert [follower.served() for _ in range(5)] == [1] * 5
    assert calls == [("GetObject", 304)] * 5  # no body, no LIST
    publish(writer, 1)
    calls.clear()
    assert (follower.served(), follower.served()) == (2, 2) and calls == [("GetObject", 200), ("GetObject", 304)]


def test_the_head_is_advisory(s3_store_url, tmp_path, monkeypatch):
    """Missing, latest() lists the pointers; lagging behind a pointer (a writer died in between), the next
    publish writes it again; lost with a pin in it, only the pin is lost."""
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(store, 0)
    real_update = store._head.update

    def update(*args) -> None:
        raise StoreUnavailable("the writer died after the pointer")

    monkeypatch.setattr(store._head, "update", update)
    assert publish(store, 1) == 2  # published: the pointer exists, the head says 1
    monkeypatch.setattr(store._head, "update", real_update)
    follower = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    assert (follower.versions(), follower.served()) == ([1, 2], 1)
    assert publish(store, 2) == 3 and follower.served() == 3
    store.bucket.client.delete_object(Bucket=store.bucket.location.bucket, Key=store.bucket.location.key("head.json"))
    assert (follower.served(), follower.latest(), follower.pinned()) == (3, 3, None)
    store.pin(2)
    assert (follower.served(), follower.latest()) == (2, 3)


def test_a_signing_key_refuses_unsigned_and_foreign_versions(s3_store_url, tmp_path):
    signed = ObjectWeightStore(s3_store_url, signing_key=KEY, cache_dir=tmp_path / "signed")
    publish(signed, 0)
    publish(ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "unsigned"), 1)
    reader = ObjectWeightStore(s3_store_url, signing_key=KEY, cache_dir=tmp_path / "reader")
    assert torch.equal(reader.load(1).state_dict["w"], small_state(0)["w"]) and reader.manifest(1).version == 1
    for read in (reader.manifest, reader.load):
        with pytest.raises(CorruptVersion, match="unsigned"):
            read(2)
    other = ObjectWeightStore(s3_store_url, signing_key=b"another-key-of-16-bytes", cache_dir=tmp_path / "other")
    for read in (other.manifest, other.load):
        with pytest.raises(CorruptVersion, match="signature does not match"):
            read(1)


def test_a_wrong_secret_is_a_clear_error(s3_store_url, seaweed_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    with pytest.raises(StoreAccessDenied) as raised:
        store.served()
    message = str(raised.value)
    assert f"access denied for {s3_store_url}" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "not-the-secret" not in message and seaweed_s3.secret_key not in message
    assert isinstance(raised.value, OSError) and raised.value.__suppress_context__


def test_a_store_that_is_down_is_unavailable_then_comes_back(s3_store_url, seaweed_s3, tmp_path):
    store = ObjectWeightStore(s3_store_url, cache_dir=tmp_path)
    publish(store, 3)
    seaweed_s3.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"unreachable at {seaweed_s3.endpoint}") as raised:
            store.served()
        assert time.monotonic() - started < 15 and isinstance(raised.value, OSError)
        with pytest.raises(StoreUnavailable):
            store.load(1)
    finally:
        seaweed_s3.start()
    assert (store.served(), store.versions()) == (1, [1])
    assert torch.equal(store.load(1).state_dict["w"], small_state(3)["w"])
