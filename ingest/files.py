"""Reading files a curator hands us, which may be hostile: each is read once, through one descriptor.

A path that is not a regular file (a folder, a FIFO, a device, a socket), a symbolic link where links are not
followed, a file over the size limit or one that cannot be read is refused with an `InvalidInputError` whose
code is a stable reason code. Nothing here blocks: a FIFO is refused before it is opened, and the descriptor
is opened non-blocking and checked to be the very file that was looked at.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from rag.errors import InvalidInputError

READ_STEP = 1 << 20


def kind_of(mode: int) -> str:
    """A file type in words, for messages."""
    kinds = (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


class FileRefusedError(InvalidInputError):
    """A file that is not read; `detail` says why without the path (the message names it)."""

    def __init__(self, path: Path, what: str, detail: str, *, code: str) -> None:
        super().__init__(f"The {what} {printable_path(path)} {detail}.", code=code)
        self.detail = f"the {what} {detail}"


def printable_path(path: Path | str) -> str:
    """A path as text that can always be written out (the undecodable bytes of a file name shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_regular(path: Path, *, max_bytes: int, follow_symlinks: bool = False, what: str = "file") -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them; FileRefusedError otherwise.

    Codes: `path_not_found`, `not_a_regular_file` (also a symbolic link unless `follow_symlinks`), `too_large`,
    `unreadable`. `what` names the file in messages ("document", "manifest", "key file")."""
    try:
        info = os.stat(path) if follow_symlinks else os.lstat(path)
    except FileNotFoundError as exc:
        raise FileRefusedError(path, what, "does not exist", code="path_not_found") from exc
    except OSError as exc:
        raise FileRefusedError(path, what, f"cannot be read: {_why(exc)}", code="unreadable") from exc
    if stat.S_ISLNK(info.st_mode):
        raise FileRefusedError(path, what, "is a symbolic link; links are not followed", code="not_a_regular_file")
    if not stat.S_ISREG(info.st_mode):
        raise FileRefusedError(
            path, what, f"is a {kind_of(info.st_mode)}, not a regular file", code="not_a_regular_file"
        )
    if info.st_size > max_bytes:
        raise FileRefusedError(path, what, f"has {info.st_size} bytes, over the limit of {max_bytes}", code="too_large")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefusedError(
                path, what, "became a symbolic link as it was opened; links are not followed", code="not_a_regular_file"
            ) from exc
        raise FileRefusedError(path, what, f"cannot be read: {_why(exc)}", code="unreadable") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            # Replaced between the look and the open: what was looked at is not what would be read.
            raise FileRefusedError(path, what, "was replaced as it was opened", code="not_a_regular_file")
        parts: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            part = os.read(fd, min(left, READ_STEP))
            if not part:
                break
            parts.append(part)
            left -= len(part)
    except OSError as exc:
        raise FileRefusedError(path, what, f"cannot be read: {_why(exc)}", code="unreadable") from exc
    finally:
        os.close(fd)
    data = b"".join(parts)
    if len(data) > max_bytes:
        raise FileRefusedError(path, what, f"grew over the limit of {max_bytes} bytes as it was read", code="too_large")
    return data


def _why(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def read_json_object(path: Path, *, max_bytes: int = 64 << 20) -> dict[str, Any]:
    """A JSON object kept as a plain report beside the data (the quarantine report); {} when it is missing,
    unreadable or not a JSON object, so a damaged report is rewritten by the next run instead of stopping it."""
    try:
        value = json.loads(read_regular(path, max_bytes=max_bytes, follow_symlinks=True, what="report"))
    except (InvalidInputError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_atomic(path: Path, data: bytes, *, what: str = "file") -> None:
    """Write `data` as a new file renamed over `path`: whatever was at that name (a symbolic link, a FIFO) is
    replaced, never written through; a reader sees the old file or the new one. FileRefusedError
    (`write_failed`) when it cannot be written (a folder of that name, no permission, a full disk)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileRefusedError(path, what, f"cannot be written: {_why(exc)}", code="write_failed") from exc
