"""Generate Python code and .pyi stubs from protos/ into libs/flywheel/proto/.

protoc names modules after proto packages (flywheel.registry.v1), which would collide
with the service packages (flywheel.registry); so the code is generated into a
temporary tree and moved under flywheel.proto, with its cross-imports rewritten.
Protocol-fixed packages outside flywheel.* (the Open Inference Protocol's `inference`)
land there too: `flywheel.proto.inference`.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "libs" / "flywheel" / "proto"
# Top-level proto packages, each moved under flywheel.proto.
ROOTS = ("flywheel", "inference")
IMPORT = re.compile(r"^(from|import) (?:flywheel\.(?!proto\b)|(?=inference\b))", re.MULTILINE)


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            ["protoc", f"-I{PROTOS}", f"-I{include}",
             f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources]
        )
        if rc != 0:
            return rc
        staging = OUT.with_name(".proto-staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / "__init__.py").write_text('"""Generated protobuf and gRPC code (make proto). Do not edit."""\n')
        paths = [(p, p.relative_to(Path(tmp) / "flywheel")) for p in sorted((Path(tmp) / "flywheel").rglob("*"))]
        for root in ROOTS[1:]:
            paths += [(p, p.relative_to(tmp)) for p in [Path(tmp) / root, *sorted((Path(tmp) / root).rglob("*"))]]
        for path, relative in paths:
            target = staging / relative
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                (target / "__init__.py").touch()
                continue
            text = path.read_text()
            if path.name.endswith("_pb2_grpc.py") and "class " not in text:
                continue  # protoc writes an empty gRPC module for files without services
            target.write_text(IMPORT.sub(lambda m: f"{m.group(1)} flywheel.proto.", text))
        # Swap in the new tree at once, so importers never see it half-written.
        if OUT.exists():
            shutil.rmtree(OUT)
        staging.rename(OUT)
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
