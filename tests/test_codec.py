import numpy as np
import pytest

from weldstream.codec import (
    array_to_tensor,
    check_scan,
    decode_file,
    decode_image,
    encode_png,
    encode_tiff,
    tensor_to_array,
)
from weldstream.errors import InvalidInput
from weldstream.v1 import tensor_pb2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(7, 13), (1, 9, 5), (3, 4, 6)])
def test_tensor_round_trip_is_exact(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * 1000).astype(dtype)
    back = tensor_to_array(array_to_tensor(array), "t")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_is_sent_little_endian():
    array = np.arange(6, dtype=">u2").reshape(2, 3)
    np.testing.assert_array_equal(tensor_to_array(array_to_tensor(array), "t"), array)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_keeps_bit_depth(dtype):
    array = (np.arange(301 * 517) % (256 if dtype == np.uint8 else 4096)).astype(dtype).reshape(301, 517)
    back = decode_file(encode_png(array), "", "img")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


def test_float_tiff_round_trip():
    array = np.random.default_rng(1).normal(size=(33, 65)).astype(np.float32)
    np.testing.assert_array_equal(decode_file(encode_tiff(array), "tiff", "img"), array)


def test_byte_length_mismatch_names_the_field():
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.UINT16, shape=[4, 4], data=b"\0" * 31)
    with pytest.raises(InvalidInput) as err:
        tensor_to_array(tensor, "image.tensor")
    assert err.value.field == "image.tensor.data"
    assert "needs 32" in str(err.value)


@pytest.mark.parametrize("shape", [[], [0, 5], [5, -1]])
def test_empty_or_negative_dims_are_refused(shape):
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=shape, data=b"")
    with pytest.raises(InvalidInput) as err:
        tensor_to_array(tensor, "image.tensor")
    assert err.value.field == "image.tensor.shape"


def test_unspecified_dtype_is_refused():
    with pytest.raises(InvalidInput, match="dtype"):
        tensor_to_array(tensor_pb2.Tensor(shape=[1, 1], data=b"\0"), "m")


def test_undecodable_image_names_the_field():
    image = tensor_pb2.Image(encoded=tensor_pb2.EncodedImage(format="png", data=b"not a png at all"))
    with pytest.raises(InvalidInput) as err:
        decode_image(image, "image")
    assert err.value.field == "image.encoded.data"


def test_unknown_format_is_refused():
    with pytest.raises(InvalidInput, match="format"):
        decode_file(b"GIF89a....", "", "image.encoded")


def test_check_scan_limits():
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        check_scan(np.zeros((10, 70), np.uint8), "image", max_side=64)
    bad = np.zeros((4, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        check_scan(bad, "image", max_side=64)
    bad[1, 2] = np.inf
    with pytest.raises(InvalidInput, match="Inf"):
        check_scan(bad, "image", max_side=64)
    with pytest.raises(InvalidInput, match="H x W"):
        check_scan(np.zeros((1, 2, 3, 4), np.uint8), "image", max_side=64)


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62, 4], [2**31, 2**31, 4]])
def test_shapes_whose_size_overflows_int64_are_refused_as_bad_input(shape):
    # numpy's int64 product wraps to 0 for these, which matched an empty data field
    with pytest.raises(InvalidInput) as err:
        tensor_to_array(tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=shape, data=b""), "image")
    assert err.value.field == "image.data"
