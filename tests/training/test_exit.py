"""How an entry point ends after its job ran on a process group: output flushed, the exit code kept, the
interpreter's teardown skipped (a gloo worker thread still releasing a finished collective then aborts
the process; see :func:`rablip.utils.cli.exit_without_teardown`)."""

import subprocess
import sys

import pytest

from tests.training.launch import ROOT, env

SCRIPT = """
import atexit, logging, sys
import torch.distributed as dist
from rablip.utils.cli import run_main
from rablip.utils.dist import end_distributed

def main(argv):
    dist.init_process_group("gloo", init_method="file://" + argv[0], rank=0, world_size=1)
    atexit.register(lambda: print("teardown ran", flush=True))
    print("job output")  # stdout is a pipe: block-buffered, so only a flush writes it
    logging.getLogger("job").warning("job logged")
    if argv[1] == "close":
        end_distributed()
    return 3

run_main(main)
"""


@pytest.mark.parametrize("close", [True, False])
def test_a_job_that_closed_its_process_group_exits_with_its_code_and_output_but_no_teardown(tmp_path, close):
    buffered = {key: value for key, value in env().items() if key != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "rendezvous"), "close" if close else "keep"],
                            cwd=ROOT, env=buffered, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "job output" in result.stdout and "job logged" in result.stderr
    assert ("teardown ran" in result.stdout) is not close  # an open group (not from a job) keeps the normal exit
