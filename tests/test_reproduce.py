import json
import os
import subprocess
import sys

from conftest import DATA, ROOT, data_path


def test_quick_reproduction_writes_every_output(tmp_path):
    data_path("pubmedqa", "ori_pqal.json")  # skip with a reason when the shared data is absent
    out = tmp_path / "tiny"
    r = subprocess.run([sys.executable, "reproduce_tiny.py", "--quick", f"--out={out}", f"--data_root={DATA}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (out / "table.md").read_text()
    for name in ("TinyLLaMA", "TinyPMC-LLaMA", "majority class", "PubMedQA", "MedMCQA", "USMLE", "perplexity"):
        assert name in table
    res = json.loads((out / "results.json").read_text())
    assert len(res["accuracy"]) == 2 * (3 + 2) and len(res["perplexity"]) == 4
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "curve,iter,loss_ema0.6"
    assert {l.split(",")[0] for l in curves[1:]} == {"TinyLLaMA-Full-PubMedQA", "TinyLLaMA-LoRA-PubMedQA",
                                                     "TinyPMC-LLaMA-Full-PubMedQA", "TinyPMC-LLaMA-LoRA-PubMedQA"}
    try:
        import matplotlib  # noqa: F401
        assert (out / "curves.png").stat().st_size > 10_000
    except ImportError:
        assert "matplotlib is not installed" in r.stderr
    for m in ("base", "pmc"):  # each step left its artefacts: corpora, HF exports, fine-tuned model and adapter
        assert os.path.isfile(out / m / "hf" / "model.safetensors")
        assert os.path.isfile(out / f"ft_{m}_lora" / "adapter" / "adapter_config.json")
    assert os.path.isfile(out / "data" / "biomed" / "meta.json")
