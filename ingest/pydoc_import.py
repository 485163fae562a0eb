"""Import the default corpus: the Python Language Reference topics that ship inside CPython.

The topic texts are written by the Python documentation authors (PSF licence). The only change made
here is mechanical: reStructuredText section underlines become Markdown headings, so chunks keep
their heading path. Each file is then signed as `human` by the curator key given.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ingest.files import FileRefusedError, read_regular, write_atomic
from ingest.provenance import DEFAULT_MAX_DOCUMENT_BYTES, manifest_path, sign_document
from ingest.trust import load_private_key
from rag.errors import InvalidInputError

AUTHORS = ["Python documentation authors"]
LICENSE = "PSF-2.0"
_UNDERLINE = {"*": "#", "=": "##", "-": "###", "~": "####", "^": "####"}


def reference_uri() -> str:
    return f"https://docs.python.org/{sys.version_info.major}.{sys.version_info.minor}/reference/"


def rst_headings_to_markdown(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        marker = nxt[:1]
        if (
            line.strip()
            and not line.startswith(" ")
            and marker in _UNDERLINE
            and re.fullmatch(re.escape(marker) + "{3,}", nxt)
            and len(nxt) >= len(line.rstrip())
        ):
            out.append(f"{_UNDERLINE[marker]} {line.strip()}")
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def topic_title(text: str, topic: str) -> str:
    first = text.strip().split("\n", 1)[0].strip()
    return first or topic


def import_pydoc(out_dir: Path, key_path: Path, *, curator: str | None = None) -> list[Path]:
    """Write each topic as `<topic>.md` under `out_dir` and sign it; returns the documents written."""
    from pydoc_data.topics import topics

    key = load_private_key(key_path)
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} is not a folder.", code="not_a_folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"Cannot make the folder {out_dir}: {exc.strerror}.", code="write_failed") from exc
    written = []
    for topic in sorted(topics):
        document = out_dir / f"{topic}.md"
        text = rst_headings_to_markdown(topics[topic])
        written.append(document)
        if _current_text(document) == text and manifest_path(document).is_file():
            continue  # already imported; re-signing would only churn the manifest
        # Replaces whatever is at the name (a link is not written through).
        write_atomic(document, text.encode("utf-8"), what="document")
        sign_document(
            document,
            key,
            root=out_dir,
            title=topic_title(topics[topic], topic),
            authors=AUTHORS,
            license=LICENSE,
            origin="human",
            source_uri=reference_uri(),
            curator=curator or key_path.stem,
        )
    return written


def _current_text(document: Path) -> str | None:
    """The text of an earlier import at `document`, if a regular UTF-8 file is there."""
    try:
        return read_regular(document, max_bytes=DEFAULT_MAX_DOCUMENT_BYTES, what="document").decode("utf-8")
    except (FileRefusedError, UnicodeDecodeError):
        return None
