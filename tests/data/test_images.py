"""rablip.data.images: decoding, EXIF orientation, root confinement, the skip policy."""

import os

import pytest

from rablip.data.images import ImageLoader, load_image, resolve_under_root
from rablip.errors import DataError
from tests.data.image_fixtures import encoded_image, noisy_jpeg, two_colour_jpeg_with_orientation


def test_load_from_path_and_bytes_gives_rgb(tmp_path):
    png = encoded_image((10, 7), color=(5, 128, 200, 100), fmt="PNG", mode="RGBA")
    (tmp_path / "a.png").write_bytes(png)
    from_path = load_image(tmp_path / "a.png")
    from_bytes = load_image(png)
    assert from_path.mode == from_bytes.mode == "RGB"
    assert from_path.size == (10, 7)
    assert from_path.getpixel((0, 0)) == from_bytes.getpixel((0, 0)) == (5, 128, 200)
    grey = load_image(encoded_image((3, 3), color=90, fmt="PNG", mode="L"))
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (90, 90, 90)


def test_exif_orientation_is_applied():
    # Orientation 6: the stored image must be turned 90 degrees clockwise to display.
    image = load_image(two_colour_jpeg_with_orientation(6))
    assert image.size == (32, 64)
    top, bottom = image.getpixel((16, 8)), image.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60, top  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    upright = load_image(two_colour_jpeg_with_orientation(1))
    assert upright.size == (64, 32)


def test_missing_file_names_file_and_record(tmp_path):
    with pytest.raises(DataError, match=r"absent\.jpg \(record q7\) does not exist"):
        load_image(tmp_path / "absent.jpg", record="q7")


def test_truncated_image_is_a_data_error(tmp_path):
    data = noisy_jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg \(record 12\) cannot be decoded.*truncated"):
        load_image(path, record="12")


def test_non_image_file_is_a_data_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(DataError, match=r"notes\.jpg \(record r1\) is not an image"):
        load_image(path, record="r1")


def test_url_is_refused():
    with pytest.raises(DataError, match="URL"):
        load_image("https://example.org/a.jpg", record="x")


def test_resolve_under_root_refuses_escapes(tmp_path):
    root = tmp_path / "kb"
    (root / "imgs").mkdir(parents=True)
    assert resolve_under_root(root, "imgs/a.jpg") == (root / "imgs" / "a.jpg").resolve()
    assert resolve_under_root(root, "imgs/../b.jpg") == (root / "b.jpg").resolve()
    with pytest.raises(DataError, match="outside the root"):
        resolve_under_root(root, "../secret.jpg")
    with pytest.raises(DataError, match="absolute"):
        resolve_under_root(root, str(tmp_path / "elsewhere.jpg"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(encoded_image())
    os.symlink(outside, root / "link")
    with pytest.raises(DataError, match="outside the root"):
        resolve_under_root(root, "link/x.jpg")


def test_load_image_under_root(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (root / "a.jpg").write_bytes(encoded_image())
    (tmp_path / "secret.jpg").write_bytes(encoded_image())
    assert load_image("a.jpg", root).size == (16, 12)
    with pytest.raises(DataError, match="outside the root"):
        load_image("../secret.jpg", root, record="item-3")


def test_image_loader_skip_policy_counts_and_reports(tmp_path):
    (tmp_path / "good.jpg").write_bytes(encoded_image())
    (tmp_path / "bad.jpg").write_text("garbage")
    loader = ImageLoader(tmp_path, on_bad_image="skip")
    assert loader.load("good.jpg", "r0") is not None
    assert loader.load("bad.jpg", "r1") is None
    assert loader.load("missing.jpg", "r2") is None
    report = loader.report()
    assert report.loaded == 1
    assert [(entry.record_id, entry.file) for entry in report.skipped] == [
        ("r1", "bad.jpg"),
        ("r2", "missing.jpg"),
    ]
    summary = report.to_dict()
    assert summary["skipped_count"] == 2 and "does not exist" in summary["skipped"][1]["reason"]
    assert "record r1: bad.jpg" in str(report)


def test_image_loader_error_policy_raises(tmp_path):
    loader = ImageLoader(tmp_path)
    with pytest.raises(DataError, match=r"record r9"):
        loader.load("missing.jpg", "r9")
    with pytest.raises(DataError, match="on_bad_image"):
        ImageLoader(tmp_path, on_bad_image="ignore")
