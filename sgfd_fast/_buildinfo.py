"""The record an install leaves beside its compiled modules (``_build.json``).

It holds ``sources``, a digest of what the modules were compiled from, and ``cuda``, ``"built"`` or
why the CUDA module was not. A source checkout without a build of its own uses an installed build
only when the digests match (see ``sgfd_fast._ext``). Standard library only: setup.py loads this
file by path before the package is importable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RECORD_NAME = "_build.json"


def source_digest(root: Path) -> str:
    """SHA-256 over ``CMakeLists.txt`` and every file under ``csrc/`` of the checkout ``root``:
    each file's path relative to ``root`` and the SHA-256 of its bytes, in path order. Python
    files are not part of it: a checkout always runs its own."""
    root = Path(root)
    files = [root / "CMakeLists.txt", *(p for p in (root / "csrc").rglob("*") if p.is_file())]
    digest = hashlib.sha256()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_record(directory: Path, record: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n",
                                               encoding="utf-8")


def read_record(directory: Path) -> dict | None:
    """The record in ``directory``, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(directory) / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
