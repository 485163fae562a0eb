"""Split documents into chunks with langchain-text-splitters, keeping each chunk's Markdown heading path."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

HEADINGS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]


@dataclass(frozen=True)
class Piece:
    text: str
    heading_path: str
    sha256: str


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self._markdown = MarkdownHeaderTextSplitter(HEADINGS, strip_headers=False)
        self._recursive = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size, chunk_overlap=min(chunk_overlap, chunk_size // 2)
        )

    def split(self, text: str, *, markdown: bool) -> list[Piece]:
        sections: list[tuple[str, str]]
        if markdown:
            sections = [
                (" > ".join(doc.metadata[key] for _, key in HEADINGS if key in doc.metadata), doc.page_content)
                for doc in self._markdown.split_text(text)
            ]
        else:
            sections = [("", text)]
        pieces = []
        for heading, section in sections:
            for part in self._recursive.split_text(section):
                if part.strip():
                    pieces.append(Piece(part, heading, hashlib.sha256(part.encode("utf-8")).hexdigest()))
        return pieces
