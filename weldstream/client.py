"""A person's client: segment one scan file on a running server, print its defects, save an overlay."""

from __future__ import annotations

from pathlib import Path

import grpc

from weldstream.codec import decode_file, tensor_to_array
from weldstream.overlay import save_overlay
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2


def infer_file(image_path: Path, target: str, out: Path | None, timeout: float) -> int:
    data = image_path.read_bytes()
    fmt = "tiff" if image_path.suffix.lower() in (".tif", ".tiff") else "png"
    request = segmenter_pb2.SegmentRequest(
        scan_id=image_path.stem, image=tensor_pb2.Image(encoded=tensor_pb2.EncodedImage(format=fmt, data=data))
    )
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 1 << 28)]) as channel:
        try:
            response = segmenter_pb2_grpc.SegmenterStub(channel).Segment(request, timeout=timeout)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}")
            return 2
    mask = tensor_to_array(response.mask, "mask")
    print(f"scan {response.scan_id}: {mask.shape[1]}x{mask.shape[0]} px, model v{response.model_version}, "
          f"server {response.server_latency_ms:.1f} ms")
    fractions = ", ".join(f"{c.class_name} {100 * c.fraction:.2f}%" for c in response.class_fractions if c.class_id)
    print(f"defect pixels: {fractions}")
    if not response.regions:
        print("no defect regions")
    for r in response.regions:
        print(f"  {r.class_name:<15} x={r.bbox.x:<5} y={r.bbox.y:<5} {r.bbox.width}x{r.bbox.height} px  "
              f"area {r.area_px} px  confidence {r.mean_confidence:.2f}")
    if out is not None:
        save_overlay(str(out), decode_file(data, fmt, "image"), mask)
        print(f"overlay written to {out}")
    return 0
