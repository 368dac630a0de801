"""Writing run files so that a killed process never leaves half of one, and naming files by content.

Every file and directory a later step reads is written beside its final name and then renamed
into place (`os.replace` is atomic on one file system): a reader sees the old version or the
new one, never a mix. Content digests name caches and decide when a stage reruns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

DIGEST_CHARS = 16  # 64 bits of SHA-256: names stay short, collisions stay out of reach


def write_atomic(path: Path, payload: str | bytes) -> None:
    """Write `payload` (text as UTF-8) beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload.encode("utf-8") if isinstance(payload, str) else payload)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON, written atomically."""
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def replace_directory(source: Path, target: Path, previous: Path) -> None:
    """Make the finished `source` directory `target`; the old `target` passes through `previous`.

    Between the two renames only `previous` holds the old contents, so a reader that finds no
    `target` may fall back to it (the training checkpoints do).
    """
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(source, target)
    shutil.rmtree(previous, ignore_errors=True)


def digest(text: str) -> str:
    """A short SHA-256 hex digest of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def json_digest(payload: Any) -> str:
    """`digest` of `payload` as canonical JSON (sorted keys), so equal settings give equal names."""
    return digest(json.dumps(payload, sort_keys=True, ensure_ascii=False))
