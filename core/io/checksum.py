"""The SHA-256 of a file, read in chunks: model caches, checkpoint identities, cluster jobs."""

from __future__ import annotations

import hashlib


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of the file's bytes (memory stays at one chunk, whatever the file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
