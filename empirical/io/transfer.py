"""A large file in parts of at most 15 MiB with a manifest of SHA-256s, and back (``split``, ``join``)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from empirical.io.atomic import atomic_write, write_json
from empirical.io.errors import CheckpointError

MIB = 2**20


MANIFEST_SUFFIX = ".parts.json"


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _read_regular(path: Path, what: str) -> bytes:
    """The bytes of a regular file; a pipe (which would block), a device (which may never end) or a folder is a
    CheckpointError, as is an unreadable file."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CheckpointError(f"{what} {path} is not a regular file (a folder, device or pipe)")
        return path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{what} {path} is missing or unreadable: {err.strerror or err}") from err


def split(path: Path, max_bytes: int = 15 * MIB) -> Path:
    """Cut ``path`` (a regular file) into parts of at most ``max_bytes`` beside it; returns the manifest's path."""
    path = Path(path)
    if max_bytes < 1:
        raise CheckpointError(f"the part size must be ≥ 1 byte, got {max_bytes}")
    raw = _read_regular(path, "the file to split,")
    parts = []
    for i, start in enumerate(range(0, max(len(raw), 1), max_bytes)):
        chunk = raw[start: start + max_bytes]
        part = path.with_name(f"{path.name}.part-{i:03d}")
        atomic_write(part, lambda f, c=chunk: f.write(c))
        parts.append({"name": part.name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    write_json(manifest, {"file": path.name, "bytes": len(raw), "sha256": _sha256(raw), "parts": parts})
    return manifest


def _target_name(manifest: Path) -> str:
    """The file a manifest rebuilds: its own name without ``.parts.json`` (never a name read from inside it)."""
    if not manifest.name.endswith(MANIFEST_SUFFIX) or manifest.name == MANIFEST_SUFFIX:
        raise CheckpointError(f"{manifest} is not named FILE{MANIFEST_SUFFIX}")
    return manifest.name[: -len(MANIFEST_SUFFIX)]


def read_manifest(manifest: Path) -> dict:
    """A manifest, checked: it names its own file, and every part is a plain name beside it with a size and a
    SHA-256. A malformed one is a one-line CheckpointError."""
    raw = _read_regular(manifest, "the manifest")
    try:
        spec = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest} is not a parts manifest (not JSON: {err})") from err
    target = _target_name(manifest)
    if not isinstance(spec, dict) or spec.get("file") != target:
        raise CheckpointError(f"{manifest} must describe {target!r} (its own name without {MANIFEST_SUFFIX}); it "
                              f"names {spec.get('file') if isinstance(spec, dict) else None!r}")
    ok = (isinstance(spec.get("parts"), list) and isinstance(spec.get("bytes"), int)
          and isinstance(spec.get("sha256"), str)
          and all(isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("bytes"), int)
                  and isinstance(p.get("sha256"), str) for p in spec["parts"]))
    if not ok:
        raise CheckpointError(f"{manifest} is not a parts manifest: it needs bytes, sha256 and a list of parts, each "
                              f"with name, bytes and sha256")
    for p in spec["parts"]:
        if Path(p["name"]).name != p["name"] or p["name"] in ("", ".", "..") or not p["name"].startswith(target):
            raise CheckpointError(f"{manifest} names a part {p['name']!r} that is not a file of {target} beside it")
    return spec


def joined_bytes(manifest: Path) -> bytes:
    """The original file's bytes from its manifest and parts, every hash checked; a CheckpointError names the
    first missing or damaged part."""
    manifest = Path(manifest)
    spec = read_manifest(manifest)
    parts, total, whole = spec["parts"], spec["bytes"], spec["sha256"]
    chunks = []
    for p in parts:
        part = manifest.with_name(p["name"])
        chunk = _read_regular(part, f"part of {manifest.name},")
        if len(chunk) != p["bytes"] or _sha256(chunk) != p["sha256"]:
            raise CheckpointError(f"part {part} of {manifest} is damaged: {len(chunk)} bytes, expected {p['bytes']} "
                                  f"with SHA-256 {p['sha256'][:16]}…")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) != total or _sha256(raw) != whole:
        raise CheckpointError(f"the parts of {manifest} do not make the file it describes")
    return raw


def join(manifest: Path) -> Path:
    """Rebuild the file a manifest describes, beside it (atomically) under the manifest's own name without
    ``.parts.json``; returns its path."""
    manifest = Path(manifest)
    raw = joined_bytes(manifest)
    target = manifest.with_name(_target_name(manifest))
    atomic_write(target, lambda f: f.write(raw))
    return target
