"""Bad inputs, one table: each case goes through a real entry point's ``main(argv)`` under
:func:`rablip.utils.cli.run_main` (what ``python run_finetune.py ...`` runs), and must end with exit
code 2, one ``error:`` line that says what was wrong, where and what to do, no traceback, and
nothing that existed before changed (and nothing left behind but what a case allows).

A few cases run as real subprocesses too (:func:`test_real_processes_exit_2_without_traceback`).
To add a case: write a builder that creates the bad files under ``tmp`` and returns the argv, and
add a :class:`BadInput` row to :data:`CASES`.

``run_eval.py`` cases use the same tiny world: a foreign checkpoint, an index of another encoder,
static retrieval files that are malformed or miss questions, and settings that contradict each other.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rablip.retrieval.index import build_index
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture
from rablip.utils.cli import run_main
from tests.data.image_fixtures import noisy_jpeg
from tests.reliability.bad_input import BadInput, check_bad_input
from tests.reliability.bad_input import jsonl as _jsonl
from tests.reliability.bad_input import write_file as _write
from tests.reliability.conftest import FINETUNE_CONFIG, ROOT, FinetuneWorld, entry_main

EVAL_CONFIG = ROOT / "configs" / "experiment" / "synthetic_eval.yaml"
RUN_DIR_FILES = ("run", "run/config.yaml", "run/checkpoints")
"""What a run that failed on its data may leave: its run directory with the resolved config."""
EVAL_RUN_DIR_FILES = ("run", "run/config.yaml")


# --- config -------------------------------------------------------------------------------------

def _config_file(tmp: Path, text: str) -> list[str]:
    return ["--config", str(_write(tmp / "x.yaml", text))]


def config_typo_on_command_line(tmp: Path) -> list[str]:
    return ["--config", str(FINETUNE_CONFIG), "train.lrr=1"]


def config_typo_in_yaml(tmp: Path) -> list[str]:
    return _config_file(tmp, "defaults: [base.yaml]\ntrain:\n  lr: 1.0e-4\n  max_stpes: 3\n")


def config_wrong_type_on_command_line(tmp: Path) -> list[str]:
    return ["--config", str(FINETUNE_CONFIG), "train.max_steps=many"]


def config_wrong_type_in_yaml(tmp: Path) -> list[str]:
    return _config_file(tmp, "defaults: [base.yaml]\nretrieval:\n  k: three\n")


def config_malformed_yaml(tmp: Path) -> list[str]:
    return _config_file(tmp, "train:\n  lr: 1\n  max_steps: [1, 2\nrun:\n  seed: 1\n")


def config_defaults_cycle(tmp: Path) -> list[str]:
    _write(tmp / "a.yaml", "defaults: [b.yaml]\n")
    _write(tmp / "b.yaml", "defaults: [a.yaml]\n")
    return ["--config", str(tmp / "a.yaml")]


def config_file_missing(tmp: Path) -> list[str]:
    return ["--config", str(tmp / "nope.yaml")]


def config_required_path_empty(tmp: Path, world: FinetuneWorld) -> list[str]:
    return world.args(tmp / "run", "data.train.path=")


# --- question-answering data (OK-VQA format, read by run_finetune.py) --------------------------

def _okvqa_args(tmp: Path, world: FinetuneWorld, questions: dict | bytes | str | None = None,
                image_root: Path | None = None, *extra: str) -> list[str]:
    """Copies of the world's train files, the questions replaced when given."""
    path = tmp / "questions.json"
    if questions is None:
        shutil.copy(world.world_dir / "OpenEnded_mscoco_train2014_questions.json", path)
    else:
        _write(path, json.dumps(questions) if isinstance(questions, dict) else questions)
    annotations = shutil.copy(world.world_dir / "mscoco_train2014_annotations.json", tmp / "annotations.json")
    return world.args(tmp / "run", f"data.train.path={path}", f"data.train.annotations={annotations}",
                      f"data.train.image_root={image_root or world.world_dir}", *extra)


