"""Security defaults: only safetensors and JSON (and weights-only .pth in the converter) are read,
no remote code runs, knowledge-base image paths stay inside their root, and the sweep launcher hands
argument lists, never shell strings, to the operating system.

The source scan walks the syntax tree of every module in rablip/ and scripts/ (calls and keyword
arguments, not text), and is itself tested on planted snippets so that it cannot pass vacuously.
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from rablip.config import sweep as sweep_module
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.errors import DataError, RablipError
from rablip.models.convert import read_lavis_checkpoint
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.utils.cli import run_main
from tests.reliability.conftest import FINETUNE_CONFIG, ROOT, entry_main

SCANNED = sorted([*(ROOT / "rablip").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"), *ROOT.glob("run_*.py")])


def _name(node: ast.AST) -> str:
    """Dotted name of a call target (``torch.load``, ``np.load``, ``pickle.loads``)."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _safe_yaml_loaders(tree: ast.AST) -> set[str]:
    """Names of the classes in a module that derive from PyYAML's safe loaders."""
    safe = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(_name(base) in safe for base in node.bases)} | safe


def unsafe_calls(source: str, filename: str = "<snippet>") -> list[str]:
    """``file:line: what`` for every call that could unpickle, run remote code or go through a shell."""
    found = []
    tree = ast.parse(source, filename)
    safe_loaders = _safe_yaml_loaders(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append(f"{filename}:{node.value.lineno}: trust_remote_code not False")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        where = f"{filename}:{node.lineno}: {name}"
        short = name.rsplit(".", 1)[-1]
        if name.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"} and short in {
                "load", "loads", "Unpickler", "open"}:
            found.append(f"{where} unpickles")
        elif short == "load" and name.split(".")[0] == "torch" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where} without weights_only=True")
        elif short == "load" and name.split(".")[0] in {"np", "numpy"} and _keyword(node, "allow_pickle") is not None \
                and not (isinstance(_keyword(node, "allow_pickle"), ast.Constant)
                         and _keyword(node, "allow_pickle").value is False):
            found.append(f"{where} with allow_pickle")
        elif name in {"yaml.load", "yaml.unsafe_load", "yaml.full_load"} and not (
                name == "yaml.load" and _name(_keyword(node, "Loader") or ast.Name("?")) in safe_loaders):
            found.append(f"{where} without a safe loader")
        elif name in {"eval", "exec", "os.system", "os.popen"}:
            found.append(f"{where}")
        elif _is_true(_keyword(node, "shell")):
            found.append(f"{where} with shell=True")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(open('x', 'rb'))",
    "import torch\ntorch.load('x.pth')",
    "import torch\ntorch.load('x.pth', weights_only=False)",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nclass L(yaml.Loader): pass\nyaml.load(text, Loader=L)",
    "AutoModel.from_pretrained(path, trust_remote_code=True)",
    "AutoTokenizer.from_pretrained(path, trust_remote_code=flag)",
    "import subprocess\nsubprocess.run(f'python {script}', shell=True)",
    "import os\nos.system('rm -rf ' + path)",
])
def test_the_scan_finds_planted_unsafe_calls(snippet):
    assert unsafe_calls(snippet)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pth', map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load('x.npy', allow_pickle=False)",
    "import numpy as np\nnp.load('x.npy', mmap_mode='r')",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nclass L(yaml.SafeLoader): pass\nyaml.load(text, Loader=L)",
    "AutoTokenizer.from_pretrained(path, trust_remote_code=False)",
    "import subprocess\nsubprocess.run(['python', script], check=False)",
])
def test_the_scan_accepts_safe_calls(snippet):
    assert unsafe_calls(snippet) == []


