"""Hostile Kafka payloads: a named list that travels through a real broker to the learner, and a
property-based fuzz (hypothesis) of decode_record, the learner's only decoder."""

from __future__ import annotations

import numpy as np

from weldstream.codec import array_to_tensor
from weldstream.dev.rig import labeled_scan
from weldstream.errors import InvalidInput
from weldstream.learner.records import decode_record
from weldstream.simulator import generate_scan
from weldstream.v1 import stream_pb2, tensor_pb2

DOMAIN = "ut-pe100-5mhz"


def hostile_records(big_bytes: int) -> dict[str, bytes]:
    """key -> value of records the learner must dead-letter (with a reason) without stopping."""

    def scan(seed: int) -> stream_pb2.LabeledScan:
        return labeled_scan(generate_scan(DOMAIN, seed, (32, 32)), "hostile-rig")

    mismatch = scan(1)
    mismatch.mask.CopyFrom(array_to_tensor(np.zeros((16, 32), np.uint8)))
    unknown_dtype = scan(2)
    unknown_dtype.image.tensor.dtype = 99
    huge_dims = scan(3)
    huge_dims.image.tensor.shape[:] = [10**6, 10**6]
    nan_image = scan(4)
    nan = np.full((32, 32), np.nan, np.float32)
    nan_image.image.CopyFrom(tensor_pb2.Image(tensor=array_to_tensor(nan)))
    big = scan(5)
    big.image.tensor.data = b"\0" * big_bytes  # its shape says 32 x 32
    rng = np.random.default_rng(9)
    return {
        "hostile-random-bytes": rng.bytes(4096),
        "hostile-other-proto": stream_pb2.ModelAnnouncement(model_name="weld-seg", version=7).SerializeToString(),
        "hostile-mask-size": mismatch.SerializeToString(),
        "hostile-unknown-dtype": unknown_dtype.SerializeToString(),
        "hostile-dims-1e6": huge_dims.SerializeToString(),
        "hostile-nan-image": nan_image.SerializeToString(),
        f"hostile-{big_bytes >> 20}MiB": big.SerializeToString(),
        "hostile-empty": b"",
    }


def fuzz_decoder(examples: int, seed: int = 0) -> dict[str, object]:
    """Feed decode_record `examples` generated payloads (raw bytes and mutated LabeledScans); every one
    must decode or raise InvalidInput naming a field. Returns counts and the first few surprises."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis import strategies as st

    counts = {"examples": 0, "decoded": 0, "refused": 0, "surprises": 0}
    surprises: list[str] = []
    # small dims, any int64, and powers of two (whose products wrap around in fixed-width arithmetic)
    dim = st.one_of(st.integers(-2, 64), st.integers(-(2**63), 2**63 - 1), st.integers(0, 62).map(lambda e: 2**e))
    dims = st.lists(dim, min_size=0, max_size=4)
    mutated = st.builds(
        _mutated_scan,
        image_shape=dims, image_dtype=st.integers(min_value=-1, max_value=5), image_len=st.integers(0, 5000),
        mask_shape=dims, mask_len=st.integers(0, 5000), domain=st.text(max_size=40), fill=st.floats(),
        scan_id=st.text(max_size=8),
    )
    payloads = st.one_of(st.binary(max_size=2048), mutated)

    @fixed_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(payloads)
    def check(payload: bytes) -> None:
        counts["examples"] += 1
        try:
            decode_record(payload, num_classes=5, in_channels=1, max_side=4096)
            counts["decoded"] += 1
        except InvalidInput:
            counts["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - what the fuzz is looking for
            counts["surprises"] += 1
            if len(surprises) < 5:
                surprises.append(f"{type(exc).__name__}: {exc}"[:200])

    check()
    return {**counts, "first_surprises": surprises}


def _mutated_scan(image_shape: list[int], image_dtype: int, image_len: int, mask_shape: list[int], mask_len: int,
                  domain: str, fill: float, scan_id: str) -> bytes:
    with np.errstate(over="ignore"):  # floats beyond float32 become inf: hostile too
        pixels = np.full(image_len, fill, np.float32).tobytes()
    message = stream_pb2.LabeledScan(
        scan_id=scan_id, domain=domain,
        image=tensor_pb2.Image(tensor=tensor_pb2.Tensor(dtype=image_dtype, shape=image_shape,
                                                        data=pixels)),
        mask=tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=mask_shape,
                               data=bytes(mask_len)))
    return message.SerializeToString()
