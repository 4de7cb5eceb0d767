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

rendezvous, mode = sys.argv[1:3]

def job(argv):
    dist.init_process_group("gloo", init_method="file://" + rendezvous + argv[0], rank=0, world_size=1)
    atexit.register(lambda: print("teardown ran", flush=True))
    print("job output")  # stdout is a pipe: block-buffered, so only a flush writes it
    logging.getLogger("job").warning("job logged")
    if argv[1] == "close":
        end_distributed()
    return 3

if mode == "earlier":  # an earlier job in this process closed its group; the entry point's own job does not
    job(["-earlier", "close"])
run_main(job, ["", "keep" if mode == "earlier" else mode])
"""


@pytest.mark.parametrize(("mode", "teardown"), [("close", False), ("keep", True), ("earlier", True)])
def test_a_job_that_closed_its_process_group_exits_with_its_code_and_output_but_no_teardown(tmp_path, mode, teardown):
    buffered = {key: value for key, value in env().items() if key != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "rendezvous"), mode],
                            cwd=ROOT, env=buffered, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "job output" in result.stdout and "job logged" in result.stderr
    assert ("teardown ran" in result.stdout) is teardown
