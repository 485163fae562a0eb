"""Every `rag` command with missing, wrong-typed and hostile arguments: never a traceback, always a coded line.

In-process (typer's CliRunner, through the same `RagCommands.main` the console script runs) so the sweep takes
seconds: exit 2 when the input is refused (one line `error [code] sentence` on standard error), exit 1 when the
command ran and found a problem. No case loads a model: each is refused before anything heavy starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from ingest.ledger_head import LedgerKey
from ingest.provenance import manifest_path
from ingest.trust import add_trusted_key, write_key_pair
from rag.cli import app
from tests.conftest import REPO, pydoc_text

ERROR_LINE = re.compile(r"^error \[([a-z0-9_]+)\] \S.*$")
HUGE = "9" * 40
LONG = "x" * 5000
# Codes that mean "we did not expect this": a bug, or an operating-system error we did not name.
NEVER = {"internal_error", "io_error"}


def commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command path (a group that runs on its own, like `eval`, included) with its click command."""

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subs = getattr(command, "commands", None)
        if subs is None:
            yield path, command
            return
        if path and command.invoke_without_command:
            yield path, command
        for name, sub in sorted(subs.items()):
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


COMMANDS = dict(commands())


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """Hostile and ordinary paths to put in arguments, by name."""
    base = tmp_path / "h"
    base.mkdir()
    folder = base / "folder"
    folder.mkdir()
    (base / "folder.md").mkdir()
    os.mkfifo(base / "fifo.md")
    os.mkfifo(base / "fifo.json")
    (base / "loop.md").symlink_to(base / "loop.md")
    (base / "latin1.md").write_bytes("caf\u00e9".encode("latin-1"))
    (base / "empty.md").write_text("")
    (base / "blank.md").write_text(" \n\t\u200b\n")
    (base / "junk.json").write_text("{not json")
    (base / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (base / "list.json").write_text("[]")
    (base / "notdoc.py").write_text("print('hi')\n")
    docs = base / "docs"
    docs.mkdir()
    (docs / "doc.md").write_text(pydoc_text("pass"))
    (docs / "link.md").symlink_to(docs / "doc.md")
    (docs / "sidecar_folder.md").write_text(pydoc_text("del"))
    manifest_path(docs / "sidecar_folder.md").mkdir()
    key, public = write_key_pair("curator", base / "keys")
    LedgerKey(Path(os.environ["RAG_LEDGER_KEY_PATH"])).create()  # so that --expect is checked, not skipped
    add_trusted_key(tmp_path / "trust.json", "curator", public)  # the configured trust file (conftest)
    squad = base / "squad.json"
    squad.write_text(
        '{"data": [{"paragraphs": [{"context": "The sky is blue.", "qas": [{"question": "What colour is the sky?",'
        ' "answers": [{"text": "blue"}]}]}]}]}'
    )
    named = {
        "missing": base / "missing.md",
        "folder": folder,
        "folder_doc": base / "folder.md",
        "fifo": base / "fifo.md",
        "fifo_json": base / "fifo.json",
        "loop": base / "loop.md",
        "latin1": base / "latin1.md",
        "empty": base / "empty.md",
        "blank": base / "blank.md",
        "junk": base / "junk.json",
        "deep": base / "deep.json",
        "list_json": base / "list.json",
        "notdoc": base / "notdoc.py",
        "docs": docs,
        "doc": docs / "doc.md",
        "link": docs / "link.md",
        "sidecar_folder": docs / "sidecar_folder.md",
        "key": key,
        "keys": base / "keys",
        "squad": squad,
        "missing_dir_file": base / "no" / "such" / "file.html",
    }
    return {name: str(path) for name, path in named.items()}


def run(args: list[str]) -> Any:
    """One in-process invocation; a hang (a FIFO opened for reading, say) fails the test instead of the suite."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"rag {' '.join(args)[:200]} did not finish in 30 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        return CliRunner().invoke(app, args, env={"COLUMNS": "100"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fill(args: list[str], paths: dict[str, str]) -> list[str]:
    """Arguments with each "{name}" replaced by that path."""
    return [paths[arg[1:-1]] if re.fullmatch(r"\{[a-z0-9_]+\}", arg) else arg for arg in args]


def check(args: list[str], exit_code: int | set[int] = 2, code: str | None = None) -> Any:
    result = run(args)
    shown = f"rag {' '.join(a[:60] for a in args)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert "Traceback" not in result.output, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), (shown, result.exception)
    allowed = {exit_code} if isinstance(exit_code, int) else exit_code
    assert result.exit_code in allowed, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    if result.exit_code == 2 or errors:
        assert len(errors) == 1 and ERROR_LINE.match(errors[0]), shown
        assert result.stderr.strip().splitlines()[-1] == errors[0], shown  # the error is the last word
        found = ERROR_LINE.match(errors[0]).group(1)  # type: ignore[union-attr]
        assert found not in NEVER, shown
        if code is not None:
            assert found == code, shown
    return result


# --- generic cases, for every command -----------------------------------------------------------------------


def test_every_command_has_hostile_cases() -> None:
    """A new command must be added to HOSTILE (or to TAKES_NOTHING) so that the sweep covers it."""
    assert set(COMMANDS) <= set(HOSTILE) | TAKES_NOTHING


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_unknown_options_missing_values_and_wrong_types(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    check([*path, "--no-such-option"], 2, "unknown_option")
    check([*path, "--no-such-option=1", "-Z"], 2, "unknown_option")
    required = [p for p in command.params if p.required]
    if required:
        check(list(path), 2, "missing_argument")
    for param in command.params:
        if param.param_type_name != "option" or param.is_flag:
            continue
        # An option given last without its value, then a number option given words.
        check([*path, param.opts[0]], 2)
        if param.bare_type() in ("int", "float", "int | None", "float | None"):
            check([*path, param.opts[0], "abc"], 2, "invalid_argument")
            check([*path, param.opts[0], ""], 2, "invalid_argument")


# --- hostile arguments, command by command ------------------------------------------------------------------

SIGN = ["--key", "{key}", "--author", "A", "--license", "PSF-2.0", "--origin", "human"]
TAKES_NOTHING = {
    ("apikeys", "list"),
    ("doctor",),  # flags only (--remeasure, --json)
    ("documents",),
    ("eval", "history"),
    ("ledger", "head"),
    ("registry", "pin"),
    ("registry", "status"),
}
# (arguments, exit code, reason code or None); "{name}" is a path from the `paths` fixture.
HOSTILE: dict[tuple[str, ...], list[tuple[list[str], int, str | None]]] = {
    ("serve",): [
        (["--port", "-1"], 2, "invalid_argument"),
        (["--port", "70000"], 2, "invalid_argument"),
        (["--port", HUGE], 2, "invalid_argument"),
        (["--port", f"-{HUGE}"], 2, "invalid_argument"),
        (["--host", "0.0.0.0", "--port", "8999"], 2, "api_keys_required"),  # no keys: refused before it starts
    ],
    ("apikeys", "new"): [
        (["../x", "--role", "reader"], 2, "invalid_key_name"),
        ([LONG, "--role", "reader"], 2, "invalid_key_name"),
        (["ok\n", "--role", "reader"], 2, "invalid_key_name"),
        (["ok", "--role", "root"], 2, "invalid_role"),
    ],
    ("apikeys", "revoke"): [(["nobody"], 2, "unknown_api_key"), ([LONG], 2, "unknown_api_key")],
    ("ask",): [
        ([""], 2, "empty_question"),
        (["   \n\t"], 2, "empty_question"),
        ([LONG], 2, "question_too_long"),
        (["q", "--top-k", "0"], 2, "invalid_top_k"),
        (["q", "--top-k", "-1"], 2, "invalid_top_k"),
        (["q", "--top-k", HUGE], 2, "invalid_top_k"),
        (["q", "--top-k", f"-{HUGE}"], 2, "invalid_top_k"),
        (["q", "--mode", "bogus"], 2, "invalid_answer_mode"),
        (["q", "--generator", "../../etc/passwd"], 2, "unknown_generator"),
    ],
    ("sign",): [
        (["{missing}", *SIGN], 2, "invalid_argument"),
        (["{folder}", *SIGN], 2, "invalid_argument"),
        (["{loop}", *SIGN], 2, "invalid_argument"),
        (["{fifo}", *SIGN], 2, "not_a_regular_file"),
        (["{link}", *SIGN], 2, "not_a_regular_file"),
        (["{latin1}", *SIGN], 2, "not_utf8"),
        (["{empty}", *SIGN], 2, "empty_document"),
        (["{blank}", *SIGN], 2, "empty_document"),
        (["{doc}", "{latin1}", *SIGN], 2, "not_utf8"),
        (["{sidecar_folder}", *SIGN], 2, "write_failed"),
        (["{doc}", *SIGN, "--root", "{folder}"], 2, "outside_root"),
        (["{doc}", *SIGN, "--root", "{missing}"], 2, "outside_root"),
        (["{doc}", *SIGN[:-1], "robot"], 2, "invalid_argument"),
        (["{doc}", *SIGN, "--author", " "], 2, "invalid_argument"),
        (["{doc}", "--key", "{missing}", *SIGN[2:]], 2, "key_not_found"),
        (["{doc}", "--key", "{folder}", *SIGN[2:]], 2, "key_invalid"),
        (["{doc}", "--key", "{fifo}", *SIGN[2:]], 2, "key_invalid"),
        (["{doc}", "--key", "{latin1}", *SIGN[2:]], 2, "key_invalid"),
        (["{doc}", "--key", "{empty}", *SIGN[2:]], 2, "key_invalid"),
    ],
    ("verify",): [
        (["{missing}"], 2, "path_not_found"),
        (["{notdoc}"], 2, "unsupported_type"),
        (["{fifo}"], 1, None),
        (["{loop}"], 1, None),
        (["{latin1}"], 1, None),
        (["{docs}"], 1, None),
        (["{docs}", "--json"], 1, None),
        (["{docs}", "--trust", "{missing}"], 2, "path_not_found"),
        (["{docs}", "--trust", "{folder}"], 2, "trust_store_invalid"),
        (["{docs}", "--trust", "{fifo_json}"], 2, "trust_store_invalid"),
        (["{docs}", "--trust", "{junk}"], 2, "trust_store_invalid"),
        (["{docs}", "--trust", "{latin1}"], 2, "trust_store_invalid"),
        (["{docs}", "--trust", "{deep}"], 2, "trust_store_invalid"),
        (["{docs}", "--trust", "{list_json}"], 2, "trust_store_invalid"),
    ],
    ("ingest",): [
        (["{missing}"], 2, "path_not_found"),
        (["{notdoc}"], 2, "unsupported_type"),
        (["{folder}", "{missing}"], 2, "path_not_found"),
        (["{folder}", "--trust", "{missing}"], 2, "path_not_found"),
        (["{folder}", "--trust", "{fifo_json}"], 2, "trust_store_invalid"),
        (["{folder}", "--trust", "{junk}"], 2, "trust_store_invalid"),
        (["{fifo}", "--json"], 1, None),
    ],
    ("remove",): [([""], 2, "unknown_document"), (["../../etc/passwd"], 2, "unknown_document"), ([LONG], 2, None)],
    ("admit",): [
        (["nope"], 2, "not_held"),
        (["nope", "{fifo}"], 2, "not_held"),
        ([LONG, "--curator", ""], 2, "not_held"),
    ],
    ("eval",): [
        (["--dataset", "{missing}"], 2, "dataset_missing"),
        (["--dataset", "{folder}"], 2, "dataset_missing"),
        (["--dataset", "{fifo_json}"], 2, "dataset_missing"),
        (["--dataset", "{junk}"], 2, "dataset_not_json"),
        (["--dataset", "{latin1}"], 2, "dataset_not_json"),
        (["--dataset", "{deep}"], 2, "dataset_not_json"),
        (["--dataset", "{list_json}"], 2, "dataset_not_squad"),
        (["--dataset", "{squad}", "--limit", "0"], 2, "limit_out_of_range"),
        (["--dataset", "{squad}", "--limit", "-1"], 2, "limit_out_of_range"),
        (["--dataset", "{squad}", "--limit", HUGE], 2, "limit_out_of_range"),
        (["--dataset", "{squad}", "--top-k", "0"], 2, "invalid_top_k"),
        (["--dataset", "{squad}", "--top-k", HUGE], 2, "invalid_top_k"),
        (["--dataset", "{squad}", "--counterfactual", "-1"], 2, "invalid_counterfactual"),
        (["--dataset", "{squad}", "--out", "{doc}"], 2, "out_not_a_folder"),
        (["--dataset", "{squad}", "--generator", "bogus"], 2, "unknown_generator"),
        (["--dataset", "{squad}", "--peer-script", "{missing}"], 2, "peer_missing"),
    ],
    ("keys", "new"): [
        (["alice", "--out", "{doc}"], 2, "not_a_folder"),
        (["alice", "--out", "{fifo}"], 2, "not_a_folder"),
        (["../escape", "--out", "{folder}"], 2, "invalid_key_name"),
        (["", "--out", "{folder}"], 2, "invalid_key_name"),
        ([".hidden", "--out", "{folder}"], 2, "invalid_key_name"),
        ([LONG, "--out", "{folder}"], 2, "invalid_key_name"),
        (["curator", "--out", "{keys}"], 2, "key_exists"),
        (["alice", "--out", "{folder}", "--trust", "{folder}"], 2, "trust_store_invalid"),
        (["alice", "--out", "{folder}", "--trust", "{junk}"], 2, "trust_store_invalid"),
        (["alice", "--out", "{folder}", "--expires", "next tuesday"], 2, "invalid_argument"),
    ],
    ("keys", "revoke"): [
        (["zz"], 2, "unknown_key"),
        ([LONG], 2, "unknown_key"),
        (["zz", "--trust", "{missing}"], 2, "trust_file_not_configured"),
        (["zz", "--trust", "{fifo_json}"], 2, "trust_file_not_configured"),
    ],
    ("import", "pydoc"): [
        (["--out", "{doc}", "--key", "{key}"], 2, "not_a_folder"),
        (["--out", "{folder}", "--key", "{missing}"], 2, "key_not_found"),
        (["--out", "{folder}", "--key", "{fifo}"], 2, "key_invalid"),
        (["--out", "{folder}", "--key", "{folder}"], 2, "key_invalid"),
    ],
    ("ledger", "verify"): [
        (["--expect", "garbage"], 2, "invalid_expected_head"),
        (["--expect", "{fifo_json}"], 2, "invalid_expected_head"),
        (["--expect", "{latin1}"], 2, "invalid_expected_head"),
        (["--expect", "{deep}"], 2, "invalid_expected_head"),
        (["--expect", LONG], 2, "invalid_expected_head"),
        (["--expect", "[]"], 2, "invalid_expected_head"),
        (["--expect", '{"signed": "x"}'], 2, "invalid_expected_head"),
        (["--expect", '{"payload": 5, "payloadType": [], "signatures": [1, null]}'], 2, "invalid_expected_head"),
        (["--expect", '{"payload": "e30=", "payloadType": "x", "signatures": [{"keyid": 1, "sig": 2}]}'], 2, None),
        (["--expect", '{"payload": "%%%", "payloadType": "x", "signatures": [{"keyid": "k", "sig": "!"}]}'], 1, None),
        (["--expect", '{"payload": "e30=", "payloadType": "x", "signatures": []}'], 1, None),
    ],
    ("ledger", "sign-head"): [
        (["--expect", "garbage"], 2, "invalid_expected_head"),
        (["--expect", "{fifo_json}"], 2, "invalid_expected_head"),
        (["--expect", '{"signed": [1]}'], 2, "invalid_expected_head"),
    ],
    ("ledger", "reset"): [([], 2, "confirmation_required")],
    ("ledger", "export"): [(["--format", "xml"], 2, "invalid_argument")],
    ("corpus", "report"): [
        (["--gap-s", "-1"], 2, "invalid_argument"),
        (["--gap-s", "nan"], 2, "invalid_argument"),
        (["--gap-s", "inf"], 2, "invalid_argument"),
        (["--html", "{folder}"], 2, "invalid_output"),
        (["--html", "{missing_dir_file}"], 2, "invalid_output"),
    ],
    ("registry", "accept"): [([], {1, 2}, None)],  # type: ignore[list-item]
}

CASES = [
    pytest.param(path, args, exit_code, code, id=" ".join([*path, *(a[:24] for a in args)]))
    for path, cases in HOSTILE.items()
    for args, exit_code, code in cases
]


@pytest.mark.parametrize(("path", "args", "exit_code", "code"), CASES)
def test_hostile_arguments(
    paths: dict[str, str], path: tuple[str, ...], args: list[str], exit_code: int | set[int], code: str | None
) -> None:
    check([*path, *fill(args, paths)], exit_code, code)


def test_a_refused_file_leaves_nothing_signed(paths: dict[str, str]) -> None:
    check(["sign", paths["doc"], paths["latin1"], *fill(SIGN, paths)], 2, "not_utf8")
    assert not manifest_path(Path(paths["doc"])).exists()


def test_a_refused_trust_file_leaves_no_key(paths: dict[str, str]) -> None:
    check(["keys", "new", "alice", "--out", paths["folder"], "--trust", paths["junk"]], 2, "trust_store_invalid")
    assert not list(Path(paths["folder"]).iterdir())


def test_bad_settings_are_one_coded_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_ANSWER__TOP_K", "many")
    check(["documents"], 2, "invalid_settings")


def test_the_console_script_behaves_the_same(paths: dict[str, str]) -> None:
    """The entry point a user runs (a separate process): the same codes, one line, no traceback."""
    for args, exit_code, code in (
        (["sign", paths["latin1"], *fill(SIGN, paths)], 2, "not_utf8"),
        (["verify", paths["docs"], "--no-such-option"], 2, "unknown_option"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", "from rag.cli import main; main()", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "80"},
            timeout=120,
        )
        assert done.returncode == exit_code and "Traceback" not in done.stdout + done.stderr, done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
        assert ERROR_LINE.match(done.stderr.strip()) and f"[{code}]" in done.stderr


def test_names_that_look_like_markup_are_printed_as_written(tmp_path: Path) -> None:
    """Paths and names are curators' text: rich must never read them as markup (styled away, or an error)."""
    odd = tmp_path / "[red]" / "[bold]keys"
    made = check(["keys", "new", "alice", "--out", str(odd)], 0)
    assert f"{odd}/alice.key" in made.stdout.replace("\n", "")
    folder = tmp_path / "[italic]"
    folder.mkdir()
    (folder / "[bold]pass.md").write_text(pydoc_text("pass"))
    listed = check(["verify", str(folder)], 1)
    assert f"{folder}/[bold]pass.md" in listed.stdout and "missing_manifest" in listed.stdout
