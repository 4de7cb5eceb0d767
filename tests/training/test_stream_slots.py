"""Extra slots of the pre-training dataset mapped to streams of a sharded corpus: each process and each
DataLoader worker reads its own stream (disjoint shards), each stream advances one sample per slot in
micro-step order, and a resumed run reads exactly what the uninterrupted run would, without opening the
shards it had finished."""

from __future__ import annotations

import pytest

from rablip.data.pair_shards import ShardedPairs
from rablip.training.order import StepOrderSampler
from rablip.training.stream_slots import SlotStreams, StreamedPairs
from tests.data.test_pair_shards import write_tar_shards

REAL, EXTRA, BATCH, SEED = 30, 18, 4, 7


def draws(world_size: int, workers: int, steps: int, start: int = 0):
    """Per (micro-step, rank): the extra slots the trainer's sampler gives and where they map."""
    slots = SlotStreams(REAL + EXTRA, REAL, BATCH, world_size=world_size, workers=workers, seed=SEED)
    out = []
    for rank in range(world_size):
        sampler = StepOrderSampler(REAL + EXTRA, BATCH, world_size=world_size, rank=rank, seed=SEED, start=start)
        for step, batch in zip(range(start, start + steps), iter(sampler)):
            out.extend((step, rank, key, slots.locate(*key)) for key in batch if key[0] >= REAL)
    return out


@pytest.mark.parametrize("world_size, workers", [(1, 0), (2, 0), (2, 3)])
def test_each_rank_and_worker_residue_has_its_own_stream_advancing_one_sample_per_slot(world_size, workers):
    per_process = max(1, workers)
    seen: dict[int, list[int]] = {}
    for step, rank, _, (stream, position) in draws(world_size, workers, steps=40):  # each rank in step order
        assert stream == rank * per_process + step % per_process
        seen.setdefault(stream, []).append(position)
    assert sorted(seen) == list(range(world_size * per_process))
    for positions in seen.values():  # every epoch of 40 steps over ~5 epochs: no gap, no repeat
        assert positions == list(range(len(positions)))


def test_two_ranks_read_disjoint_shards(tmp_path):
    write_tar_shards(tmp_path / "shards", sizes=(3, 2, 4, 1, 3, 2))
    opened = []
    for rank in range(2):
        corpus = ShardedPairs(tmp_path / "shards", "webdataset", streams=2, seed=SEED)
        pairs = StreamedPairs(corpus, SlotStreams(REAL + EXTRA, REAL, BATCH, world_size=2, seed=SEED))
        sampler = StepOrderSampler(REAL + EXTRA, BATCH, world_size=2, rank=rank, seed=SEED)
        for _, batch in zip(range(30), iter(sampler)):
            for key in batch:
                if key[0] >= REAL:
                    pairs.load(*key)
        opened.append(set(corpus.opened))
        assert opened[-1] == set(corpus.stream_shards(rank)), "a rank reads all of its shards and no others"
    assert not opened[0] & opened[1]


def test_a_resumed_run_reads_what_the_uninterrupted_one_would_and_skips_done_shards(tmp_path):
    write_tar_shards(tmp_path / "shards", sizes=(8, 8, 8, 8))
    stop = 9  # the micro-step the run was interrupted at
    whole = ShardedPairs(tmp_path / "shards", "webdataset", streams=1, seed=SEED)
    sequence = StreamedPairs(whole, SlotStreams(REAL + EXTRA, REAL, BATCH, seed=SEED))
    sampler = StepOrderSampler(REAL + EXTRA, BATCH, seed=SEED)
    texts = {step: [sequence.load(*key)[2].text for key in batch if key[0] >= REAL]
             for step, batch in zip(range(16), iter(sampler))}
    consumed = sum(len(texts[step]) for step in range(stop))
    assert 8 < consumed < 24 and sum(map(len, texts.values())) < 32, "one pass, stopped after a shard (setup)"

    resumed = ShardedPairs(tmp_path / "shards", "webdataset", streams=1, seed=SEED)
    pairs = StreamedPairs(resumed, SlotStreams(REAL + EXTRA, REAL, BATCH, seed=SEED))
    sampler = StepOrderSampler(REAL + EXTRA, BATCH, seed=SEED, start=stop)
    for step, batch in zip(range(stop, 16), iter(sampler)):
        assert [pairs.load(*key)[2].text for key in batch if key[0] >= REAL] == texts[step]
    done = {whole.locate(0, p)[0] for p in range(consumed)} - {whole.locate(0, consumed)[0]}
    assert done and not done & set(resumed.opened), "shards finished before the interruption are not opened"
    assert resumed.opened[0] == whole.locate(0, consumed)[0]


def test_streamed_pairs_refuse_a_corpus_dealt_to_another_number_of_streams(tmp_path):
    write_tar_shards(tmp_path / "shards", sizes=(1, 1))
    with pytest.raises(ValueError, match="2 streams"):
        StreamedPairs(ShardedPairs(tmp_path / "shards", "webdataset", streams=2),
                      SlotStreams(REAL + EXTRA, REAL, BATCH))
