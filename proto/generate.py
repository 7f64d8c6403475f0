"""Generate the runplane.v1 Python stubs from proto/ into client/ (or another root).

Messages (`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`) and typed stubs for both
(`*.pyi`, by mypy-protobuf) come from one protoc run, so `make proto` and the
drift check in `make check-proto` cannot disagree.
"""

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

import google.api
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent

PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("runplane") / "v1"


def generate(out_root: Path) -> None:
    out_dir = out_root / PACKAGE
    if out_dir.exists():
        for stale in out_dir.glob("*_pb2*"):
            stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    # google/api/field_behavior.proto ships with googleapis-common-protos.
    googleapis = Path(google.api.__path__[0]).parent.parent
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated runplane.v1 protobuf and gRPC stubs (see `make proto`)."""\n')
    (out_dir / "py.typed").touch()  # the stubs are typed (.pyi): mypy reads them when installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "client", help="source root to write")
    args = parser.parse_args()
    generate(args.out)
    shutil.rmtree(args.out / PACKAGE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
