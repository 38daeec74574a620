import copy

import pytest
import torch

from conftest import make_hf_llama
from lora import (LoRALinear, apply_lora, adapter_config, load_adapter, mark_only_lora_as_trainable, merge_lora,
                  save_adapter, unmerge_lora)
from weights import load_hf


@pytest.fixture
def models(tmp_path):
    hf = make_hf_llama(tmp_path / "hf", num_key_value_heads=2)
    ours = load_hf(str(tmp_path / "hf"))
    apply_lora(ours, r=8, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return hf, ours, tmp_path


def peft_model(hf):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(copy.deepcopy(hf), cfg).eval()


def copy_ours_into_peft(ours, pm):
    sd = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(sd[n.removeprefix("base_model.model.").replace(".default.", ".")])


IDX = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))


def test_logits_match_peft_with_same_weights(models):
    hf, ours, _ = models
    pm = peft_model(hf)
    copy_ours_into_peft(ours, pm)
    with torch.no_grad():
        assert (pm(IDX).logits - ours(IDX)[0]).abs().max().item() <= 1e-5


def test_trainable_count_and_init_match_peft(models):
    hf, ours, tmp = models
    pm = peft_model(hf)
    trainable, _ = pm.get_nb_trainable_parameters()
    assert mark_only_lora_as_trainable(ours) == trainable
    fresh = load_hf(str(tmp / "hf"))
    apply_lora(fresh, seed=3)
    assert all((m.lora_B.weight == 0).all() for m in fresh.modules() if isinstance(m, LoRALinear))
    a = next(m.lora_A.weight for m in fresh.modules() if isinstance(m, LoRALinear))
    assert a.abs().max() <= 1 / 64 ** 0.5 and a.std() > 0.05  # kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in)
    with torch.no_grad():  # B = 0: the adapter starts as a no-op
        assert torch.equal(fresh(IDX)[0], load_hf(str(tmp / "hf"))(IDX)[0])


def test_our_adapter_loads_in_peft(models):
    from peft import PeftModel
    hf, ours, tmp = models
    save_adapter(ours, tmp / "adapter", adapter_config(ours, str(tmp / "hf")))
    pm = PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp / "adapter")).eval()
    with torch.no_grad():
        assert (pm(IDX).logits - ours(IDX)[0]).abs().max().item() <= 1e-5


def test_peft_adapter_loads_in_ours(models):
    hf, ours, tmp = models
    pm = peft_model(hf)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    pm.save_pretrained(str(tmp / "peft_adapter"))
    fresh = load_hf(str(tmp / "hf"))
    cfg = load_adapter(fresh, str(tmp / "peft_adapter"))
    assert cfg["r"] == 8
    with torch.no_grad():
        assert (pm(IDX).logits - fresh(IDX)[0]).abs().max().item() <= 1e-5


def test_merge_then_unmerge_restores_weights(models):
    _, ours, _ = models
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    with torch.no_grad():
        lora_logits = ours(IDX)[0]
        merge_lora(ours)
        assert (ours(IDX)[0] - lora_logits).abs().max().item() <= 1e-5
        assert not torch.equal(ours.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])
        unmerge_lora(ours)
    for n, p in ours.named_parameters():
        assert (p - before[n]).abs().max().item() <= 1e-6, n


def test_training_step_moves_only_lora(models):
    _, ours, _ = models
    mark_only_lora_as_trainable(ours)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    _, loss = ours(IDX, IDX)
    loss.backward()
    opt.step()
    for n, p in ours.named_parameters():
        if "lora_" in n:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


def test_bad_adapters(tmp_path, models):
    import json
    _, ours, tmp = models
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapter(load_hf(str(tmp / "hf")), str(tmp_path))
    save_adapter(ours, tmp / "a", {**adapter_config(ours), "use_dora": True})
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(load_hf(str(tmp / "hf")), str(tmp / "a"))
    cfg = adapter_config(ours)
    cfg["r"] = 4
    save_adapter(ours, tmp / "b", cfg)
    with pytest.raises(ValueError, match=r"lora_A.weight has shape \(8, 64\) but the model expects \(4, 64\)"):
        load_adapter(load_hf(str(tmp / "hf")), str(tmp / "b"))
