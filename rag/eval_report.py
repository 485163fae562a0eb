"""Evaluation outputs: summary.json, report.md, report.html (charts inline), and the run history."""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.evaluation import MODE_LABELS, MODES

METRICS = [
    ("em", "Exact match"),
    ("f1", "Token F1"),
    ("contains", "Contains gold"),
    ("abstention_answerable", "Abstain (answerable)"),
    ("abstention_withheld", "Abstain (withheld)"),
    ("hallucination_withheld", "Answer (withheld)"),
    ("groundedness_pass", "Groundedness pass"),
    ("citation_precision", "Citation precision"),
    ("latency_p50_s", "Latency p50 (s)"),
    ("latency_p95_s", "Latency p95 (s)"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _charts(summary: dict[str, Any], out: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = summary["modes"]
    colours = {"grounded": "#2b7a78", "quote": "#3aafa9", "ungrounded": "#de6b48"}
    charts: list[tuple[str, Path]] = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = [("em", "EM"), ("f1", "F1"), ("contains", "contains")]
    for i, mode in enumerate(MODES):
        ax.bar([k + i * 0.27 for k in range(len(keys))], [modes[mode][k] for k, _ in keys], 0.27,
               label=MODE_LABELS[mode], color=colours[mode])  # fmt: skip
    ax.set_xticks([k + 0.27 for k in range(len(keys))], [label for _, label in keys])
    ax.set_ylim(0, 1)
    ax.set_title("Answer quality on answerable questions")
    ax.legend(frameon=False)
    charts.append(("Answer quality, grounded vs ungrounded", _save(fig, out / "chart_quality.png")))

    tail = summary["tail"]
    if tail:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for mode in MODES:
            ax.plot([b["label"] for b in tail], [b[f"f1_{mode}"] for b in tail], marker="o",
                    label=MODE_LABELS[mode], color=colours[mode])  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_ylabel("F1")
        ax.set_title("F1 by how rare the gold answer's words are in the corpus")
        ax.legend(frameon=False)
        charts.append(("F1 by tail bucket", _save(fig, out / "chart_tail.png")))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, mode in enumerate(MODES):
        values = [modes[mode]["abstention_answerable"], modes[mode]["abstention_withheld"]]
        ax.bar([k + i * 0.27 for k in range(2)], values, 0.27, label=MODE_LABELS[mode], color=colours[mode])
    ax.set_xticks([0.27, 1.27], ["answerable (want low)", "withheld (want high)"])
    ax.set_ylim(0, 1)
    ax.set_title("Abstention rate")
    ax.legend(frameon=False)
    charts.append(("Abstention on answerable vs withheld questions", _save(fig, out / "chart_abstention.png")))
    return charts


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _table(summary: dict[str, Any]) -> list[list[str]]:
    rows = [["metric", *(MODE_LABELS[m] for m in MODES)]]
    for key, label in METRICS:
        rows.append([label, *(_fmt(summary["modes"][m][key]) for m in MODES)])
    return rows


def write_reports(summary: dict[str, Any], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    charts = _charts(summary, out)
    table = _table(summary)
    k = summary["top_k"]
    lines = [
        "# Evaluation report",
        "",
        f"Dataset `{summary['config']['dataset']}`, {summary['questions']} questions "
        f"(seed {summary['config']['seed']}): "
        f"{summary['answerable']} answerable, {summary['withheld']} with the answer withheld from the store. "
        f"Generator: {summary['generator']}. Corpus ledger head `{summary['corpus_ledger_head']}`.",
        "",
        f"Retrieval recall@{k}: **{summary['retrieval_recall_at_k']:.3f}**. "
        f"F1 gain of grounding: **{summary['f1_gain_grounded_vs_ungrounded']:+.3f}**. "
        f"Wall time of this run: {summary['wall_seconds_this_run']} s.",
        "",
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
        *("| " + " | ".join(row) + " |" for row in table[1:]),
        "",
        "## F1 by tail bucket (gold-answer words' document frequency in the corpus, quartiles)",
        "",
        "| bucket | questions | max df | " + " | ".join(MODE_LABELS[m] for m in MODES) + " |",
        "|---|---|---|" + "---|" * len(MODES),
        *(
            f"| {b['label']} | {b['questions']} | {b['max_answer_word_df']} | "
            + " | ".join(_fmt(b[f"f1_{m}"]) for m in MODES)
            + " |"
            for b in summary["tail"]
        ),
    ]
    peer = summary.get("peer")
    if peer:
        lines += [
            "",
            "## Against the LangChain peer (same sample, same embedder)",
            "",
            "| figure | ours | peer |",
            "|---|---|---|",
            f"| retrieval recall@k | {_fmt(summary['retrieval_recall_at_k'])} "
            f"| {_fmt(peer.get('retrieval_recall_at_k'))} |",
            f"| grounded F1 | {_fmt(summary['modes']['grounded']['f1'])} | {_fmt(peer.get('grounded_f1'))} |",
            f"| ungrounded F1 | {_fmt(summary['modes']['ungrounded']['f1'])} | {_fmt(peer.get('ungrounded_f1'))} |",
        ]
    lines += ["", *(f"![{title}]({path.name})" for title, path in charts), ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _write_html(summary, table, charts, out, peer)


def _write_html(
    summary: dict[str, Any], table: list[list[str]], charts: list[tuple[str, Path]], out: Path, peer: Any
) -> None:
    def row(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    images = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, p in charts
    )
    peer_html = ""
    if peer:
        peer_html = "<h2>Against the LangChain peer</h2><table>" + row(["figure", "ours", "peer"], "th")
        peer_html += row(
            ["retrieval recall@k", _fmt(summary["retrieval_recall_at_k"]), _fmt(peer.get("retrieval_recall_at_k"))]
        )
        peer_html += row(["grounded F1", _fmt(summary["modes"]["grounded"]["f1"]), _fmt(peer.get("grounded_f1"))])
        peer_html += "</table>"
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Evaluation report</h1><p>{summary['questions']} questions ({summary['answerable']} answerable, "
        f"{summary['withheld']} withheld); generator {html.escape(summary['generator'])}; retrieval recall@"
        f"{summary['top_k']} {summary['retrieval_recall_at_k']:.3f}; F1 gain of grounding "
        f"{summary['f1_gain_grounded_vs_ungrounded']:+.3f}.</p><table>"
        + row(table[0], "th")
        + "".join(row(r) for r in table[1:])
        + "</table>"
        + peer_html
        + images
        + "</body></html>"
    )
    (out / "report.html").write_text(body, encoding="utf-8")


def append_history(path: Path, summary: dict[str, Any]) -> None:
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": summary["config"]["dataset"],
        "questions": summary["questions"],
        "generator": summary["generator"],
        "corpus_ledger_head": summary["corpus_ledger_head"],
        "retrieval_recall_at_k": summary["retrieval_recall_at_k"],
        **{f"{mode}_f1": summary["modes"][mode]["f1"] for mode in MODES},
        "abstention_withheld": summary["modes"]["grounded"]["abstention_withheld"],
        "abstention_answerable": summary["modes"]["grounded"]["abstention_answerable"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_history(entries: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{e['time'][5:16]}\n{e['corpus_ledger_head'][:8]}" for e in entries]
    for key, name in (("grounded_f1", "grounded F1"), ("ungrounded_f1", "ungrounded F1"),
                      ("retrieval_recall_at_k", "recall@k")):  # fmt: skip
        ax.plot(labels, [e[key] for e in entries], marker="o", label=name)
    ax.set_ylim(0, 1)
    ax.set_title("Evaluation history across corpus versions")
    ax.legend(frameon=False)
    return _save(fig, path)
