"""The evaluation report: one HTML file with score tables, plots and a gallery of examples.

``write_report`` writes ``<run_dir>/report.html`` and its pictures into ``<run_dir>/report_files/``
(JPEG thumbnails, PNG plots), linked by relative paths so the page opens from disk in any browser,
with no server. The page holds: overall and retrieval scores, accuracy per question type (worst
first) as a table and a bar chart, accuracy against the number of retrieved references k, and a
gallery that starts with the worst question types and, within a type, with the wrong answers. Every
piece of text from the records is HTML-escaped. A missing or unreadable image becomes a grey box
with a note saying why; it never stops the report.

A record (one per question, as run_eval.py writes them)::

    {"question_id": str, "question": str, "question_type": str, "image": path | bytes | None,
     "prediction": str, "answers": [str], "score": float (0..100, the VQA score),
     "references": [{"id": str, "title": str, "text": str, "image": path | bytes | None,
                     "score": float | None, "relevant": bool | None}]}
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rablip.data.images import load_image
from rablip.errors import DataError

REPORT_FILE = "report.html"
ASSETS_DIR = "report_files"
QUESTION_THUMB_PX = 224
REFERENCE_THUMB_PX = 112
REFERENCE_TEXT_CHARS = 400
REQUIRED_RECORD_KEYS = ("question_id", "question", "prediction", "answers", "score")
NO_TYPE = "(no type)"
# Top-level metric entries that get their own section (or are too long for the summary).
_OWN_SECTION_KEYS = {"per_question", "per_question_type", "retrieval"}
_MAX_SUMMARY_DICT = 50

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1150px; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
p.lead, .note { color: #555; } .note { font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots img { max-width: 100%; margin-right: 1em; vertical-align: top; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.7em; margin: 0.8em 0;
        border-left: 8px solid #999; }
.card.right { border-left-color: #2e8b57; } .card.partly { border-left-color: #d4a017; }
.card.wrong { border-left-color: #c0392b; }
.card-top { display: flex; gap: 1em; }
.card-top .qimg { flex: none; } .card-top .text { flex: 1; } .card-top dl { margin: 0.3em 0; }
dt { font-weight: bold; float: left; clear: left; width: 8.5em; } dd { margin-left: 9em; }
.verdict.right { color: #2e8b57; } .verdict.partly { color: #a07800; } .verdict.wrong { color: #c0392b; }
.refs { display: flex; flex-wrap: wrap; gap: 0.5em; margin-top: 0.6em; }
.ref { border: 1px solid #ddd; padding: 0.4em; width: 250px; font-size: 0.85em; background: #fafafa; }
.ref.relevant { border-color: #2e8b57; background: #f0faf3; }
.ref img { display: block; margin-bottom: 0.3em; } .ref .placeholder { margin-bottom: 0.3em; }
.placeholder { background: #ddd; color: #666; display: flex; align-items: center;
               justify-content: center; text-align: center; font-size: 0.8em; }
"""

# Marks the body once the page has loaded, so that a headless browser can tell whether every
# thumbnail and plot was found (data-images-loaded="all", or "N of M").
_IMAGE_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded",
    loaded.length === images.length ? "all" : loaded.length + " of " + images.length);
});
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _esc(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if 0 < abs(value) < 1 else f"{value:.2f}"


def _check_records(records: Sequence[Mapping[str, Any]]) -> None:
    """Raise DataError naming the record index and key of the first malformed record."""
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"report record {index} is a {type(record).__name__}, not a dict.")
        for key in REQUIRED_RECORD_KEYS:
            if key not in record:
                raise DataError(
                    f"report record {index} (question_id {record.get('question_id')!r}) has no {key!r}; "
                    f"each record needs {', '.join(REQUIRED_RECORD_KEYS)}."
                )
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 100:
            raise DataError(
                f"report record {index} (question_id {record['question_id']!r}): score must be a number "
                f"from 0 to 100 (the VQA score in percent), got {score!r}."
            )
        if not isinstance(record["answers"], (list, tuple)):
            raise DataError(f"report record {index}: 'answers' must be a list of strings.")
        references = record.get("references") or []
        if not isinstance(references, (list, tuple)) or not all(isinstance(ref, Mapping) for ref in references):
            raise DataError(f"report record {index} (question_id {record['question_id']!r}): 'references' "
                            "must be a list of dicts with id, title, text, image, score, relevant.")


