"""Turn a verified document's text into the plain text that is chunked, by file type."""

from __future__ import annotations

from pathlib import Path

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")


def is_document(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES and not path.name.endswith(".prov.json")


def extract_text(path: Path, text: str) -> str:
    """Markdown and text pass through; HTML goes through a real parser (scripts and styles dropped)."""
    if path.suffix.lower() in (".html", ".htm"):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(text, "html.parser")
        for tag in soup(["script", "style", "noscript", "template"]):
            tag.decompose()
        lines = (line.strip() for line in soup.get_text("\n").splitlines())
        return "\n".join(line for line in lines if line)
    return text


def is_markdown(path: Path) -> bool:
    return path.suffix.lower() in (".md", ".markdown")
