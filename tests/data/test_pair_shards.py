"""Sharded pre-training pairs (``data.extra_pairs.format=webdataset`` and JSONL shards): shards are listed
from a directory or a brace pattern, dealt to streams that share none, sized from ``sizes.json`` or by
counting, and read in order; a bad sample is a DataError naming the shard and the sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from rablip.data.pair_shards import ShardedPairs, is_sharded, list_shards
from rablip.data.webdataset_pairs import count_tar_samples
from rablip.errors import DataError

SIZES = (3, 2, 4, 1, 3)


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar_shards(directory: Path, sizes=SIZES, bad: dict | None = None) -> list[Path]:
    """Shards ``00000.tar``...; sample j of shard s has caption ``caption s-j`` (as .txt in even shards,
    as .json 'caption' with a question and title in odd ones) and a JPEG; ``bad`` replaces samples."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, size in enumerate(sizes):
        path = directory / f"{shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j in range(size):
                sample = {"__key__": f"{shard:02d}{j:04d}", "jpg": jpeg((40 * shard % 256, 20 * j, 90))}
                if shard % 2 == 0:
                    sample["txt"] = f"caption {shard}-{j}"
                else:
                    sample["json"] = json.dumps({"caption": f"caption {shard}-{j}", "question": "what is it?",
                                                 "title": f"thing {shard}"}).encode()
                sample = (bad or {}).get((shard, j), sample)
                sink.write(sample)
        paths.append(path)
    return paths


def write_jsonl_shards(directory: Path, sizes=(2, 3, 1)) -> list[Path]:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(directory / "images" / "a.jpg")
    paths = []
    for shard, size in enumerate(sizes):
        lines = [json.dumps({"image": "images/a.jpg", "item": {"id": f"j{shard}-{j}", "text": f"fact {shard}-{j}"}})
                 for j in range(size)]
        path = directory / f"part-{shard}.jsonl"
        path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # blank lines are not records
        paths.append(path)
    return paths


def captions(pairs: ShardedPairs, stream: int, count: int, start: int = 0) -> list[str]:
    return [pairs.load(stream, position)[2].text for position in range(start, start + count)]


def test_shards_are_listed_from_a_directory_or_a_brace_pattern_and_missing_ones_are_refused(tmp_path):
    paths = write_tar_shards(tmp_path / "shards")
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    assert list_shards(tmp_path / "shards", "webdataset") == paths and is_sharded(tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{00001..00003}.tar")
    assert list_shards(pattern, "webdataset") == paths[1:4] and is_sharded(pattern)
    assert not is_sharded(paths[0])
    with pytest.raises(DataError, match=r"1 of 2 shard\(s\).*00009\.tar"):
        list_shards(str(tmp_path / "shards" / "{00004,00009}.tar"), "webdataset")
    with pytest.raises(DataError, match=r"holds no \.jsonl files"):
        list_shards(tmp_path / "shards", "jsonl")


def test_streams_read_disjoint_shards_that_together_are_all(tmp_path):
    paths = write_tar_shards(tmp_path / "shards")
    pairs = ShardedPairs(tmp_path / "shards", "webdataset", streams=2)
    first, second = pairs.stream_shards(0), pairs.stream_shards(1)
    assert not set(first) & set(second) and sorted(first + second) == paths
    with pytest.raises(DataError, match="5 shard\\(s\\), fewer than the 6 streams"):
        ShardedPairs(tmp_path / "shards", "webdataset", streams=6)


def test_a_stream_reads_each_of_its_samples_once_per_pass_and_only_its_own_shards(tmp_path):
    write_tar_shards(tmp_path / "shards")
    pairs = ShardedPairs(tmp_path / "shards", "webdataset", streams=2, seed=3)
    own = {f"caption {s}-{j}" for s in (0, 2, 4) for j in range(SIZES[s])}
    total = len(own)
    first_pass, second_pass = captions(pairs, 0, total), captions(pairs, 0, total, start=total)
    assert set(first_pass) == set(second_pass) == own and len(first_pass) == total
    assert set(pairs.opened) == set(pairs.stream_shards(0))
    assert len(pairs.opened) == 6, "each shard is opened once per pass when read in order"
    for shard in (0, 2, 4):  # within a shard, file order
        mine = [c for c in first_pass if c.startswith(f"caption {shard}-")]
        assert mine == [f"caption {shard}-{j}" for j in range(SIZES[shard])]


def test_a_pair_is_the_image_and_a_text_target_with_the_json_fields(tmp_path):
    write_tar_shards(tmp_path / "shards")
    pairs = ShardedPairs(tmp_path / "shards", "webdataset", streams=1)
    shard, offset = next((shard, offset) for p in range(sum(SIZES))
                         for shard, offset in [pairs.locate(0, p)] if shard.name == "00001.tar" and offset == 1)
    position = next(p for p in range(sum(SIZES)) if pairs.locate(0, p) == (shard, offset))
    image, question, item, item_image = pairs.load(0, position)
    assert image.size == (16, 16) and item_image is None
    assert (question, item.text, item.title, item.modality) == ("what is it?", "caption 1-1", "thing 1", "text")
    assert item.id == "00001/010001" and item.source == "00001.tar"


def test_sizes_come_from_sizes_json_when_given_and_a_shard_shorter_than_its_size_is_refused(tmp_path):
    paths = write_tar_shards(tmp_path / "shards")
    assert [count_tar_samples(p) for p in paths] == list(SIZES)
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({"00000.tar": 5}))
    pairs = ShardedPairs(tmp_path / "shards", "webdataset", streams=5)
    assert pairs._stream(0).sizes == [5] and pairs._stream(1).sizes == [SIZES[1]]
    captions(pairs, 0, 3)
    with pytest.raises(DataError, match=r"00000\.tar of data\.extra_pairs\.path ended after 3 samples.*size is 5"):
        pairs.load(0, 3)


