"""The pre-training stage reads image-text pairs from a directory of WebDataset tar shards
(``data.extra_pairs.format=webdataset``), or from JSONL shards, as a share of its pairs: a tiny run goes
end to end on the synthetic world with the shards' samples among its pairs."""

from __future__ import annotations

import pytest

from rablip.config import load_config
from rablip.data.extra_pairs import ExtraPairs
from rablip.data.pair_shards import ShardedPairs
from rablip.models.processor_files import IMAGE_PROCESSOR_FILE, QFORMER_TOKENIZER_DIR
from rablip.retrieval.components import retrieval_batcher
from rablip.stages.pretrain import PairDataset, build_pairs, extra_pairs, pretrain
from rablip.training.stream_slots import StreamedPairs
from tests.data.test_pair_shards import write_jsonl_shards, write_tar_shards
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, TEST_WORLD, build_world, one_thread, world_overrides

SHARD_SIZES = (5, 4, 6)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_wds")
    build_world(root / "world", *TEST_WORLD, "world.align_images=0", parts=("world", "kb", "checkpoint"))
    write_tar_shards(root / "shards", sizes=SHARD_SIZES)
    write_jsonl_shards(root / "jsonl")
    return root


def shard_config(root, *extra: str):
    return load_config(str(PRETRAIN_CONFIG), world_overrides(root) + [
        "data.extra_pairs.format=webdataset", f"data.extra_pairs.path={root / 'shards'}",
        "data.extra_pairs.share=0.25", "train.batch_size=4", "train.image_only_queries=0", *extra])


def test_extra_pairs_come_from_shards_for_a_directory_and_from_the_file_otherwise(world):
    cfg = shard_config(world)
    source, extra = extra_pairs(cfg, 30, world_size=2)
    assert isinstance(source, StreamedPairs) and extra == 10 and source.slots.streams == 2
    jsonl = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + [
        f"data.extra_pairs.path={world / 'jsonl'}", "data.extra_pairs.share=0.25", "data.num_workers=1",
        "train.batch_size=4"])
    source, _ = extra_pairs(jsonl, 30)
    assert isinstance(source, StreamedPairs) and source.shards.format == "jsonl"
    single = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + [
        f"data.extra_pairs.path={world / 'jsonl' / 'part-1.jsonl'}", "data.extra_pairs.share=0.25"])
    assert isinstance(extra_pairs(single, 30)[0], ExtraPairs)


def test_the_dataset_draws_shard_samples_with_a_training_question_when_they_have_none(world):
    from rablip.benchmarks import load_split
    from rablip.data.kb import KBStore

    cfg = shard_config(world)
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    examples = load_split(cfg.data, "train")
    pairs = build_pairs(examples, kb, cfg.train.item_pairs)
    source, extra = extra_pairs(cfg, len(pairs))
    dataset = PairDataset(cfg, pairs, kb, source, extra)
    questions = {ex.question for ex in examples}
    slots = [key for key in [(index, 0) for index in range(len(pairs), len(dataset))]
             if source.slots._epoch_slots(0)[0][key[0] - len(pairs)] >= 0]
    drawn = [dataset[key] for key in slots]
    assert drawn and all(item.text.startswith("caption ") and item_image is None for _, _, item, item_image in drawn)
    for query_image, question, item, _ in drawn:
        assert query_image.size == (16, 16)
        shard = int(item.text.split()[1].split("-")[0])
        assert question == "what is it?" if shard % 2 else question in questions


@pytest.fixture
def loaded(monkeypatch):
    """The target texts of the shard samples loaded (in order) while the test runs."""
    texts: list[str] = []
    original = ShardedPairs.load

    def spy(self, stream, position):
        pair = original(self, stream, position)
        texts.append(pair[2].text)
        return pair

    monkeypatch.setattr(ShardedPairs, "load", spy)
    return texts


def test_pretraining_reads_a_webdataset_shard_directory(world, loaded):
    cfg = shard_config(world, "train.max_steps=2", "train.batch_size=8", "train.save_every=100",
                       "train.eval_every=0", "data.val.path=")
    with one_thread():
        assert pretrain(cfg) == 0
    assert (world / "run" / "final").is_dir() and any((world / "run" / "final").glob("*.safetensors"))
    assert loaded and all(text.startswith("caption ") for text in loaded)
    assert len(set(loaded)) == len(loaded), "no sample twice within one pass"


def test_the_final_dir_holds_the_processors_the_encoder_was_trained_with(world, tmp_path):
    """Later stages read the retrieval processor from the encoder's dir (a LLaVA generator has no Q-Former)."""
    out = tmp_path / "run"
    cfg = shard_config(world, "train.max_steps=1", "train.save_every=100", "train.eval_every=0", "data.val.path=",
                       "data.extra_pairs.share=0", f"run.output_dir={out}")
    with one_thread():
        assert pretrain(cfg) == 0
    final = out / "final"
    assert (final / QFORMER_TOKENIZER_DIR).is_dir() and (final / IMAGE_PROCESSOR_FILE).is_file()
    no_qformer = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + [
        f"model.fusion.checkpoint={final}", f"model.checkpoint={tmp_path / 'llava-without-qformer'}"])
    batch = retrieval_batcher(no_qformer).queries([None], ["what colour is it?"])
    assert batch["qformer_input_ids"].shape[0] == 1


def test_a_resumed_pretraining_run_reads_the_shard_samples_the_uninterrupted_run_read(world, loaded):
    def run(out, steps, *extra):
        start = len(loaded)
        cfg = shard_config(world, f"run.output_dir={world / out}", f"train.max_steps={steps}", "train.save_every=2",
                           "train.eval_every=0", "data.val.path=", *extra)
        with one_thread():
            assert pretrain(cfg) == 0
        return loaded[start:]

    whole = run("whole", 5)
    first = run("parts", 2)
    rest = run("parts", 5, "run.resume=true")
    assert first and rest and first + rest == whole
