"""
Multi-node training, proven on one machine: two torchrun agents, each one "node" of one process, started as separate
processes the way srun starts one per machine, meet at torchrun's own c10d rendezvous on localhost and train as one
job (gloo). Their losses equal one process's with the same global batch, and checkpoints move between world sizes:
written by 2 processes, resumed on 1, and the reverse, with the next losses equal to an uninterrupted run's.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from test_train import ENV_DIST, TINY, corpus, free_port, losses, train  # noqa: F401  (corpus: a fixture)


def train_two_nodes(out_dir, corpus, *extra, timeout=180):
    """train.py as one job of 2 nodes x 1 process: `torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=...`
    twice, as the README's multi-node commands run it. Tried again once, on a fresh port, when the job fails before
    its first logged step (a port taken between choosing and binding it); a failure after that is reported."""
    args = [f"--out_dir={out_dir}", f"--data_dir={corpus}", *TINY, *extra]
    log = os.path.join(out_dir, "log.jsonl")
    for attempt in (1, 2):
        logged = len(open(log).readlines()) if os.path.isfile(log) else 0
        port = free_port()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=nanopmc-{port}"]
        agents = [subprocess.Popen(cmd + [f"--node_rank={r}", "train.py", *args], cwd=ROOT, env=ENV_DIST,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        try:
            outs = [a.communicate(timeout=timeout) for a in agents]
        finally:
            for a in agents:
                if a.poll() is None:
                    a.kill()
                    a.communicate()
        if all(a.returncode == 0 for a in agents):
            return outs
        started = os.path.isfile(log) and len(open(log).readlines()) > logged
        if started or attempt == 2:
            raise AssertionError("\n".join(f"agent {r}: exit {a.returncode}\n{o[-2000:]}\n{e[-4000:]}"
                                           for r, (a, (o, e)) in enumerate(zip(agents, outs))))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """One process, 6 steps, a checkpoint at step 3 (and 6): the run every multi-node result must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(out, corpus, "--max_iters=6", "--ckpt_interval=3", "--export_dtype=")
    return out


def resume_from(ckpt, out_dir):
    """A fresh out_dir holding only ckpt: what a job sees when it restarts from shared storage."""
    os.makedirs(out_dir)
    shutil.copytree(ckpt, os.path.join(out_dir, os.path.basename(ckpt)))
    return out_dir


def test_two_nodes_train_like_one_process_and_their_checkpoint_resumes_on_one(tmp_path, corpus, reference):
    ref = losses(reference)
    two = tmp_path / "two"
    train_two_nodes(two, corpus, "--max_iters=3", "--lr_decay_iters=6", "--export_dtype=")  # the same schedule
    got = losses(two)
    assert sorted(got) == [1, 2, 3] and all(abs(got[i] - ref[i]) <= 1e-5 for i in got), (got, ref)
    ckpt = two / "ckpt-00000003"
    assert json.load(open(ckpt / "train_state.json"))["world_size"] == 2
    assert sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    one = resume_from(ckpt, tmp_path / "one")
    train(one, corpus, "--max_iters=6", "--init_from=resume", "--export_dtype=")
    got = losses(one)
    assert sorted(got) == [4, 5, 6] and all(abs(got[i] - ref[i]) <= 1e-5 for i in got), (got, ref)


def test_one_process_checkpoint_resumes_on_two_nodes(tmp_path, corpus, reference):
    ref = losses(reference)
    run = resume_from(reference / "ckpt-00000003", tmp_path / "run")
    train_two_nodes(run, corpus, "--max_iters=6", "--init_from=resume", "--export_dtype=")
    got = losses(run)
    assert sorted(got) == [4, 5, 6] and all(abs(got[i] - ref[i]) <= 1e-5 for i in got), (got, ref)
    assert json.load(open(run / "ckpt-00000006" / "train_state.json"))["world_size"] == 2
