"""Content hashes of files and folders for the step cache: names and bytes count, timestamps do not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class FileHashMemo:
    """sha256 per file, remembered by (path, size, mtime, inode) so unchanged big files are read once."""

    def __init__(self, store: Path | None = None):
        self.store = store
        self.entries: dict[str, list] = {}
        if store and store.is_file():
            try:
                self.entries = json.loads(store.read_text(encoding="utf-8"))
            except ValueError:  # a torn write: start afresh, it is only a memo
                self.entries = {}

    def file_digest(self, file: Path) -> str:
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        key = str(file.resolve())
        cached = self.entries.get(key)
        if cached and cached[:3] == stamp:
            return cached[3]
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        self.entries[key] = [*stamp, digest.hexdigest()]
        return digest.hexdigest()

    def save(self) -> None:
        if self.store:
            tmp = self.store.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries), encoding="utf-8")
            tmp.replace(self.store)


def hash_path(path: Path, memo: FileHashMemo | None = None, excluded=None) -> str:
    """Content hash of a file or folder (relative names + bytes), independent of timestamps. ``excluded``: a
    predicate on a folder's files that leaves some out (a component's ignore file)."""
    memo = memo or FileHashMemo()
    if path.is_file():
        files, base = [path], path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        if excluded is not None:
            files = [p for p in files if not excluded(p)]
        base = path
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(base)}\0{memo.file_digest(file)}\0".encode())
    return digest.hexdigest()