def _question_type(record: Mapping[str, Any]) -> str:
    return str(record.get("question_type") or NO_TYPE)


def _accuracy_by_type(metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy per question type: the scorer's numbers, else the mean record score of the type."""
    scores_by_type: dict[str, list[float]] = {}
    for record in records:
        scores_by_type.setdefault(_question_type(record), []).append(float(record["score"]))
    accuracy = {name: sum(values) / len(values) for name, values in scores_by_type.items()}
    accuracy.update({str(name): float(value) for name, value in (metrics.get("per_question_type") or {}).items()})
    return accuracy


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{name} / ")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((name, value))
    return rows


def _summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if key in _OWN_SECTION_KEYS:
            continue
        if isinstance(value, Mapping):
            if len(value) <= _MAX_SUMMARY_DICT:
                rows += _flatten(value, f"{key} / ")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((key, value))
    return rows


def _write_thumbnail(image_ref: Any, out_path: Path, max_px: int, record: str) -> str | None:
    """Write a small RGB JPEG of the image; None and the reason when it cannot be read."""
    if isinstance(image_ref, (bytearray, memoryview)):
        image_ref = bytes(image_ref)
    try:
        image = load_image(image_ref, record=record)
        image.thumbnail((max_px, max_px))
        image.save(out_path, format="JPEG", quality=85)
    except (DataError, OSError) as err:
        return str(err)
    return None


def _image_html(image_ref: Any, run_dir: Path, file_name: str, max_px: int, record: str) -> str:
    """An <img> with a relative src, or a placeholder box with a note saying why there is none."""
    if image_ref is None:
        return f'<div class="placeholder" style="width:{max_px}px;height:{max_px}px">no image</div>'
    relative = f"{ASSETS_DIR}/{file_name}"
    problem = _write_thumbnail(image_ref, run_dir / relative, max_px, record)
    if problem is None:
        return f'<img src="{_esc(relative)}" alt="image of {_esc(record)}" style="max-width:{max_px}px">'
    return (f'<div class="placeholder" style="width:{max_px}px;height:{max_px}px">image missing '
            f'or unreadable</div><div class="note">{_esc(problem)}</div>')


def _save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)


def _plot_accuracy_vs_k(accuracy_vs_k: Mapping[int, float], path: Path) -> None:
    points = sorted((int(k), float(value)) for k, value in accuracy_vs_k.items())
    figure = Figure(figsize=(5, 3.4))
    axes = figure.add_subplot()
    axes.plot([k for k, _ in points], [value for _, value in points], marker="o")
    axes.set_xticks([k for k, _ in points])
    axes.set_xlabel("k (retrieved references given to the model)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy against k")
    axes.grid(alpha=0.3)
    _save_figure(figure, path)


def _plot_accuracy_by_type(types_worst_first: Sequence[tuple[str, float]], path: Path) -> None:
    figure = Figure(figsize=(6, max(2.5, 0.32 * len(types_worst_first) + 1.2)))
    axes = figure.add_subplot()
    names = [name for name, _ in types_worst_first]
    positions = list(range(len(names)))[::-1]  # worst at the top
    axes.barh(positions, [value for _, value in types_worst_first], color="#4a7ab5")
    axes.set_yticks(positions, labels=names)
    axes.set_xlim(0, 100)
    axes.set_xlabel("accuracy (%)")
    axes.set_title("Accuracy per question type")
    _save_figure(figure, path)


