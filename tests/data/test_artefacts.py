"""The artefact writer every store shares: build beside, manifest last, rename; and rewriting in place."""

from __future__ import annotations

import json
import stat

import pytest

from rablip.utils.artefacts import build_beside, rewrite_in_place


def _names(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_build_beside_writes_the_manifest_last_and_renames_over_the_old_artefact(tmp_path):
    target = tmp_path / "store"
    for version in (1, 2):
        with build_beside(target, "manifest.json") as build:
            assert build.path.parent == tmp_path and build.path.name.startswith(".store.building-")
            assert not (build.path / "manifest.json").exists()
            (build.path / "data.txt").write_text(f"v{version}")
            assert build.commit({"version": version}) == target
    assert _names(tmp_path) == ["store"]
    assert _names(target) == ["data.txt", "manifest.json"]
    assert json.loads((target / "manifest.json").read_text()) == {"version": 2}
    assert (target / "data.txt").read_text() == "v2"
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode), \
        "the artefact gets the mode of a plain mkdir"


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_build_leaves_the_old_artefact_and_no_work_directory(tmp_path, failure):
    target = tmp_path / "store"
    with build_beside(target, "manifest.json") as build:
        (build.path / "data.txt").write_text("old")
        build.commit({"version": 1})
    with pytest.raises(failure), build_beside(target, "manifest.json") as build:
        (build.path / "data.txt").write_text("new")
        raise failure("source went away")
    assert _names(tmp_path) == ["store"] and (target / "data.txt").read_text() == "old"
    with pytest.raises(RuntimeError, match="without commit"), build_beside(target, "manifest.json") as build:
        (build.path / "data.txt").write_text("forgotten")
    assert _names(tmp_path) == ["store"] and (target / "data.txt").read_text() == "old"


def test_a_given_work_directory_is_kept_on_failure_for_a_resumed_build(tmp_path):
    target, work, aside = tmp_path / "cache", tmp_path / "cache.building", tmp_path / "cache.old"
    with pytest.raises(KeyboardInterrupt), build_beside(target, "m.json", work=work, aside=aside) as build:
        (build.path / "part-1").write_text("done")
        raise KeyboardInterrupt
    assert _names(tmp_path) == ["cache.building"]
    with build_beside(target, "m.json", work=work, aside=aside) as build:
        assert (build.path / "part-1").read_text() == "done"
        build.commit({"parts": 1})
    assert _names(tmp_path) == ["cache"] and _names(target) == ["m.json", "part-1"]


def test_rewrite_in_place_removes_the_manifest_until_the_commit(tmp_path):
    (tmp_path / "results.jsonl").write_text("old\n")
    (tmp_path / "meta.json").write_text('{"key": "old"}')
    with pytest.raises(KeyboardInterrupt), rewrite_in_place(tmp_path, "meta.json") as build:
        assert not (tmp_path / "meta.json").exists()
        (build.path / "results.jsonl").write_text("new\n")
        raise KeyboardInterrupt
    assert not (tmp_path / "meta.json").exists(), "no manifest vouches for results written without one"
    with rewrite_in_place(tmp_path, "meta.json") as build:
        (build.path / "results.jsonl").write_text("newer\n")
        build.commit({"key": "new"})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"key": "new"}
