"""Regenerate the Python code for the protos under ``protos/``.

The output (messages, gRPC stubs, and mypy-protobuf ``.pyi`` stubs typed for
``grpc.aio``) is committed under ``clients/python/src``. CI runs this script
with ``--check`` and fails when the committed code differs from a fresh run.

The TypeScript client's code (``clients/typescript/src/gen``) is regenerated
(or checked) too, through its ``npm run generate``, once ``npm ci`` has been
run in ``clients/typescript``; without it that step is skipped with a note.

Usage: ``python scripts/generate_protos.py [--check]``
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients" / "python" / "src"
PACKAGE_DIR = Path("cofounder") / "agent" / "v1"
TYPESCRIPT_CLIENT = ROOT / "clients" / "typescript"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """Find a protoc plugin installed beside this interpreter."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / name, Path(sys.executable).parent / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf")
    return found


def generate(out_root: Path) -> None:
    """Run protoc for every proto file into ``out_root``."""
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out=only_async:{out_root}",
            *protos,
        ],
        check=True,
        cwd=ROOT,
    )
    (out_root / PACKAGE_DIR / "py.typed").write_text("")


def generated_files(root: Path) -> set[Path]:
    """The generated files below ``root``, relative to it."""
    package = root / PACKAGE_DIR
    if not package.exists():
        return set()
    return {
        p.relative_to(root)
        for p in package.iterdir()
        if p.name.endswith(GENERATED_SUFFIXES) or p.name == "py.typed"
    }


def typescript(check: bool) -> int:
    """Regenerate (or check) the TypeScript client's code; 0 when skipped for lack of ``npm ci``."""
    if not (TYPESCRIPT_CLIENT / "node_modules" / ".bin" / "protoc-gen-es").exists():
        print("TypeScript client skipped: run `npm ci` in clients/typescript to include it")
        return 0
    buf = Path(sysconfig.get_path("scripts")) / "buf"
    env = {**os.environ, "BUF": str(buf)} if buf.exists() else None
    command = ["node", "scripts/generate.mjs", *(["--check"] if check else [])]
    return subprocess.run(command, cwd=TYPESCRIPT_CLIENT, env=env, check=False).returncode


def python_code(*, check: bool) -> int:
    """Regenerate (or check) the Python code under ``clients/python/src``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        new, old = generated_files(fresh), generated_files(OUT_ROOT)
        stale = sorted(
            str(p)
            for p in new | old
            if p not in new or p not in old or not filecmp.cmp(fresh / p, OUT_ROOT / p, shallow=False)
        )
        if check:
            if stale:
                print("generated code is out of date; run python scripts/generate_protos.py:")
                print("\n".join(f"  {p}" for p in stale))
                return 1
            print(f"generated code is up to date ({len(new)} files)")
            return 0
        for path in old - new:
            (OUT_ROOT / path).unlink()
        for path in new:
            (OUT_ROOT / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / path, OUT_ROOT / path)
        print(f"wrote {len(new)} files under {OUT_ROOT.relative_to(ROOT)}; {len(stale)} changed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    results = [python_code(check=args.check), typescript(check=args.check)]
    return 1 if any(results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
