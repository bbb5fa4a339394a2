"""Regenerate the Python protobuf/gRPC modules in this package from ``proto/``.

Run as ``python -m kvstore._pb.generate`` (``make proto``). protoc emits
top-level imports such as ``from mvccpb import kv_pb2``; we rewrite them to
absolute imports under ``kvstore._pb`` so the generated code needs no
``sys.path`` tricks.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_PACKAGES = ("mvccpb", "leasepb", "authpb", "etcdserverpb", "v3electionpb", "v3lockpb", "peerpb")
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(PROTO_PACKAGES)})\b", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(p for pkg in PROTO_PACKAGES for p in (PROTO_ROOT / pkg).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generate every module into ``out_dir``; return the paths written (relative)."""
    from grpc_tools import protoc  # test-extra dependency, needed only here

    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written: list[Path] = []
        for src in sorted(Path(raw).rglob("*.py*")):
            rel = src.relative_to(raw)
            text = _IMPORT.sub(lambda m: f"{m.group(1)} kvstore._pb.{m.group(2)}", src.read_text())
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
            written.append(rel)
        for pkg in PROTO_PACKAGES:
            init = out_dir / pkg / "__init__.py"
            init.write_text("")
            written.append(init.relative_to(out_dir))
    return sorted(written)


def main() -> int:
    for pkg in PROTO_PACKAGES:
        shutil.rmtree(PACKAGE_DIR / pkg, ignore_errors=True)
    written = generate(PACKAGE_DIR)
    print(f"generated {len(written)} files into {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
