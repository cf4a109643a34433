"""Class masks <-> Label Studio brush layers, in Label Studio's own RLE (``label_studio_sdk.converter.brush``).

A brush layer is an RGBA picture of the whole image whose alpha says how much of each pixel a stroke
covers; strokes are anti-aliased, so edge pixels carry partial alpha. A pixel belongs to a layer when its
alpha is at least ``ALPHA_THRESHOLD`` (128: half covered or more). Where layers of different classes
overlap, the most severe class wins, in ``OVERLAP_PRIORITY`` order (planar defects before volumetric
ones: crack, lack of fusion, inclusion, porosity), so an overlap never hides the worse finding.

The SDK itself cannot share weldstream's environment (its OpenCV pin holds numpy below 2.3), so it is
installed without its dependencies (``pip install --no-deps label-studio-sdk==2.1.2``): the brush
converter needs only numpy and Pillow, and it is imported on first use.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from weldstream.classes import BACKGROUND, DEFECT_CLASSES
from weldstream.errors import InvalidInput
from weldstream.overlay import CLASS_COLOURS

SDK_REQUIREMENT = "label-studio-sdk==2.1.2"
ALPHA_THRESHOLD = 128
OVERLAP_PRIORITY: tuple[str, ...] = ("crack", "lack_of_fusion", "inclusion", "porosity")
FROM_NAME = "defects"  # the BrushLabels control of the labelling config
TO_NAME = "image"  # its Image object; task data carries the picture under the same key
DEFECTS = {name: index for index, name in enumerate(DEFECT_CLASSES) if index != BACKGROUND}
assert set(OVERLAP_PRIORITY) == set(DEFECTS), "every defect class needs a place in the overlap order"


def sdk_brush() -> Any:
    """``label_studio_sdk.converter.brush``, imported on first use.

    The SDK's converter package prints its own missing optional imports to stdout when installed without
    its dependencies; that line is swallowed, the brush module needs none of them.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from label_studio_sdk.converter import brush
    except ImportError as exc:
        raise RuntimeError(f"Label Studio's brush converter is not installed ({exc}); install it with "
                           f"`pip install --no-deps {SDK_REQUIREMENT}`") from None
    return brush


def labelling_config() -> str:
    """The project's labelling config: the scan, and one brush label per defect class in weldstream's colours."""
    labels = "\n".join(f'    <Label value={quoteattr(name)} background="#{r:02x}{g:02x}{b:02x}"/>'
                       for name, index in DEFECTS.items() for r, g, b in [CLASS_COLOURS[index]])
    return (f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" zoomControl="true"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n</View>\n')


def mask_to_results(mask: np.ndarray) -> list[dict[str, Any]]:
    """One ``brushlabels`` result per defect class present in an H x W class map (none for a clean scan)."""
    brush = sdk_brush()
    height, width = mask.shape
    results = []
    for name, index in DEFECTS.items():
        layer = mask == index
        if not layer.any():
            continue
        rle = brush.mask2rle(layer.astype(np.uint8) * 255)
        results.append({"id": f"ws-{name}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
                        "origin": "prediction", "original_width": int(width), "original_height": int(height),
                        "image_rotation": 0,
                        "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [name]}})
    return results


def results_to_mask(results: Any, height: int, width: int, field: str = "annotation.result") -> np.ndarray:
    """An annotation's results -> H x W uint8 class map (thresholded, overlaps resolved); InvalidInput when a
    brush layer names an unknown class, is not the scan's size, or is not Label Studio's RLE.

    Results of other kinds (a comment, a choice a site added to the config) carry no pixels and are skipped.
    """
    if not isinstance(results, list):
        raise InvalidInput(field, "is not a list of results")
    layers: dict[str, np.ndarray] = {}
    for i, result in enumerate(results):
        where = f"{field}[{i}]"
        if not isinstance(result, dict) or result.get("type") != "brushlabels":
            continue
        name, covered = _layer(result, height, width, where)
        layers[name] = layers[name] | covered if name in layers else covered
    mask = np.zeros((height, width), np.uint8)
    for name in reversed(OVERLAP_PRIORITY):  # the most severe is painted last, so it wins
        if name in layers:
            mask[layers[name]] = DEFECTS[name]
    return mask


def _layer(result: dict[str, Any], height: int, width: int, where: str) -> tuple[str, np.ndarray]:
    value = result.get("value")
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}.value", "is missing")
    labels = value.get("brushlabels")
    if not isinstance(labels, list) or len(labels) != 1:
        raise InvalidInput(f"{where}.value.brushlabels", f"must name exactly one class, got {labels!r}")
    name = labels[0]
    if name not in DEFECTS:
        raise InvalidInput(f"{where}.value.brushlabels", f"{name!r} is not a defect class; classes are "
                                                         f"{', '.join(DEFECTS)}")
    size = (result.get("original_width"), result.get("original_height"))
    if size != (width, height):
        raise InvalidInput(where, f"is a {size[0]}x{size[1]} brush layer; the scan is {width}x{height}")
    if value.get("format", "rle") != "rle":
        raise InvalidInput(f"{where}.value.format", f"is {value.get('format')!r}; only Label Studio's 'rle' is read")
    rle = _rle_bytes(value.get("rle"), f"{where}.value.rle")
    declared = int.from_bytes(bytes(rle[:4]), "big")  # the RLE header's value count, checked before decoding
    if declared != width * height * 4:
        raise InvalidInput(f"{where}.value.rle", f"holds {declared} RGBA values; a {width}x{height} layer has "
                                                 f"{width * height * 4}")
    try:
        rgba = np.asarray(sdk_brush().decode_rle(rle), dtype=np.uint8)
    except Exception as exc:  # any decoder failure is the sender's bad bytes
        raise InvalidInput(f"{where}.value.rle", f"is not Label Studio's brush RLE ({type(exc).__name__})") from None
    if rgba.size != width * height * 4:
        raise InvalidInput(f"{where}.value.rle", f"decodes to {rgba.size} values, not {width * height * 4}")
    return name, rgba.reshape(height, width, 4)[:, :, 3] >= ALPHA_THRESHOLD


def _rle_bytes(rle: Any, field: str) -> bytes:
    if not isinstance(rle, list) or len(rle) < 8:
        raise InvalidInput(field, "is not an RLE byte list")
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise InvalidInput(field, "holds values that are not bytes (0..255)") from None
    return data