def test_no_unpickling_remote_code_or_shell_in_the_sources():
    assert len(SCANNED) > 50
    found = [hit for path in SCANNED for hit in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []


def test_config_yaml_cannot_construct_python_objects(tmp_path):
    from rablip.config import load_config
    from rablip.errors import ConfigError

    marker = tmp_path / "pwned"
    config = tmp_path / "x.yaml"
    config.write_text(f"run:\n  name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(config)
    assert not marker.exists()


def test_the_converter_reads_pth_weights_only_and_runs_no_code(tmp_path):
    """A .pth whose unpickling would run code is refused before any code runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(RablipError, match="weights-only"):
        read_lavis_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    # The script says so with exit code 2 and writes nothing.
    assert entry_main("scripts/convert_lavis.py")(["--input", str(tmp_path / "evil.pth"),
                                                   "--output", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pickled_embeddings_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    # What np.save writes for an object array: a pickle inside the .npy container.
    import numpy as np

    np.save(tmp_path / "emb.npy", np.array([Payload(), None], dtype=object), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(SystemExit) as exit_info:
        run_main(entry_main("scripts/build_index.py"), ["--embeddings", str(tmp_path / "emb.npy"),
                                                        "--index-type", "flat", "--out", str(tmp_path / "index")])
    assert exit_info.value.code == 2 and not marker.exists() and not (tmp_path / "index").exists()


def test_a_checkpoint_that_ships_code_is_loaded_without_running_it(tmp_path, tiny_finetune_world):
    """``auto_map`` pointing at modelling code in the checkpoint dir: the code never runs."""
    checkpoint = tmp_path / "ckpt"
    import shutil

    shutil.copytree(tiny_finetune_world.checkpoint, checkpoint)
    marker = tmp_path / "pwned"
    (checkpoint / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    config = json.loads((checkpoint / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_modeling.EvilConfig", "AutoModel": "evil_modeling.EvilModel"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    RABlipForConditionalGeneration.from_pretrained(checkpoint)
    assert not marker.exists()


def test_weights_only_in_a_pickle_file_are_refused(tmp_path, tiny_finetune_world):
    """A checkpoint directory holding pytorch_model.bin instead of safetensors: refused, not unpickled."""
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_finetune_world.checkpoint, checkpoint)
    (checkpoint / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (checkpoint / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(RablipError, match="safetensors"):
        RABlipForConditionalGeneration.from_pretrained(checkpoint)
    assert not marker.exists()


# --- knowledge-base image paths -----------------------------------------------------------------

def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("image_path", ["../outside.png", "a/../../outside.png", "/abs/outside.png",
                                        "link/outside.png"])
def test_kb_image_paths_cannot_leave_the_root_when_building(tmp_path, image_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "outside.png").write_bytes(_png())
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="outside|absolute|climbs"):
        build_kb_store([KBItem(id="a", modality="image", image=image_path)], tmp_path / "store", kb_root=root)
    assert not (tmp_path / "store").exists()


def test_kb_image_replaced_by_a_link_outside_the_root_is_refused_when_read(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (root / "img" / "a.png").write_bytes(_png())
    store = KBStore.open(build_kb_store([KBItem(id="a", modality="image", image="img/a.png")], tmp_path / "store",
                                        kb_root=root))
    loader = ImageLoader(store.root)  # what reads item images by their stored relative path
    assert ImageLoader(None).load(store.image_of(store["a"]), "a").size == (4, 4)
    assert loader.load("img/a.png", "a").size == (4, 4)
    (outside / "secret.png").write_bytes(_png())
    (root / "img" / "a.png").unlink()
    (root / "img" / "a.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match="outside the root"):
        store.image_of(store["a"])
    for escaping in ("img/a.png", "../outside/secret.png", str(outside / "secret.png")):
        with pytest.raises(DataError, match="outside the root|absolute"):
            loader.load(escaping, "x")


# --- the sweep launcher -------------------------------------------------------------------------

def test_sweep_passes_config_values_as_single_arguments_never_through_a_shell(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    hostile = [f"x;touch {marker}", f"$(touch {marker})"]
    calls = []

    def record(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep_module.subprocess, "run", record)
    argv = ["--config", str(FINETUNE_CONFIG), "--grid", f"run.name={','.join(hostile)}", "--out", str(tmp_path / "sweep")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(entry_main("scripts/sweep.py"), argv)
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert len(calls) == 2
    for (command, kwargs), value in zip(calls, hostile):
        assert isinstance(command, list) and not kwargs.get("shell")
        assert f"run.name={value}" in command  # one argument, verbatim
    assert not marker.exists()

    # The print launcher quotes for a shell: pasted back, each line gives the same argument list.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(entry_main("scripts/sweep.py"), [*argv, "--launcher", "print"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(sys.executable)]
    assert [shlex.split(line) for line in printed] == [command for command, _ in calls]