def _checked_accuracy_vs_k(accuracy_vs_k: Mapping[Any, Any]) -> dict[int, float]:
    checked: dict[int, float] = {}
    for k, value in accuracy_vs_k.items():
        try:
            checked[int(k)] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"accuracy_vs_k entry {k!r}: {value!r} is not a number of references "
                            "mapped to an accuracy; pass {k: accuracy}.") from None
    return checked


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _text_cell(value: Any) -> str:
    return f"<td>{_esc(value)}</td>"


def _num_cell(value: Any) -> str:
    return f'<td class="num">{_format_number(value)}</td>'


def _verdict(score: float) -> tuple[str, str]:
    """CSS class and words for a per-question VQA score."""
    if score >= 100:
        return "right", "right"
    if score <= 0:
        return "wrong", "wrong"
    return "partly", "partly right"


def _reference_html(reference: Mapping[str, Any], run_dir: Path, file_name: str, rank: int) -> str:
    relevant = reference.get("relevant")
    relevance = {True: "relevant", False: "not relevant"}.get(relevant, "relevance unknown")
    score = reference.get("score")
    score_text = "score n/a" if score is None else f"score {_format_number(score)}"
    text = str(reference.get("text") or "")
    if len(text) > REFERENCE_TEXT_CHARS:
        text = text[:REFERENCE_TEXT_CHARS].rstrip() + " …"
    parts = [f'<div class="ref{" relevant" if relevant is True else ""}">',
             f"<b>#{rank}</b> {_esc(reference.get('title') or '')} "
             f"<span class=\"note\">[{_esc(reference.get('id', ''))}]</span><br>",
             f"<span class=\"note\">{score_text} · {relevance}</span>"]
    if reference.get("image") is not None:
        parts.append(_image_html(reference["image"], run_dir, file_name, REFERENCE_THUMB_PX,
                                 f"reference {reference.get('id', rank)}"))
    if text:
        parts.append(f"<div>{_esc(text)}</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _card_html(record: Mapping[str, Any], position: int, run_dir: Path) -> str:
    score = float(record["score"])
    css, words = _verdict(score)
    stem = f"q{position:04d}"
    question_image = _image_html(record.get("image"), run_dir, f"{stem}.jpg", QUESTION_THUMB_PX,
                                 f"question {record['question_id']}")
    answers = ", ".join(_esc(answer) for answer in record["answers"]) or "(none)"
    references = record.get("references") or []
    reference_html = "\n".join(
        _reference_html(reference, run_dir, f"{stem}_r{rank:02d}.jpg", rank)
        for rank, reference in enumerate(references, start=1)
    ) or '<span class="note">no references</span>'
    return f"""<div class="card {css}" id="q-{_esc(record['question_id'])}">
<div class="card-top">
<div class="qimg" style="width:{QUESTION_THUMB_PX}px">{question_image}</div>
<div class="text"><dl>
<dt>question</dt><dd>{_esc(record['question'])}</dd>
<dt>type</dt><dd>{_esc(_question_type(record))}</dd>
<dt>id</dt><dd>{_esc(record['question_id'])}</dd>
<dt>generated</dt><dd><b>{_esc(record['prediction'])}</b></dd>
<dt>gold answers</dt><dd>{answers}</dd>
<dt>verdict</dt><dd class="verdict {css}"><b>{words}</b> (VQA score {_format_number(score)})</dd>
</dl></div>
</div>
<div class="refs">{reference_html}</div>
</div>"""


def write_report(
    run_dir: str | os.PathLike,
    *,
    title: str,
    metrics: dict,
    records: list[dict],
    accuracy_vs_k: dict[int, float] | None = None,
    gallery_size: int = 24,
    complete_shown: Callable[[list[dict]], None] | None = None,
) -> Path:
    """Write ``<run_dir>/report.html`` (and its pictures in ``report_files/``); return its path.

    ``metrics`` is the scorer's output: ``overall``, optionally ``per_question_type`` ({type: %})
    and ``retrieval`` (recall@k, MRR, ...). ``records`` are the per-question records described in
    the module docstring; the gallery shows ``gallery_size`` of them, worst question types first
    and wrong answers first within a type. ``accuracy_vs_k`` ({k: accuracy %}) adds a plot.
    ``complete_shown`` is called with the records the gallery shows, before they are drawn, so a
    caller can fill in images and reference texts for those alone (a large split's records can then
    stay small).
    """
    _check_records(records)
    run_dir = Path(run_dir)
    (run_dir / ASSETS_DIR).mkdir(parents=True, exist_ok=True)
    accuracy_by_type = _accuracy_by_type(metrics, records)
    types_worst_first = sorted(accuracy_by_type.items(), key=lambda item: (item[1], item[0]))
    type_rank = {name: rank for rank, (name, _) in enumerate(types_worst_first)}
    count_by_type: dict[str, int] = {}
    for record in records:
        count_by_type[_question_type(record)] = count_by_type.get(_question_type(record), 0) + 1

    sections = [f"<h1>{_esc(title)}</h1>",
                f'<p class="lead">{len(records)} questions. Scores are in percent (VQA accuracy) unless '
                "a name says otherwise. Question types are listed worst first.</p>"]

    summary = _summary_rows(metrics)
    if summary:
        sections += ["<h2>Summary</h2>", _table(["metric", "value"],
                                                [[_text_cell(name), _num_cell(value)] for name, value in summary])]
    if isinstance(metrics.get("retrieval"), Mapping) and metrics["retrieval"]:
        rows = [[_text_cell(name), _num_cell(value)] for name, value in _flatten(metrics["retrieval"])]
        sections += ["<h2>Retrieval</h2>",
                     '<p class="note">recall@k and precision@k in percent; MRR from 0 to 1.</p>',
                     _table(["metric", "value"], rows)]

    sections.append("<h2>Accuracy per question type</h2>")
    type_rows = [[_text_cell(name), _num_cell(count_by_type.get(name, "—")), _num_cell(value)]
                 for name, value in types_worst_first]
    if "overall" in metrics:
        type_rows.append([_text_cell("overall"), _num_cell(len(records)), _num_cell(metrics["overall"])])
    plots = []
    if types_worst_first:
        _plot_accuracy_by_type(types_worst_first, run_dir / ASSETS_DIR / "accuracy_per_type.png")
        plots.append(f'<img src="{ASSETS_DIR}/accuracy_per_type.png" alt="bar chart of accuracy per question type">')
    sections.append(_table(["question type", "questions", "accuracy (%)"], type_rows))
    if accuracy_vs_k:
        _plot_accuracy_vs_k(_checked_accuracy_vs_k(accuracy_vs_k), run_dir / ASSETS_DIR / "accuracy_vs_k.png")
        plots.append(f'<img src="{ASSETS_DIR}/accuracy_vs_k.png" alt="plot of accuracy against k">')
    else:
        plots.append('<p class="note">No accuracy-against-k numbers were given, so there is no k plot.</p>')
    sections.append('<h2>Plots</h2><div class="plots">' + "\n".join(plots) + "</div>")

    ordered = sorted(records, key=lambda record: (type_rank[_question_type(record)], float(record["score"])))
    shown = ordered[:max(gallery_size, 0)]
    if complete_shown is not None:
        complete_shown(shown)
    sections.append(f"<h2>Examples</h2><p class=\"note\">{len(shown)} of {len(records)} questions: worst "
                    "question types first, wrong answers first within a type. Green border: right, "
                    "yellow: partly right, red: wrong. References are in retrieval order; a green "
                    "reference is labelled relevant.</p>")
    sections += [_card_html(record, position, run_dir) for position, record in enumerate(shown)]

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n"
            f"<script>{_IMAGE_CHECK_SCRIPT}</script>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")
    report_path = run_dir / REPORT_FILE
    partial_path = run_dir / (REPORT_FILE + ".partial")
    partial_path.write_text(page, encoding="utf-8")
    os.replace(partial_path, report_path)
    return report_path
