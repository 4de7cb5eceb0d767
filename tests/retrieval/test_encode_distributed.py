"""scripts/encode_kb.py under two real processes (torchrun, gloo on CPU) equals one process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rablip.retrieval.groups import GROUPS, read_layout
from rablip.retrieval.shards import open_embeddings
from rablip.stages.encode_kb import encode_knowledge_base
from tests.retrieval.tiny_world import ROOT, make_tiny_world, one_thread, subprocess_env, world_overrides


@pytest.mark.slow
def test_two_ranks_write_their_own_shards_and_match_one_process(tmp_path):
    with one_thread():
        cfg = make_tiny_world(tmp_path)
        single = encode_knowledge_base(cfg, show_progress=False)
    out = tmp_path / "two_ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "scripts/encode_kb.py", "--config", "configs/experiment/synthetic_pretrain.yaml",
               *world_overrides(tmp_path), f"retrieval.index_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**subprocess_env(), "ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    # 36 items in shards of 8: rank 0 takes shards 0-1 (it logs), rank 1 shards 2-4 (info is main-only).
    assert "process 0: 2 shards encoded, 0 already done; 16 items" in result.stderr
    assert read_layout(out)["encoder_fingerprint"] == single.fingerprint
    for group in GROUPS:
        ranks, one = open_embeddings(out / "embeddings" / group), open_embeddings(single.embeddings_dir / group)
        assert list(ranks.iter_ids()) == list(one.iter_ids())
        np.testing.assert_allclose(ranks.read_range(0, ranks.count), one.read_range(0, one.count), atol=1e-6)
