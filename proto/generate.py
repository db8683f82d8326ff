"""Regenerate ``proto/caffe_pb2.py`` from ``proto/caffe.proto``: ``python proto/generate.py``.

The bindings are produced by ``grpc_tools.protoc`` from grpcio-tools **1.64.3**, whose protoc
(26.1) writes "Protobuf Python Version: 5.26.1" gencode without a runtime version check: the
module imports under every protobuf runtime from 5.26.1 to 7.x. Newer grpcio-tools embed a check
that refuses any runtime older than the protoc that wrote the file, and grpcio-tools 1.64.3
itself needs protobuf < 6, so it cannot live in the project's environment. Therefore, unless the
running interpreter already has exactly grpcio-tools 1.64.3, this script makes (once) a side
environment under ``~/.cache/automtl/`` with it and runs protoc there.

Options: ``--python PATH`` uses that interpreter (which must have grpcio-tools 1.64.3);
``--no-bootstrap`` fails with instructions instead of creating the side environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

GRPCIO_TOOLS = "1.64.3"
HERE = Path(__file__).resolve().parent
PROTO = HERE / "caffe.proto"
OUT = HERE / "caffe_pb2.py"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
CACHE = CACHE_ROOT / "automtl" / f"grpcio-tools-{GRPCIO_TOOLS}"
MANUAL = (
    f"  python3 -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools=={GRPCIO_TOOLS} && "
    "/tmp/protoc/bin/python proto/generate.py"
)


def _has_pinned_tools(python: str) -> bool:
    code = "import importlib.metadata as m; print(m.version('grpcio-tools'))"
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() == GRPCIO_TOOLS


def _bootstrap() -> str:
    python = CACHE / "bin" / "python"
    if python.exists() and _has_pinned_tools(str(python)):
        return str(python)
    print(f"generate.py: creating {CACHE} with grpcio-tools=={GRPCIO_TOOLS} (once)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(CACHE)
    res = subprocess.run([str(python), "-m", "pip", "install", "-q", f"grpcio-tools=={GRPCIO_TOOLS}"])
    if res.returncode != 0 or not _has_pinned_tools(str(python)):
        sys.exit(f"generate.py: could not install grpcio-tools=={GRPCIO_TOOLS}; do it by hand:\n{MANUAL}")
    return str(python)


def generate(python: str) -> None:
    """Run protoc under ``python`` and check the result imports with no runtime version pin."""
    cmd = [python, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={HERE}", str(PROTO)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"generate.py: protoc failed:\n{res.stderr}")
    text = OUT.read_text()
    if "ValidateProtobufRuntimeVersion" in text:
        OUT.unlink()
        sys.exit(
            "generate.py: this protoc writes a runtime version check that breaks older protobuf runtimes; "
            f"use grpcio-tools=={GRPCIO_TOOLS}:\n{MANUAL}"
        )
    print(f"generate.py: wrote {OUT.relative_to(HERE.parent)} ({len(text):,} bytes)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help=f"an interpreter that has grpcio-tools=={GRPCIO_TOOLS}")
    parser.add_argument("--no-bootstrap", action="store_true", help="fail instead of creating a side venv")
    args = parser.parse_args(argv)
    if args.python:
        if not _has_pinned_tools(args.python):
            sys.exit(f"generate.py: {args.python} does not have grpcio-tools=={GRPCIO_TOOLS}:\n{MANUAL}")
        python = args.python
    elif _has_pinned_tools(sys.executable):
        python = sys.executable
    elif (CACHE / "bin" / "python").exists() and _has_pinned_tools(str(CACHE / "bin" / "python")):
        python = str(CACHE / "bin" / "python")
    elif args.no_bootstrap:
        sys.exit(f"generate.py: grpcio-tools=={GRPCIO_TOOLS} is not installed; install it aside:\n{MANUAL}")
    else:
        python = _bootstrap()
    generate(python)


if __name__ == "__main__":
    main()