def _world_questions(world: FinetuneWorld) -> dict:
    return json.loads((world.world_dir / "OpenEnded_mscoco_train2014_questions.json").read_text())


def qa_malformed_json(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _okvqa_args(tmp, world, '{"questions": [\n  {"question_id": 1,\n')


def qa_missing_key(tmp: Path, world: FinetuneWorld) -> list[str]:
    questions = _world_questions(world)
    del questions["questions"][1]["image_id"]
    return _okvqa_args(tmp, world, questions)


def qa_wrong_type(tmp: Path, world: FinetuneWorld) -> list[str]:
    questions = _world_questions(world)
    questions["questions"][2]["question"] = ["not", "a", "string"]
    return _okvqa_args(tmp, world, questions)


def qa_duplicate_id(tmp: Path, world: FinetuneWorld) -> list[str]:
    questions = _world_questions(world)
    questions["questions"].append(dict(questions["questions"][0]))
    return _okvqa_args(tmp, world, questions)


def qa_not_utf8(tmp: Path, world: FinetuneWorld) -> list[str]:
    text = json.dumps(_world_questions(world), indent=1).encode("utf-8")
    return _okvqa_args(tmp, world, text.replace(b"Where did", b"Wh\xffre did", 1))


def _damaged_images(tmp: Path, world: FinetuneWorld, damage: Callable[[Path], None]) -> Path:
    root = tmp / "images"
    shutil.copytree(world.world_dir / "train2014", root / "train2014")
    for image in (root / "train2014").iterdir():
        damage(image)
    return root


def image_missing(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _okvqa_args(tmp, world, None, _damaged_images(tmp, world, Path.unlink))


def image_missing_in_a_loader_worker(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _okvqa_args(tmp, world, None, _damaged_images(tmp, world, Path.unlink), "data.num_workers=1")


def image_truncated(tmp: Path, world: FinetuneWorld) -> list[str]:
    data = noisy_jpeg()

    def truncate(path: Path) -> None:
        path.write_bytes(data[: len(data) // 2])
    return _okvqa_args(tmp, world, None, _damaged_images(tmp, world, truncate))


def image_not_an_image(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _okvqa_args(tmp, world, None, _damaged_images(tmp, world, lambda p: p.write_text("<html>moved</html>")))


def _foreign_checkpoint(tmp: Path, world: FinetuneWorld) -> Path:
    """The generator's config with the weights of an OPT model."""
    opt = build_tiny_checkpoint(tmp / "opt", tiny_architecture("opt"), seed=2)
    foreign = shutil.copytree(world.checkpoint, tmp / "foreign")
    shutil.copy(opt / "model.safetensors", foreign / "model.safetensors")
    shutil.rmtree(opt)
    return foreign


def checkpoint_of_another_architecture(tmp: Path, world: FinetuneWorld) -> list[str]:
    return world.args(tmp / "run", f"model.checkpoint={_foreign_checkpoint(tmp, world)}")


def eval_candidates_scope_without_listed_sources(tmp: Path, world: FinetuneWorld) -> list[str]:
    """retrieval.scope=candidates on OK-VQA, whose questions list no sources of their own."""
    return _eval_args(tmp, world, "retrieval.source=index", "retrieval.scope=candidates",
                      f"retrieval.index_dir={tmp / 'index'}")


# --- evaluation (run_eval.py) -------------------------------------------------------------------

def _eval_args(tmp: Path, world: FinetuneWorld, *extra: str) -> list[str]:
    """``run_eval.py`` arguments answering the world's test split with its base generator."""
    return ["--config", str(EVAL_CONFIG), f"data.root={world.world_dir}",
            f"model.checkpoint={world.checkpoint}", f"eval.checkpoint={world.checkpoint}", "eval.batch_size=4",
            "eval.k_sweep=[]", "eval.report=false", f"run.output_dir={tmp / 'run'}", *extra]


def _test_question_ids(world: FinetuneWorld) -> list[str]:
    questions = json.loads((world.world_dir / "OpenEnded_mscoco_test2014_questions.json").read_text())["questions"]
    return [str(q["question_id"]) for q in questions]


def _static_args(tmp: Path, world: FinetuneWorld, content: str) -> list[str]:
    path = _write(tmp / "retrieval.jsonl", content)
    return _eval_args(tmp, world, "retrieval.source=static", f"retrieval.static_file={path}")


def eval_checkpoint_of_another_architecture(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _eval_args(tmp, world, f"eval.checkpoint={_foreign_checkpoint(tmp, world)}", "retrieval.source=gold")


def eval_index_of_another_encoder(tmp: Path, world: FinetuneWorld) -> list[str]:
    """An index encoded with one retrieval encoder, queried with another."""
    import torch

    from rablip.config import load_config
    from rablip.models.factory import build_retrieval_encoder, load_generator
    from rablip.stages.encode_kb import encode_knowledge_base

    argv = _eval_args(tmp, world, "retrieval.source=index", f"retrieval.index_dir={tmp / 'index'}",
                      f"model.fusion.checkpoint={tmp / 'encoder_a'}", "retrieval.shard_rows=16")
    cfg = load_config(argv[1], argv[2:])
    generator = load_generator(cfg, world.checkpoint)
    for seed, name in ((0, "encoder_a"), (1, "encoder_b")):
        torch.manual_seed(seed)
        build_retrieval_encoder(cfg, generator).save_pretrained(tmp / name)
    encode_knowledge_base(cfg, show_progress=False)
    return [*argv, f"model.fusion.checkpoint={tmp / 'encoder_b'}"]


def eval_static_retrieval_missing_questions(tmp: Path, world: FinetuneWorld) -> list[str]:
    kept = _test_question_ids(world)[:-3]
    return _static_args(tmp, world, _jsonl(*({"id": qid, "items": [{"id": "kb-txt-e0000", "score": 0.5}]}
                                             for qid in kept)))


def eval_static_retrieval_malformed(tmp: Path, world: FinetuneWorld) -> list[str]:
    first = _test_question_ids(world)[0]
    return _static_args(tmp, world, _jsonl({"id": first, "items": []}) + '{"id": "2", "items": [\n')


def eval_static_retrieval_item_without_score(tmp: Path, world: FinetuneWorld) -> list[str]:
    first, second = _test_question_ids(world)[:2]
    return _static_args(tmp, world, _jsonl({"id": first, "items": []}, {"id": second, "items": [{"id": "kb-txt-e0000"}]}))


def eval_static_file_missing(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _eval_args(tmp, world, "retrieval.source=static", f"retrieval.static_file={tmp / 'nope.jsonl'}")


def eval_retrieval_only_with_gold(tmp: Path, world: FinetuneWorld) -> list[str]:
    return _eval_args(tmp, world, "eval.retrieval_only=true", "retrieval.source=gold")


def eval_image_missing(tmp: Path, world: FinetuneWorld) -> list[str]:
    (tmp / "images" / "test2014").mkdir(parents=True)
    return _eval_args(tmp, world, "retrieval.source=gold", f"data.test.image_root={tmp / 'images'}")


# --- indexes (python -m rablip.retrieval.search, scripts/build_index.py) -----------------------

def _index(tmp: Path, fingerprint: str = "encoder-A") -> tuple[Path, list[str]]:
    rows = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    np.save(tmp / "emb.npy", rows)
    np.save(tmp / "queries.npy", rows[:3])
    index = build_index(tmp / "emb.npy", tmp / "index", encoder_fingerprint=fingerprint)
    np.save(tmp / "rows.npy", np.zeros((1, 1), np.int64))  # an earlier result that must survive
    return index, ["--index", str(index), "--queries", str(tmp / "queries.npy"), "--k", "2",
                   "--output", str(tmp / "rows.npy")]


def index_of_another_encoder(tmp: Path) -> list[str]:
    _, argv = _index(tmp)
    return [*argv, "--encoder-fingerprint", "encoder-B"]


def index_half_written(tmp: Path) -> list[str]:
    index, argv = _index(tmp)
    (index / "manifest.json").unlink()
    return argv


def index_file_damaged(tmp: Path) -> list[str]:
    index, argv = _index(tmp)
    with (index / "index.faiss").open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\0" * 8)
    return argv


def embeddings_pickled(tmp: Path) -> list[str]:
    np.save(tmp / "emb.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return ["--embeddings", str(tmp / "emb.npy"), "--index-type", "flat", "--out", str(tmp / "index")]


CASES = [
    # config
    BadInput("config typo on the command line", "finetune", config_typo_on_command_line,
             ("train.lrr", "command line", "did you mean 'train.lr'")),
    BadInput("config typo in YAML", "finetune", config_typo_in_yaml,
             ("train.max_stpes", "{tmp}/x.yaml", "line 4", "did you mean 'train.max_steps'")),
    BadInput("config wrong type on the command line", "finetune", config_wrong_type_on_command_line,
             ("train.max_steps", "command line", "many")),
    BadInput("config wrong type in YAML", "finetune", config_wrong_type_in_yaml,
             ("retrieval.k", "{tmp}/x.yaml", "line 3")),
    BadInput("malformed YAML", "finetune", config_malformed_yaml, ("malformed YAML", "{tmp}/x.yaml", "line")),
    BadInput("defaults cycle", "finetune", config_defaults_cycle, ("cycle", "{tmp}/a.yaml", "b.yaml")),
    BadInput("config file missing", "finetune", config_file_missing, ("not found", "{tmp}/nope.yaml")),
    BadInput("required path empty", "finetune", config_required_path_empty, ("data.train.path is empty", "set"),
             RUN_DIR_FILES, needs_world=True),
    # question-answering data
    BadInput("QA malformed JSON", "finetune", qa_malformed_json,
             ("malformed JSON", "{tmp}/questions.json", "line 3"), RUN_DIR_FILES, needs_world=True),
    BadInput("QA record missing a key", "finetune", qa_missing_key,
             ("{tmp}/questions.json", "record 1", "missing required key 'image_id'"), RUN_DIR_FILES, needs_world=True),
    BadInput("QA record with a wrong type", "finetune", qa_wrong_type,
             ("{tmp}/questions.json", "'question'", "string"), RUN_DIR_FILES, needs_world=True),
    BadInput("QA duplicate question id", "finetune", qa_duplicate_id,
             ("{tmp}/questions.json", "duplicate", "10000010"), RUN_DIR_FILES, needs_world=True),
    BadInput("QA file not UTF-8", "finetune", qa_not_utf8,
             ("{tmp}/questions.json", "UTF-8", "line"), RUN_DIR_FILES, needs_world=True),
    BadInput("image missing", "finetune", image_missing,
             ("{tmp}/images/train2014/COCO_train2014_", "does not exist", "Check the image root"),
             RUN_DIR_FILES, needs_world=True),
    BadInput("image missing, read in a loader worker", "finetune", image_missing_in_a_loader_worker,
             ("{tmp}/images/train2014/COCO_train2014_", "does not exist"), RUN_DIR_FILES, needs_world=True),
    BadInput("image truncated", "finetune", image_truncated, ("{tmp}/images/train2014/COCO_train2014_", "truncated"),
             RUN_DIR_FILES, needs_world=True),
    BadInput("image file that is not an image", "finetune", image_not_an_image,
             ("{tmp}/images/train2014/COCO_train2014_", "not an image"), RUN_DIR_FILES, needs_world=True),
    BadInput("checkpoint of another architecture", "finetune", checkpoint_of_another_architecture,
             ("{tmp}/foreign", "missing", "unexpected", "language_model."), RUN_DIR_FILES,
             needs_world=True, one_line=False),
    # evaluation
    BadInput("eval: checkpoint of another architecture", "eval", eval_checkpoint_of_another_architecture,
             ("{tmp}/foreign", "missing", "unexpected", "language_model."), EVAL_RUN_DIR_FILES,
             needs_world=True, one_line=False),
    BadInput("eval: index from another encoder", "eval", eval_index_of_another_encoder,
             ("{tmp}/index/", "built from embeddings of encoder", "Re-encode the knowledge base"), EVAL_RUN_DIR_FILES,
             needs_world=True),
    BadInput("eval: static retrieval file missing questions", "eval", eval_static_retrieval_missing_questions,
             ("{tmp}/retrieval.jsonl", "3 question(s) of data.test", "point retrieval.static_file at"),
             EVAL_RUN_DIR_FILES, needs_world=True),
    BadInput("eval: malformed static retrieval file", "eval", eval_static_retrieval_malformed,
             ("{tmp}/retrieval.jsonl", "line 2", "malformed JSON"), EVAL_RUN_DIR_FILES, needs_world=True),
    BadInput("eval: static retrieval item without a score", "eval", eval_static_retrieval_item_without_score,
             ("{tmp}/retrieval.jsonl", "line 2", "\"score\""), EVAL_RUN_DIR_FILES, needs_world=True),
    BadInput("eval: static retrieval file missing", "eval", eval_static_file_missing,
             ("{tmp}/nope.jsonl", "not found"), EVAL_RUN_DIR_FILES, needs_world=True),
    BadInput("eval: retrieval_only with gold references", "eval", eval_retrieval_only_with_gold,
             ("eval.retrieval_only", "retrieval.source", "'gold'"), needs_world=True),
    BadInput("eval: retrieval.scope=candidates on a dataset without listed sources", "eval",
             eval_candidates_scope_without_listed_sources, ("retrieval.scope=candidates", "data.dataset=okvqa",
                                                            "retrieval.scope=global"), EVAL_RUN_DIR_FILES, needs_world=True),
    BadInput("eval: question image missing", "eval", eval_image_missing,
             ("{tmp}/images/test2014/COCO_test2014_", "does not exist"), EVAL_RUN_DIR_FILES, needs_world=True),
    # indexes
    BadInput("index from another encoder", "search", index_of_another_encoder,
             ("{tmp}/index", "encoder-A", "encoder-B")),
    BadInput("index without its manifest (half-written)", "search", index_half_written,
             ("{tmp}/index", "manifest.json")),
    BadInput("index file damaged", "search", index_file_damaged, ("{tmp}/index/index.faiss", "sha256")),
    BadInput("pickled embeddings", "build_index", embeddings_pickled, ("{tmp}/emb.npy",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_with_one_message_and_changes_nothing(case, tmp_path, capsys, request):
    tmp = tmp_path / "case"
    tmp.mkdir()
    argv = case.build(tmp, request.getfixturevalue("tiny_finetune_world")) if case.needs_world else case.build(tmp)
    check_bad_input(case, argv, tmp, capsys)


def test_debug_shows_the_traceback(tmp_path):
    """``--debug`` is the one way to see where a user error was raised."""
    from rablip.errors import ConfigError

    with pytest.raises(ConfigError, match="train.lrr"):
        run_main(entry_main("run_finetune.py"), [*config_typo_on_command_line(tmp_path), "--debug"])


@pytest.mark.parametrize("command", [
    ["run_finetune.py", "--config", str(FINETUNE_CONFIG), "train.lrr=1"],
    ["run_eval.py", "--config", str(EVAL_CONFIG), "eval.retrieval_only=true", "retrieval.source=gold",
     "run.output_dir={tmp}/run"],
    ["-m", "rablip.benchmarks.cli", "okvqa", "--questions", "{tmp}/q.json", "--annotations", "{tmp}/q.json",
     "--predictions", "{tmp}/q.json"],
], ids=["run_finetune", "run_eval", "rablip-score"])
def test_real_processes_exit_2_without_traceback(command, tmp_path):
    _write(tmp_path / "q.json", b'{"questions": [\xff')
    result = subprocess.run([sys.executable, *(part.format(tmp=tmp_path) for part in command)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
