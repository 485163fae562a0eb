"""Evaluation outputs: summary.json, report.md and report.html (one structure, two renderings), history.

A report is a list of sections, each a heading, one sentence saying what it shows, a table and
charts; Markdown and HTML are rendered from the same sections, so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.evaluation.summary import MODE_LABELS, MODES

SPAN_METRICS = [
    ("em", "Exact match"),
    ("f1", "Token F1"),
    ("contains", "Contains gold"),
    ("abstention_answerable", "Abstain (answerable)"),
    ("abstention_withheld", "Abstain (withheld)"),
    ("groundedness_pass", "Groundedness pass"),
    ("citation_precision", "Citation precision"),
    ("latency_p50_s", "Latency p50 (s)"),
    ("latency_p95_s", "Latency p95 (s)"),
]
CLAIM_METRICS = [
    ("precision", "Precision of released answers"),
    ("coverage", "Coverage (released / answerable)"),
    ("hallucination_withheld", "Answered when withheld (hallucination)"),
    ("accuracy_at_half_coverage", "Accuracy at half coverage"),
    ("aurc", "AURC (lower is better)"),
]
COLOURS = {"grounded": "#2b7a78", "free": "#8fc1a9", "quote": "#3aafa9", "ungrounded": "#de6b48"}


@dataclass
class Section:
    title: str
    sentence: str
    rows: list[list[str]] = field(default_factory=list)  # first row is the header
    charts: list[tuple[str, Path]] = field(default_factory=list)
    level: int = 2


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _mode_bars(modes: dict[str, Any], keys: list[tuple[str, str]], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, mode in enumerate(MODES):
        values = [modes[mode][k] or 0.0 for k, _ in keys]
        ax.bar([k + i * 0.2 for k in range(len(keys))], values, 0.2, label=MODE_LABELS[mode], color=COLOURS[mode])
    ax.set_xticks([k + 0.3 for k in range(len(keys))], [label for _, label in keys])
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(frameon=False)
    return _save(fig, path)


def _risk_coverage_chart(name: str, modes: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for mode in MODES:
        points = modes[mode].get("risk_coverage") or []
        if points:
            ax.plot([c for c, _ in points], [a for _, a in points], label=MODE_LABELS[mode], color=COLOURS[mode])
    ax.axvline(0.5, color="#999", linestyle=":", linewidth=1)
    ax.axhline(0.7, color="#999", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (released answers / answerable questions)")
    ax.set_ylabel("accuracy of the most confident")
    ax.set_title(f"Risk–coverage: {name}\nreleased answers ranked by the reader's mean token log-probability",
                 fontsize="medium")  # fmt: skip
    ax.legend(frameon=False)
    return _save(fig, path)


def _tail_chart(tail: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for mode in MODES:
        ax.plot(
            [b["label"] for b in tail],
            [b[f"f1_{mode}"] for b in tail],
            marker="o",
            label=MODE_LABELS[mode],
            color=COLOURS[mode],
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("F1 by how rare the gold answer's words are in the corpus")
    ax.legend(frameon=False)
    return _save(fig, path)


def _answer_sections(name: str, data: dict[str, Any], out: Path, first: bool) -> list[Section]:
    modes = data["modes"]
    suffix = "" if first else f"_{name}"
    header = ["figure", *(MODE_LABELS[m] for m in MODES)]
    claims = Section(
        f"What it says is true: {name}",
        f"Of {data['answerable']} answerable questions and {data['withheld']} whose answer was withheld from the "
        "store, the share of released answers that are right, how many it answers, and how many withheld "
        "questions it still answers; correct means the answer contains a gold answer or reaches token F1 ≥ 0.5.",
        [header, *([label, *(_fmt(modes[m].get(k)) for m in MODES)] for k, label in CLAIM_METRICS)],
        [(f"Risk–coverage, {name}", _risk_coverage_chart(name, modes, out / f"chart_risk_coverage{suffix}.png"))],
    )
    span = Section(
        f"Span metrics and latency: {name}",
        f"SQuAD-style figures on answerable questions (abstentions score 0); retrieval recall@{data['top_k']} "
        f"{_fmt(data['retrieval_recall_at_k'])}, F1 gain of grounding {_fmt(data['f1_gain_grounded_vs_ungrounded'])}.",
        [header, *([label, *(_fmt(modes[m][k]) for m in MODES)] for k, label in SPAN_METRICS)],
        [
            (
                "Answer quality",
                _mode_bars(
                    modes,
                    [("em", "EM"), ("f1", "F1"), ("contains", "contains")],
                    "Answer quality on answerable questions",
                    out / f"chart_quality{suffix}.png",
                ),
            ),
            (
                "Abstention",
                _mode_bars(
                    modes,
                    [
                        ("abstention_answerable", "answerable (want low)"),
                        ("abstention_withheld", "withheld (want high)"),
                    ],
                    "Abstention rate",
                    out / f"chart_abstention{suffix}.png",
                ),
            ),
        ],
    )
    sections = [claims, span]
    if data.get("tail"):
        sections.append(
            Section(
                f"F1 by tail bucket: {name}",
                "F1 on answerable questions by how rare the gold answer's words are in the corpus (quartiles of "
                "document frequency): the rare facts are the ones model collapse loses first.",
                [
                    ["bucket", "questions", "max df", *(MODE_LABELS[m] for m in MODES)],
                    *(
                        [
                            b["label"],
                            str(b["questions"]),
                            str(b["max_answer_word_df"]),
                            *(_fmt(b[f"f1_{m}"]) for m in MODES),
                        ]
                        for b in data["tail"]
                    ),
                ],
                [("F1 by tail bucket", _tail_chart(data["tail"], out / f"chart_tail{suffix}.png"))],
                level=3,
            )
        )
    update = data.get("knowledge_update")
    if update:
        keys = [
            ("questions", "edited questions"),
            ("answered_after_edit", "answered after the edit"),
            ("followed", "followed (of answered)"),
            ("stale", "stale (of answered)"),
            ("followed_of_all", "followed (of all edited)"),
            ("abstained_after_removal", "abstained after removal"),
        ]
        sections.append(
            Section(
                f"Facts follow the corpus: {name}",
                "Each gold passage was rewritten with its answer replaced by another of the same kind, signed "
                "`human-edited-ai`, ingested (a replace in the ledger) and asked again, then removed and asked once "
                "more: grounded answers should follow the edit and stop after removal; the ungrounded model cannot.",
                [header, *([label, *(_fmt(update.get(m, {}).get(k)) for m in MODES)] for k, label in keys)],
            )
        )
    return sections


def _guardrail_section(name: str, guard: dict[str, Any]) -> Section:
    baseline = guard.get("baseline", {})
    rows = [["item kind", "items", "production checker", "word coverage alone"]]
    for kind, rate in guard.get("detected", {}).items():
        rows.append(
            [
                f"{kind} (blocked)",
                str(guard.get("items", {}).get(kind, "")),
                _fmt(rate),
                _fmt(baseline.get("detected", {}).get(kind)),
            ]
        )
    for kind, rate in guard.get("supported_pass", {}).items():
        rows.append(
            [
                f"{kind} (supported, passed)",
                str(guard.get("items", {}).get(kind, "")),
                _fmt(rate),
                _fmt(baseline.get("supported_pass", {}).get(kind)),
            ]
        )
    rows.append(
        ["false alarms on supported items", "", _fmt(guard.get("false_alarm")), _fmt(baseline.get("false_alarm"))]
    )
    return Section(
        f"The guardrail itself: {name}",
        "Independent of the reader: each gold answer sentence, and perturbed copies of it that the passage does "
        "not support, checked against the gold passage by the production groundedness check; the last column is "
        "what counting shared words alone would do.",
        rows,
    )


def _stability_section(summary: dict[str, Any]) -> Section | None:
    names = list(summary.get("datasets", {}))
    if len(names) < 2:
        return None
    rows = [["figure", *names, *(f"drop, {n}" for n in names[1:])]]
    for item in summary["stability"]:
        rows.append(
            [
                item["figure"],
                *(_fmt(item["values"][n]) for n in names),
                *(_fmt(item["drop_from_first"][n]) for n in names[1:]),
            ]
        )
    return Section(
        "Stability across datasets",
        f"Each figure on every dataset and its drop from the first ({names[0]}), positive when worse (lower where "
        "higher is better, higher where lower is better): a claim that holds only on the data it was tuned on "
        "shows here as a large drop.",
        rows,
    )


def build_sections(summary: dict[str, Any], out: Path) -> list[Section]:
    datasets = summary.get("datasets") or {summary.get("dataset", "dataset"): summary}
    sections: list[Section] = []
    for i, (name, data) in enumerate(datasets.items()):
        if "modes" in data:
            sections += _answer_sections(name, data, out, first=i == 0)
        if data.get("guardrail"):
            sections.append(_guardrail_section(name, data["guardrail"]))
    stable = _stability_section(summary)
    if stable:
        sections.append(stable)
    peer = summary.get("peer")
    if peer and "modes" in summary:
        sections.append(
            Section(
                "Against the LangChain peer",
                "Same sample, same embedder; the peer never abstains and has every passage in its store.",
                [
                    ["figure", "ours", "peer"],
                    [
                        "retrieval recall@k",
                        _fmt(summary["retrieval_recall_at_k"]),
                        _fmt(peer.get("retrieval_recall_at_k")),
                    ],
                    ["grounded F1", _fmt(summary["modes"]["grounded"]["f1"]), _fmt(peer.get("grounded_f1"))],
                    ["ungrounded F1", _fmt(summary["modes"]["ungrounded"]["f1"]), _fmt(peer.get("ungrounded_f1"))],
                ],
            )
        )
    return sections


def _intro(summary: dict[str, Any]) -> str:
    config = summary["config"]
    parts = [f"Datasets: {', '.join(f'`{d}`' for d in config['datasets'])} (seed {config['seed']})."]
    if "modes" in summary:
        parts.append(
            f"Generator: {summary['generator']}. Corpus ledger head of the first: `{summary['corpus_ledger_head']}`."
        )
    parts.append(f"Wall time of this run: {summary['wall_seconds_this_run']} s.")
    return " ".join(parts)


def write_reports(summary: dict[str, Any], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sections = build_sections(summary, out)
    intro = _intro(summary)
    lines = ["# Evaluation report", "", intro, ""]
    for section in sections:
        lines += ["#" * section.level + " " + section.title, "", section.sentence, ""]
        if section.rows:
            lines += ["| " + " | ".join(section.rows[0]) + " |", "|" + "---|" * len(section.rows[0])]
            lines += ["| " + " | ".join(row) + " |" for row in section.rows[1:]]
            lines.append("")
        lines += [f"![{title}]({path.name})" for title, path in section.charts]
        if section.charts:
            lines.append("")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "report.html").write_text(_html(intro, sections), encoding="utf-8")


def _html(intro: str, sections: list[Section]) -> str:
    def row(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    body = [f"<h1>Evaluation report</h1><p>{html.escape(intro)}</p>"]
    for section in sections:
        tag = f"h{section.level}"
        body.append(f"<{tag}>{html.escape(section.title)}</{tag}><p>{html.escape(section.sentence)}</p>")
        if section.rows:
            body.append("<table>" + row(section.rows[0], "th") + "".join(row(r) for r in section.rows[1:]) + "</table>")
        for title, path in section.charts:
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Evaluation report</title>"
        f"<meta name='viewport' content='width=device-width'><style>{style}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


def append_history(path: Path, summary: dict[str, Any]) -> None:
    if "modes" not in summary:
        return  # a guardrail-only run measures no answers
    grounded = summary["modes"]["grounded"]
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": summary["config"]["dataset"],
        "questions": summary["questions"],
        "generator": summary["generator"],
        "corpus_ledger_head": summary["corpus_ledger_head"],
        "retrieval_recall_at_k": summary["retrieval_recall_at_k"],
        **{f"{mode}_f1": summary["modes"][mode]["f1"] for mode in MODES},
        **{f"{mode}_precision": summary["modes"][mode].get("precision") for mode in MODES},
        **{f"{mode}_hallucination": summary["modes"][mode].get("hallucination_withheld") for mode in MODES},
        "abstention_withheld": grounded["abstention_withheld"],
        "abstention_answerable": grounded["abstention_answerable"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_history(entries: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{e['time'][5:16]}\n{e['corpus_ledger_head'][:8]}" for e in entries]
    for key, name in (
        ("grounded_precision", "grounded precision"),
        ("grounded_hallucination", "grounded answered-withheld"),
        ("grounded_f1", "grounded F1"),
        ("ungrounded_f1", "ungrounded F1"),
        ("retrieval_recall_at_k", "recall@k"),
    ):
        values = [e.get(key) for e in entries]
        if any(v is not None for v in values):
            ax.plot(labels, [float("nan") if v is None else v for v in values], marker="o", label=name)
    ax.set_ylim(0, 1)
    ax.set_title("Evaluation history across corpus versions")
    ax.legend(frameon=False, fontsize="small")
    return _save(fig, path)
