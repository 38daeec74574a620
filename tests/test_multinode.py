"""
Multi-node training, proven on one machine: two torchrun agents, each one "node" of one process, started as separate
processes the way srun starts one per machine, meet at torchrun's own c10d rendezvous on localhost and train as one
job (gloo). Their losses equal one process's with the same global batch; preempted with SIGTERM (as SLURM signals
every task of a job), the job saves a checkpoint; and checkpoints move between world sizes: written by 2 processes,
resumed on 1, and the reverse, with the next losses equal to an uninterrupted run's.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_train import ENV_DIST, TINY, corpus, losses, resume_from, train  # noqa: F401  (corpus: a fixture)


def free_port():
    """A port for the two agents' shared c10d endpoint (both must be told it; --standalone cannot serve two)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

SCHEDULE = "--lr_decay_iters=12"  # every run below shares the reference's 12-step warmup + cosine schedule


def launch_two_nodes(out_dir, corpus, *extra):
    """train.py as one job of 2 nodes x 1 process: docs/training.md's `torchrun --nnodes=2 --rdzv-backend=c10d
    --rdzv-endpoint=HOST:PORT` started twice, as srun starts it once per node."""
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=nanopmc-{port}"]
    args = [f"--out_dir={out_dir}", f"--data_dir={corpus}", *TINY, *extra]
    return [subprocess.Popen(cmd + [f"--node_rank={r}", "train.py", *args], cwd=ROOT, env=ENV_DIST,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]


def finish(agents, timeout=180):
    """Wait for both agents (killing them past the timeout); -> [(stdout, stderr)] per agent."""
    try:
        return [a.communicate(timeout=timeout) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.communicate()


def logged(out_dir):
    log = os.path.join(out_dir, "log.jsonl")
    return len(open(log).readlines()) if os.path.isfile(log) else 0


def report(agents, outs):
    return "\n".join(f"agent {r}: exit {a.returncode}\n{o[-2000:]}\n{e[-4000:]}"
                     for r, (a, (o, e)) in enumerate(zip(agents, outs)))


def train_two_nodes(out_dir, corpus, *extra):
    """Run the two-node job to its end. Tried again once, on a fresh port, when it fails before its first logged step
    (a port taken between choosing and binding it); a failure after that is reported."""
    for attempt in (1, 2):
        before = logged(out_dir)
        agents = launch_two_nodes(out_dir, corpus, *extra)
        outs = finish(agents)
        if all(a.returncode == 0 for a in agents):
            return outs
        if logged(out_dir) > before or attempt == 2:
            raise AssertionError(report(agents, outs))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """One process, 12 steps, a checkpoint every 3: the run every multi-node result must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(out, corpus, "--max_iters=12", "--ckpt_interval=3", "--keep_checkpoints=4", "--export_dtype=")
    return out


def close(got, ref, steps):
    return sorted(got) == list(steps) and all(abs(got[i] - ref[i]) <= 1e-5 for i in steps)


def test_preempted_two_node_job_saves_and_resumes_on_one_process(tmp_path, corpus, reference):
    """Two nodes train like one process; SIGTERM to both agents (SLURM's preemption) makes the workers save at the
    next step boundary; that 2-process checkpoint resumes on 1 process with the uninterrupted run's losses."""
    ref = losses(reference)
    two = tmp_path / "two"
    for attempt in (1, 2):
        agents = launch_two_nodes(two, corpus, "--max_iters=1000", SCHEDULE, "--export_dtype=")
        t0 = time.time()
        while logged(two) < 3 and all(a.poll() is None for a in agents) and time.time() - t0 < 120:
            time.sleep(0.05)
        if logged(two) >= 3 or attempt == 2:
            break
        for a in agents:  # not started (a rendezvous port lost): once more, on a fresh port
            a.kill()
            a.communicate()
    for a in agents:
        a.send_signal(signal.SIGTERM)
    outs = finish(agents)
    assert any("preempted: checkpoint saved at iteration" in o for o, _ in outs), report(agents, outs)
    from train import latest_checkpoint
    ckpt = latest_checkpoint(str(two))
    state = json.load(open(os.path.join(ckpt, "train_state.json")))
    k = state["iter"]
    assert state["world_size"] == 2 and 3 <= k <= 9, (state, report(agents, outs))
    assert sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert close(losses(two), ref, range(1, k + 1)), (losses(two), ref)
    one = resume_from(ckpt, tmp_path / "one")
    train(one, corpus, f"--max_iters={k + 3}", SCHEDULE, "--init_from=resume", "--export_dtype=")
    assert close(losses(one), ref, range(k + 1, k + 4)), (k, losses(one), ref)


def test_one_process_checkpoint_resumes_on_two_nodes(tmp_path, corpus, reference):
    ref = losses(reference)
    run = resume_from(reference / "ckpt-00000003", tmp_path / "run")
    train_two_nodes(run, corpus, "--max_iters=6", SCHEDULE, "--init_from=resume", "--export_dtype=")
    assert close(losses(run), ref, range(4, 7)), (losses(run), ref)
    assert json.load(open(run / "ckpt-00000006" / "train_state.json"))["world_size"] == 2
