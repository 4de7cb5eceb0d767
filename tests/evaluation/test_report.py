"""report.html: score tables worst first, plots, a gallery with thumbnails and placeholders, escaping,
and (when Chromium is installed) that a headless browser loads every image from disk."""

from __future__ import annotations

import io
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from rablip.errors import DataError
from rablip.evaluation.report import ASSETS_DIR, QUESTION_THUMB_PX, REFERENCE_THUMB_PX, write_report

CHROMIUM = Path("/usr/bin/chromium")
EXIF_ORIENTATION = 0x0112
SCRIPT_QUESTION = "<script>alert('x')</script> what colour is this?"


class _PageParser(HTMLParser):
    """Collects img srcs, script tags, tables (rows of cell texts) and the body's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.img_srcs: list[str] = []
        self.script_tags = 0
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.img_srcs.append(attributes["src"])
        elif tag == "script":
            self.script_tags += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _sideways_jpeg(path: Path) -> Path:
    """A 400x100 JPEG whose EXIF tag says: rotate 90 degrees to view it (shown 100x400)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return _save(Image.new("RGB", (400, 100), (200, 40, 40)), path, format="JPEG", exif=exif.tobytes())


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 90), (30, 160, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fixture(tmp_path: Path) -> tuple[dict, list[dict], dict[int, float]]:
    images = tmp_path / "images"
    bad = images / "bad.jpg"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("this is not a jpeg")
    records = [
        {"question_id": "q1", "question": "What colour is the bus?", "question_type": "what color",
         "image": str(_save(Image.new("RGB", (300, 200), (20, 60, 200)), images / "q1.png")),
         "prediction": "blue", "answers": ["blue", "navy"], "score": 100.0,
         "references": [
             {"id": "kb-7", "title": "London bus", "text": "Buses in London are red.",
              "image": str(_save(Image.new("L", (256, 256), 128), images / "kb7.jpg", format="JPEG")),
              "score": 0.91, "relevant": True},
             {"id": "kb-9", "title": "Sky", "text": "The sky is blue. " * 60, "image": None,
              "score": 0.42, "relevant": False}]},
        {"question_id": "q2", "question": SCRIPT_QUESTION, "question_type": "what color",
         "image": str(_sideways_jpeg(images / "q2.jpg")), "prediction": "green & <b>", "answers": ["red"],
         "score": 0.0,
         "references": [{"id": "kb-3", "title": "Leaf", "text": "", "image": _png_bytes(), "score": 0.5,
                         "relevant": None}]},
        {"question_id": "q3", "question": "How many dogs?", "question_type": "how many",
         "image": str(images / "gone.png"), "prediction": "2", "answers": ["2", "3", "3"], "score": 60.0,
         "references": [{"id": "kb-5", "title": "Broken", "text": "dogs", "image": str(bad), "score": None,
                         "relevant": True}]},
        {"question_id": "q4", "question": "How many cats?", "question_type": "how many", "image": None,
         "prediction": "5", "answers": ["1"], "score": 0.0, "references": []},
    ]
    metrics = {"overall": 40.0, "num_questions": 4, "missing": 0,
               "per_question_type": {"what color": 50.0, "how many": 30.0},
               "per_question": {"q1": 100.0, "q2": 0.0, "q3": 60.0, "q4": 0.0},
               "retrieval": {"recall@1": 50.0, "recall@5": 75.0, "mrr": 0.625, "questions": 4},
               "metric": {"name": "VQA accuracy"}}
    return metrics, records, {0: 20.0, 1: 35.0, 5: 42.5}


def _write(tmp_path: Path, **overrides) -> tuple[Path, str, _PageParser]:
    metrics, records, accuracy_vs_k = _fixture(tmp_path)
    arguments = {"title": "OK-VQA <val>", "metrics": metrics, "records": records, "accuracy_vs_k": accuracy_vs_k}
    arguments.update(overrides)
    report = write_report(tmp_path / "run", **arguments)
    page = report.read_text(encoding="utf-8")
    parser = _PageParser()
    parser.feed(page)
    return report, page, parser


def test_tables_worst_type_first_with_overall_and_retrieval(tmp_path):
    report, _, parser = _write(tmp_path)
    assert report == tmp_path / "run" / "report.html"
    type_table = next(table for table in parser.tables if table[0] == ["question type", "questions", "accuracy (%)"])
    assert type_table[1:] == [["how many", "2", "30.00"], ["what color", "2", "50.00"], ["overall", "4", "40.00"]]
    summary, retrieval = [dict(map(tuple, table[1:])) for table in parser.tables if table[0] == ["metric", "value"]]
    assert summary == {"overall": "40.00", "num_questions": "4", "missing": "0", "metric / name": "VQA accuracy"}
    assert retrieval == {"recall@1": "50.00", "recall@5": "75.00", "mrr": "0.625", "questions": "4"}
    assert not any("per_question" in row[0] for table in parser.tables for row in table)


def test_images_are_relative_existing_thumbnails(tmp_path):
    report, _, parser = _write(tmp_path)
    run_dir = report.parent
    # q1 + its reference, q2 + its bytes reference, the two plots; q3's two images are placeholders.
    assert len(parser.img_srcs) == 6
    for src in parser.img_srcs:
        assert not src.startswith("/") and ":" not in src and src.startswith(f"{ASSETS_DIR}/")
        assert (run_dir / src).is_file()
    thumbs = [src for src in parser.img_srcs if src.endswith(".jpg")]
    plots = [src for src in parser.img_srcs if src.endswith(".png")]
    assert len(thumbs) == 4 and len(plots) == 2
    for src in thumbs:
        with Image.open(run_dir / src) as thumb:
            assert thumb.format == "JPEG" and thumb.mode == "RGB"
            assert max(thumb.size) <= QUESTION_THUMB_PX
    for src in plots:
        with Image.open(run_dir / src) as plot:
            assert plot.format == "PNG"
    sizes = {}
    for src in thumbs:
        with Image.open(run_dir / src) as thumb:
            sizes[src] = thumb.size
    # The sideways JPEG (q2, gallery position 2) was turned upright before shrinking.
    assert sizes[f"{ASSETS_DIR}/q0002.jpg"] == (QUESTION_THUMB_PX // 4, QUESTION_THUMB_PX)
    assert sizes[f"{ASSETS_DIR}/q0002_r01.jpg"] == (REFERENCE_THUMB_PX, REFERENCE_THUMB_PX * 90 // 120)


def test_missing_and_unreadable_images_get_placeholders_and_notes(tmp_path):
    _, page, parser = _write(tmp_path)
    text = " ".join(parser.text)
    assert page.count('class="placeholder"') == 3  # q3 missing, q3's broken reference, q4 without image
    assert "gone.png" in text and "does not exist" in text
    assert "bad.jpg" in text and "not an image Pillow can read" in text


def test_text_is_escaped(tmp_path):
    _, page, parser = _write(tmp_path)
    assert parser.script_tags == 1  # only the report's own image check
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "green &amp; &lt;b&gt;" in page and "<title>OK-VQA &lt;val&gt;</title>" in page
    assert SCRIPT_QUESTION in " ".join(parser.text)


def test_gallery_order_and_size(tmp_path):
    _, page, _ = _write(tmp_path)
    positions = [page.index(f'id="q-{qid}"') for qid in ("q4", "q3", "q2", "q1")]
    assert positions == sorted(positions)
    assert 'class="card wrong"' in page and 'class="card partly"' in page and 'class="card right"' in page
    long_text = "The sky is blue. " * 60
    assert long_text.strip() not in page and "The sky is blue. The sky is blue." in page

    _, small_page, _ = _write(tmp_path / "small", gallery_size=2)
    assert re.findall(r'id="q-(q\d)"', small_page) == ["q4", "q3"]
    assert "2 of 4 questions" in small_page


def test_without_type_metrics_or_k_curve(tmp_path):
    metrics, records, _ = _fixture(tmp_path)
    report = write_report(tmp_path / "bare", title="bare", metrics={"overall": 40.0}, records=records)
    page = report.read_text(encoding="utf-8")
    assert "no k plot" in page and not (report.parent / ASSETS_DIR / "accuracy_vs_k.png").exists()
    parser = _PageParser()
    parser.feed(page)
    type_table = next(t for t in parser.tables if t[0][0] == "question type")
    assert type_table[1] == ["how many", "2", "30.00"] and type_table[2] == ["what color", "2", "50.00"]


def test_malformed_record_names_index_and_key(tmp_path):
    metrics, records, _ = _fixture(tmp_path)
    del records[1]["score"]
    with pytest.raises(DataError, match=r"record 1 .*'score'"):
        write_report(tmp_path / "run", title="t", metrics=metrics, records=records)
    records[1]["score"] = 1.5e3
    with pytest.raises(DataError, match="0 to 100"):
        write_report(tmp_path / "run", title="t", metrics=metrics, records=records)
    assert not (tmp_path / "run" / "report.html").exists()


def _chromium(run_dir: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1200,2000", *mode,
               (run_dir / "report.html").resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium) to render the report headless")
def test_chromium_loads_every_image_and_renders(tmp_path):
    report, _, parser = _write(tmp_path)
    dumped = _chromium(report.parent, tmp_path / "profile", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dumped.stdout)
    assert body, dumped.stdout[:2000]
    assert 'data-images-loaded="all"' in body.group(0), body.group(0)
    assert f'data-images-total="{len(parser.img_srcs)}"' in body.group(0)

    shot = tmp_path / "shot.png"
    rendered = _chromium(report.parent, tmp_path / "profile", f"--screenshot={shot}")
    assert rendered.returncode == 0 and shot.is_file(), rendered.stderr[-2000:]
    with Image.open(shot) as screenshot:
        assert screenshot.size == (1200, 2000)
        # A blank page would be one colour; the report has text, plots and thumbnails.
        assert len(screenshot.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    print(f"screenshot: {shot}")
