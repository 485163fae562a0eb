"""The chat page's files as the server sends them: content types, the security policy, caching, and what the
files may not hold (other hosts, inline script, HTML parsing of text). The page in a browser: tests/e2e."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.web.page import CONTENT_TYPES
from rag.settings import Settings
from tests.conftest import REPO

STATIC = REPO / "api" / "web" / "static"
# Identifiers that look like addresses but are never fetched: the SVG namespace.
NAMESPACES = {"http://www.w3.org/2000/svg"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # No lifespan: the page must be served without the answer service (or its models) being built.
    yield TestClient(create_app(settings))


@pytest.mark.parametrize(
    ("path", "name"), [("/", "index.html"), *((f"/static/{n}", n) for n in CONTENT_TYPES if n != "index.html")]
)
def test_each_file_is_served_with_its_type_a_strict_policy_and_revalidation(
    client: TestClient, path: str, name: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPES[name]
    assert response.content == (STATIC / name).read_bytes()
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    again = client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_a_changed_file_gets_a_new_etag(client: TestClient) -> None:
    etags = {client.get(f"/static/{name}").headers["etag"] for name in ("app.js", "style.css")}
    assert len(etags) == 2
    stale = client.get("/static/app.js", headers={"If-None-Match": '"0123"'})
    assert stale.status_code == 200 and stale.content


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/index.htm",
        "/static/page.py",
        "/static/..%2Fpage.py",
        "/static/",
        "/static/app.js/x",
    ],
)
def test_nothing_else_is_served_from_the_package(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_the_page_loads_only_its_own_files() -> None:
    html = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"#]+)"', html))
    assert referenced == {"/static/app.js", "/static/style.css", "/static/icon.svg"}
    for name in CONTENT_TYPES:
        text = (STATIC / name).read_text()
        addresses = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - NAMESPACES
        assert not addresses, (name, addresses)
        assert "@import" not in text and "url(" not in text, name


def test_the_page_has_no_inline_script_or_style() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/app.js" defer>']
    assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None  # nothing between the tags
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # event-handler attributes are inline script


def test_the_script_never_parses_text_as_html() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("on',
    ):
        assert sink not in script, sink
    assert "textContent" in script


def test_the_form_controls_have_labels() -> None:
    html = (STATIC / "index.html").read_text()
    for control in re.findall(r'<(?:textarea|input)\b[^>]*\bid="([^"]+)"', html):
        assert f'for="{control}"' in html, control
    assert 'aria-live="polite"' in html and 'lang="en"' in html
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html


def test_an_installed_package_serves_the_page(tmp_path: Path) -> None:
    """The static files are package data: a wheel built from pyproject.toml holds every one of them."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "api", source / "api", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run([*command, "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name for n in archive.namelist() if n.startswith("api/web/static/")}
    assert shipped == set(CONTENT_TYPES)
