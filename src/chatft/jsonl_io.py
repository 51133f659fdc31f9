"""JSONL helpers shared by the data components: find the files, read raw lines, write files atomically.

Lines are handled as bytes so that a record can be written out exactly as it was read: the validator promises
its accepted lines byte-for-byte, and prep_data carries even unparsable lines into a split unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chatft.errors import UsageError

JSONL_SUFFIX = ".jsonl"
UTF8_BOM = b"\xef\xbb\xbf"


class NoJsonlFilesError(UsageError, FileNotFoundError):
    """The path is neither a ``.jsonl`` file nor a folder that holds one."""


@dataclass(frozen=True)
class JsonlFile:
    """A JSONL file on disk, and its ``name``: the POSIX path relative to the input root (the bare file name when a
    single file was given), used in messages (``train.jsonl:17: ...``) and as its name inside an output folder."""

    path: Path
    name: str


def list_jsonl_files(path: str | os.PathLike) -> list[JsonlFile]:
    """The ``.jsonl`` files at ``path``: the file itself, or every one under the folder, sorted by relative path.

    Hidden files and folders (``.ipynb_checkpoints``, ``.git``) are skipped: they are never training data.
    """
    root = Path(path)
    if root.is_file():
        if root.suffix != JSONL_SUFFIX:
            raise NoJsonlFilesError(f"{root}: not a {JSONL_SUFFIX} file; pass a .jsonl file or a folder of them")
        return [JsonlFile(root, root.name)]
    if not root.is_dir():
        raise NoJsonlFilesError(f"{root}: no such file or folder")
    files = []
    for found in root.rglob(f"*{JSONL_SUFFIX}"):
        relative = found.relative_to(root)
        if found.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(JsonlFile(found, relative.as_posix()))
    if not files:
        raise NoJsonlFilesError(f"{root}: no {JSONL_SUFFIX} files in this folder or its subfolders")
    return sorted(files, key=lambda file: file.name)


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for each line of the file, numbered from 1, as bytes with its line ending (if any).

    A UTF-8 byte-order mark at the start of the file is dropped: it marks the file's encoding, it is not part of
    the first record, and lines may be recombined into other files.
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]
            yield number, line


def is_blank(line: bytes) -> bool:
    """Whitespace only: not a record (a trailing empty line is common), so readers skip it and count it."""
    return not line or line.isspace()


def strip_line_ending(line: bytes) -> bytes:
    """The record without its ``\\n`` or ``\\r\\n``: what identifies a record regardless of the file's line endings."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears complete when the block ends, or not at all if it raises.

    A temporary file in the same folder is renamed over the target, so a crashed or killed step never leaves a
    half-written file that a later step could mistake for a finished one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates files 0600. "x" mode keeps the umask permissions and never reuses a name.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RangeCopier:
    """Appends byte ranges of a source file to an open output file: the way the validator writes accepted lines.

    Accepted lines come in long runs, and copying a run is cheaper than writing its lines one by one. On Linux the
    kernel copies (``os.copy_file_range``); where it cannot (another OS, or file systems it will not copy between,
    such as some network mounts) the range is read and written in chunks. Use as a context manager.
    """

    _CHUNK = 1 << 20
    # Errors that mean "the kernel will not copy between these two files", not that the files are bad: another file
    # system (EXDEV), no support (ENOSYS, EOPNOTSUPP, EINVAL), a target opened for appending (EBADF).
    _NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}

    def __init__(self, source: str | os.PathLike, target: BinaryIO):
        self._source = open(source, "rb")  # noqa: SIM115 (closed in close(): the copier lives across a loop)
        self._target = target
        self._kernel_copy = hasattr(os, "copy_file_range")

    def copy(self, start: int, end: int) -> None:
        """Append bytes ``start`` to ``end`` (exclusive) of the source to the target."""
        if start >= end:
            return
        self._target.flush()  # what was written through the handle goes first
        if self._kernel_copy:
            try:
                while start < end:
                    copied = os.copy_file_range(self._source.fileno(), self._target.fileno(), end - start, start)
                    if copied == 0:
                        raise OSError(errno.EIO, f"{self._source.name}: file ended at byte {start}, expected {end}")
                    start += copied
                return
            except OSError as exc:
                if exc.errno not in self._NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False  # and copy the rest (from start on) through user space
        self._source.seek(start)
        while start < end:
            chunk = self._source.read(min(end - start, self._CHUNK))
            if not chunk:
                raise OSError(errno.EIO, f"{self._source.name}: file ended at byte {start}, expected {end}")
            self._target.write(chunk)
            start += len(chunk)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> RangeCopier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_jsonl_atomic(path: str | os.PathLike, lines: Iterable[bytes]) -> int:
    """Write raw JSONL lines atomically, adding a ``\\n`` to any line without one (a file's unterminated last line).

    Returns the number of lines written.
    """
    count = 0
    with atomic_writer(path) as handle:
        for line in lines:
            handle.write(line if line.endswith(b"\n") else line + b"\n")
            count += 1
    return count