@pytest.mark.parametrize("sample, message", [
    ({"__key__": "x", "txt": b"no image here"}, r"sample 'x' has no image"),
    ({"__key__": "x", "jpg": jpeg((1, 2, 3))}, r"sample 'x' has no caption"),
    ({"__key__": "x", "jpg": jpeg((1, 2, 3)), "json": b"[1, 2]"}, r"expected an object"),
    ({"__key__": "x", "jpg": jpeg((1, 2, 3)), "json": b'{"caption": ["a"]}'}, r"'caption' is a list"),
])
def test_a_bad_sample_names_the_shard_and_the_key(tmp_path, sample, message):
    write_tar_shards(tmp_path / "shards", sizes=(2,), bad={(0, 1): sample})
    pairs = ShardedPairs(tmp_path / "shards", "webdataset", streams=1)
    pairs.load(0, 0)
    with pytest.raises(DataError, match=message) as error:
        pairs.load(0, 1)
    assert "00000.tar" in str(error.value)


def test_an_undecodable_image_follows_on_bad_image(tmp_path):
    write_tar_shards(tmp_path / "shards", sizes=(1,), bad={(0, 0): {"__key__": "x", "jpg": b"junk", "txt": b"a"}})
    with pytest.raises(DataError, match="00000.tar"):
        ShardedPairs(tmp_path / "shards", "webdataset", streams=1).load(0, 0)
    image, _, item, _ = ShardedPairs(tmp_path / "shards", "webdataset", streams=1, on_bad_image="skip").load(0, 0)
    assert image is None and item.text == "a"


def test_jsonl_shards_are_read_alike_with_images_relative_to_each_shard(tmp_path):
    write_jsonl_shards(tmp_path / "pairs")
    pairs = ShardedPairs(tmp_path / "pairs", "jsonl", streams=2)
    assert [p.name for p in pairs.stream_shards(0)] == ["part-0.jsonl", "part-2.jsonl"]
    texts = captions(pairs, 0, 3)
    assert sorted(texts) == ["fact 0-0", "fact 0-1", "fact 2-0"]
    image, question, item, item_image = pairs.load(1, 2)
    assert image.size == (8, 8) and question == "" and item.id == "j1-2" and item_image is None
    (tmp_path / "pairs" / "part-1.jsonl").write_text('{"image": "../x.jpg", "item": {"id": "a", "text": "t"}}\n' * 3)
    with pytest.raises(DataError, match=r"part-1\.jsonl, line 1.*outside the root"):
        ShardedPairs(tmp_path / "pairs", "jsonl", streams=2).load(1, 0)
