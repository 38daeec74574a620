import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_model_bench_runs_the_same_work_on_both_stacks(tmp_path):
    """bench.py --what=model at a toy shape: it measures (no timing is asserted) identical work on both sides."""
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "bench.py", "--what=model", "--dim=64", "--n_layers=2", "--n_heads=4",
                    "--n_kv_heads=2", "--intermediate_size=128", "--vocab_size=1000", "--seq_len=64",
                    "--micro_batch=2", "--prompt_len=16", "--new_tokens=16", "--reps=2", f"--out={out}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    res = json.load(open(out))["results"]
    assert res["identical_greedy_tokens"] is True
    assert abs(res["last_loss"]["ours"] - res["last_loss"]["hf"]) < 1e-4  # 4 AdamW steps from the same weights
    assert [r["metric"] for r in res["rows"]] == ["training step tokens/s", "greedy generation tokens/s",
                                                  "training peak RSS MiB"]
    assert all(r["ours"] > 0 and r["hf"] > 0 for r in res["rows"])
