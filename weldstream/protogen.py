"""Build the protobuf and gRPC modules from proto/ into the weldstream namespace.

Run by the build (`make proto`); the generated modules are never edited or committed.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto under proto_dir; returns the files compiled."""
    protos = sorted(proto_dir.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the message above")
    for package in {p.parent.relative_to(proto_dir) for p in protos}:
        (out_dir / package / "__init__.py").touch()
    return protos


if __name__ == "__main__":
    compiled = generate()
    print(f"generated {len(compiled)} proto files", file=sys.stderr)
