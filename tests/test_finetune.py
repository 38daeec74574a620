import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_hf_with_tokenizer, torchrun
from test_train import ENV, ENV_DIST


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_hf_with_tokenizer(tmp_path_factory.mktemp("base") / "hf", max_position_embeddings=512)


def finetune(config, out_dir, base, *extra, nproc=1):
    args = [config, f"--init_from={base}", f"--out_dir={out_dir}", "--device=cpu", *extra]
    if nproc == 1:
        cmd = [sys.executable, "finetune_qa.py", *args]
    else:
        cmd = torchrun(nproc, "finetune_qa.py", *args)
    r = subprocess.run(cmd, cwd=ROOT, env=ENV if nproc == 1 else ENV_DIST, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def losses(out_dir):
    return [json.loads(l)["loss"] for l in open(os.path.join(out_dir, "log.jsonl"))]


@pytest.mark.parametrize("config", ["configs/ft_id_cpu.py", "configs/ft_usmle_cpu.py"])
@pytest.mark.parametrize("lora", [False, True])
def test_cpu_scenarios_lower_the_loss(tmp_path, base, config, lora):
    # the configs as shipped, on fewer examples and one epoch to keep the suite short
    r = finetune(config, tmp_path / "ft", base, f"--lora={lora}", "--select=0:64", "--epochs=1.0",
                 "--global_batch_size=16", "--micro_batch_size=8", "--log_interval=1", "--learning_rate=3e-3")
    ls = losses(tmp_path / "ft")
    assert len(ls) >= 3 and sum(ls[-2:]) / 2 < ls[0], ls
    cfg = json.load(open(tmp_path / "ft" / "train_config.json"))
    assert cfg["lora"] == lora and sum(cfg["examples"].values()) == 64
    if lora:
        assert os.path.isfile(tmp_path / "ft" / "adapter" / "adapter_model.safetensors")
        assert "LoRA fine-tuning of" in r.stdout
    else:
        assert os.path.isfile(tmp_path / "ft" / "hf" / "model.safetensors")


def test_lora_under_fsdp_two_processes(tmp_path, base):
    """FSDP2 with frozen base weights: 2 processes = 1 process, the base is untouched, only the adapter moved."""
    from safetensors.torch import load_file
    common = ["--lora=True", "--select=0:32", "--epochs=1.0", "--log_interval=1", "--global_batch_size=16",
              "--micro_batch_size=4", "--learning_rate=3e-3", "--export_merged=True"]
    finetune("configs/ft_id_cpu.py", tmp_path / "one", base, *common)
    finetune("configs/ft_id_cpu.py", tmp_path / "two", base, *common, nproc=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 2 and all(abs(a - b) <= 1e-5 for a, b in zip(one, two)), (one, two)
    a1 = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    a2 = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert all((a1[k] - a2[k]).abs().max() <= 1e-5 for k in a1) and any(a1[k].abs().sum() > 0 for k in a1 if "lora_B" in k)
    base_w = load_file(os.path.join(base, "model.safetensors"))
    merged = load_file(str(tmp_path / "two" / "hf" / "model.safetensors"))
    for k, v in base_w.items():  # only the LoRA targets differ after merging
        assert torch.equal(v, merged[k]) != (".q_proj." in k or ".v_proj." in k), k


def test_resume_lora_finetune_checkpoint_is_guarded(tmp_path, base):
    finetune("configs/ft_id_cpu.py", tmp_path / "r", base, "--lora=True", "--select=0:8", "--epochs=1.0",
             "--global_batch_size=8", "--export_dtype=")
    from weights import load_model
    ckpt = [d for d in os.listdir(tmp_path / "r") if d.startswith("ckpt-")][0]
    with pytest.raises(ValueError, match="LoRA fine-tuning checkpoint"):
        load_model(str(tmp_path / "r" / ckpt))
