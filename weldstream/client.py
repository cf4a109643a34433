"""A person's client: segment one scan file on a running server, print its defects, save an overlay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from weldstream.codec import decode_file, tensor_to_array
from weldstream.limits import response_bytes
from weldstream.overlay import save_overlay
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2


@dataclass(frozen=True)
class Connection:
    """How to reach a server: plaintext by default; TLS with a CA (and a client certificate for mutual
    TLS); a bearer token read from a file."""

    target: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None

    def channel(self, options: list[tuple[str, int]]) -> grpc.Channel:
        if self.tls_ca is None and self.tls_cert is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, self._credentials(), options=options)

    def aio_channel(self, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        """The same connection for an asyncio client (the web console)."""
        if self.tls_ca is None and self.tls_cert is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, self._credentials(), options=options)

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None)

    def metadata(self) -> list[tuple[str, str]]:
        if self.token_file is None:
            return []
        return [("authorization", f"Bearer {self.token_file.read_text(encoding='utf-8').strip()}")]


def infer_file(image_path: Path, connection: Connection, out: Path | None, timeout: float) -> int:
    data = image_path.read_bytes()
    fmt = "tiff" if image_path.suffix.lower() in (".tif", ".tiff") else "png"
    request = segmenter_pb2.SegmentRequest(
        scan_id=image_path.stem, image=tensor_pb2.Image(encoded=tensor_pb2.EncodedImage(format=fmt, data=data)),
        return_regions=True,  # the regions are what this command prints
    )
    with connection.channel([("grpc.max_receive_message_length", response_bytes())]) as channel:
        try:
            response = segmenter_pb2_grpc.SegmenterStub(channel).Segment(request, timeout=timeout,
                                                                         metadata=connection.metadata())
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
