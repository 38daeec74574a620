import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, data_path, make_hf_with_tokenizer, run_fresh_multiprocess, torchrun
from test_train import ENV, ENV_DIST


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_hf_with_tokenizer(tmp_path_factory.mktemp("base") / "hf", max_position_embeddings=512)


def finetune(config, out_dir, base, *extra, nproc=1):
    args = [config, f"--init_from={base}", f"--out_dir={out_dir}", "--device=cpu", *extra]
    if nproc == 1:
        r = subprocess.run([sys.executable, "finetune_qa.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
    else:  # multi-process runs here start in a fresh out_dir
        r = run_fresh_multiprocess(torchrun(nproc, "finetune_qa.py", *args), out_dir, cwd=ROOT, env=ENV_DIST,
                                   capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def losses(out_dir):
    return [json.loads(l)["loss"] for l in open(os.path.join(out_dir, "log.jsonl"))]


CONFIG_DATA = {"configs/ft_id_cpu.py": ("pubmedqa_train", ("pubmedqa", "ori_pqal.json")),
               "configs/ft_usmle_cpu.py": ("usmle_train", ("medqa_usmle", "phrases_no_exclude_dev.jsonl"))}


@pytest.mark.parametrize("config", list(CONFIG_DATA))
def test_cpu_configs_read_the_tests_data_root(config, tmp_path, monkeypatch):
    import finetune_qa
    from configurator import configure
    key, rel = CONFIG_DATA[config]
    monkeypatch.chdir(tmp_path)  # relative to the repository, not to the working directory
    monkeypatch.setenv("NANOPMC_DATA", str(tmp_path / "elsewhere"))
    resolved = lambda: configure(dict(vars(finetune_qa)), [os.path.join(ROOT, config)])[key]  # noqa: E731
    assert resolved() == str(tmp_path.joinpath("elsewhere", *rel))
    monkeypatch.delenv("NANOPMC_DATA")
    path = resolved()
    assert os.path.normpath(path) == os.path.normpath(os.path.join(ROOT, "..", "shared", "data", *rel))


@pytest.mark.parametrize("config", list(CONFIG_DATA))
@pytest.mark.parametrize("lora", [False, True])
def test_cpu_scenarios_lower_the_loss(tmp_path, base, config, lora):
    data_path(*CONFIG_DATA[config][1])  # the config reads this file: skip with the reason when it is absent
    # the configs as shipped, on fewer examples and one epoch to keep the suite short; 4 steps of a random base need
    # a large step for LoRA to move the loss on long USMLE prompts
    r = finetune(config, tmp_path / "ft", base, f"--lora={lora}", "--select=0:64", "--epochs=1.0",
                 "--global_batch_size=16", "--micro_batch_size=8", "--log_interval=1", "--learning_rate=1e-2")
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
    """FSDP2 with frozen base weights: 2 processes = 1 process, the base is untouched, only the adapter moved; the
    merged export (alpha / r = 4) is W + 4 B A of the saved adapter and gives PEFT's merged model's logits."""
    from safetensors.torch import load_file
    data_path("pubmedqa", "ori_pqal.json")
    common = ["--lora=True", "--select=0:32", "--epochs=1.0", "--log_interval=1", "--global_batch_size=16",
              "--micro_batch_size=4", "--learning_rate=3e-3", "--export_merged=True", "--lora_r=4", "--lora_alpha=16"]
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
        if not torch.equal(v, merged[k]):
            pre = "base_model.model." + k.removesuffix(".weight")
            delta = 4.0 * a2[pre + ".lora_B.weight"] @ a2[pre + ".lora_A.weight"]
            assert (merged[k] - (v + delta)).abs().max() <= 1e-6, k
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    peft_merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), str(tmp_path / "two" / "adapter"))
    peft_merged = peft_merged.merge_and_unload().eval()
    ours = LlamaForCausalLM.from_pretrained(str(tmp_path / "two" / "hf")).eval()
    idx = torch.randint(0, 32000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx).logits - peft_merged(idx).logits).abs().max().item() <= 1e-5


def test_resume_lora_finetune_checkpoint_is_guarded(tmp_path, base):
    data_path("pubmedqa", "ori_pqal.json")
    finetune("configs/ft_id_cpu.py", tmp_path / "r", base, "--lora=True", "--select=0:8", "--epochs=1.0",
             "--global_batch_size=8", "--export_dtype=")
    from weights import load_model
    ckpt = [d for d in os.listdir(tmp_path / "r") if d.startswith("ckpt-")][0]
    with pytest.raises(ValueError, match="LoRA fine-tuning checkpoint"):
        load_model(str(tmp_path / "r" / ckpt))


def test_qa_batches_labels_are_the_answer_ids_and_padding_is_masked():
    """Every example once per epoch, right-padded with the pad id; the labels are -100 on BOS, the prompt, the last
    position and the padding, and at position t the answer token t + 1 elsewhere (a character tokenizer: the
    answer's ids are simply its characters')."""
    from types import SimpleNamespace
    import qa_data
    from finetune_qa import QABatches
    encode = lambda s: [ord(ch) + 3 for ch in s]  # noqa: E731
    examples = [qa_data.QAExample(str(i), "Q" * (2 + 5 * i) + "?\nAnswer:", [" yes", " no", " maybe"], i % 3)
                for i in range(11)]
    encoded = [qa_data.encode_example(encode, 1, e, 128) for e in examples]  # none cut: 12 to 68 tokens
    expect = {}
    for e in examples:
        ids = [1] + encode(e.prompt + e.answer)
        n_ans = len(e.answer)
        expect[tuple(ids)] = [ids[t + 1] if t + 1 >= len(ids) - n_ans else -100 for t in range(len(ids) - 1)] + [-100]
    c = SimpleNamespace(seed=5, global_batch_size=4, micro_batch_size=2, grad_accum=2)
    pad = 2  # not 0: padding must be the pad id, not whatever a fresh tensor holds
    data = QABatches(encoded, c, 0, 1, pad_id=pad)
    assert data.steps_per_epoch == 3
    orders = []
    for epoch in (0, 1):
        seen, pad_rows = [], 0
        for step in range(3):
            for x, y in data.micro_batches(epoch, step):
                assert x.shape == y.shape and x.shape[0] == 2
                for row_x, row_y in zip(x.tolist(), y.tolist()):
                    n = sum(t != pad for t in row_x)
                    assert row_x[n:] == [pad] * (len(row_x) - n) and row_y[n:] == [-100] * (len(row_y) - n)
                    if n == 0:  # the epoch's last step is short of one example: an all-padding row
                        pad_rows += 1
                        continue
                    ids = tuple(row_x[:n])
                    assert row_y[:n] == expect[ids]
                    seen.append(ids)
                assert (x[y != -100] != pad).all()  # no label ever sits on a padding position
        assert sorted(seen) == sorted(expect) and pad_rows == 1
        orders.append(seen)
    assert orders[0] != orders[1]  # shuffled afresh each epoch ...
    again = QABatches(encoded, c, 0, 1, pad_id=pad)  # ... from (seed, epoch) alone: a resumed run sees the same
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data.micro_batches(1, 2), again.micro_batches(1, 2)))
