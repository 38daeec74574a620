import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import make_hf_llama
from lora import (LoRALinear, apply_lora, adapter_config, load_adapter, mark_only_lora_as_trainable, merge_lora,
                  save_adapter, unmerge_lora)
from weights import load_model


pytestmark = pytest.mark.usefixtures("one_thread")  # toy-sized models


@pytest.fixture
def models(tmp_path):
    hf = make_hf_llama(tmp_path / "hf", num_key_value_heads=2)
    ours = load_model(str(tmp_path / "hf"))
    apply_lora(ours, r=8, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return hf, ours, tmp_path


def peft_model(hf, r=8, alpha=8, dropout=0.0, rslora=False):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora,
                     target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
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
    fresh = load_model(str(tmp / "hf"))
    apply_lora(fresh, seed=3)
    assert all((m.lora_B.weight == 0).all() for m in fresh.modules() if isinstance(m, LoRALinear))
    a = next(m.lora_A.weight for m in fresh.modules() if isinstance(m, LoRALinear))
    assert a.abs().max() <= 1 / 64 ** 0.5 and a.std() > 0.05  # kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in)
    with torch.no_grad():  # B = 0: the adapter starts as a no-op
        assert torch.equal(fresh(IDX)[0], load_model(str(tmp / "hf"))(IDX)[0])


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
    fresh = load_model(str(tmp / "hf"))
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
        load_adapter(load_model(str(tmp / "hf")), str(tmp_path))
    save_adapter(ours, tmp / "a", {**adapter_config(ours), "use_dora": True})
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(load_model(str(tmp / "hf")), str(tmp / "a"))
    cfg = adapter_config(ours)
    cfg["r"] = 4
    save_adapter(ours, tmp / "b", cfg)
    with pytest.raises(ValueError, match=r"lora_A.weight has shape \(8, 64\) but the model expects \(4, 64\)"):
        load_adapter(load_model(str(tmp / "hf")), str(tmp / "b"))


# --- scaling (alpha != r, rsLoRA), dropout and the merged export, against PEFT --------------------------------------

CASES = {"r4_alpha16": (4, 16, False), "r16_alpha8": (16, 8, False), "r8_alpha32_rslora": (8, 32, True),
         "r4_alpha4_rslora": (4, 4, True)}  # scale 4, 0.5, 32/sqrt(8), 2: never 1


def expected_scale(r, alpha, rslora):
    return alpha / r ** 0.5 if rslora else alpha / r


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora_base") / "hf"
    return make_hf_llama(path, num_key_value_heads=2), str(path)


def lora_pair(base, r, alpha, rslora, dropout=0.0):
    """Our LoRA model and PEFT's on the same base, with the same random (non-zero) A and B."""
    hf, path = base
    ours = load_model(path)
    apply_lora(ours, r=r, alpha=alpha, dropout=dropout, use_rslora=rslora)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=g)
    pm = peft_model(hf, r, alpha, dropout, rslora)
    copy_ours_into_peft(ours, pm)
    return ours, pm


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_scaled_lora_matches_peft_unmerged_and_merged(base, case, tmp_path):
    from transformers import LlamaForCausalLM
    from lora import merged_state_dict
    from weights import save_hf
    r, alpha, rslora = CASES[case]
    ours, pm = lora_pair(base, r, alpha, rslora)
    with torch.no_grad():
        ref = pm(IDX).logits
        assert max_diff(ours(IDX)[0], ref) <= 1e-5
        assert max_diff(base[0](IDX).logits, ref) > 1e-2  # the adapter matters: a wrong scale could not pass
        sd = {k: v.clone() for k, v in ours.state_dict().items()}
        merged_sd = merged_state_dict(sd, expected_scale(r, alpha, rslora))
        merge_lora(ours)  # the state-dict merge (finetune_qa's export) and the in-place merge give the same weights
        assert merged_sd.keys() == load_model(base[1]).state_dict().keys()
        assert all(max_diff(merged_sd[k], v) <= 1e-6 for k, v in ours.state_dict().items() if k in merged_sd)
        hf_merged = pm.merge_and_unload()
        theirs = hf_merged.state_dict()
        assert all(max_diff(merged_sd[k], theirs[k]) <= 1e-6 for k in merged_sd), case
        save_hf(merged_sd, ours.args, tmp_path / "merged", dtype=torch.float32)
        exported = LlamaForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
        assert max_diff(exported(IDX).logits, hf_merged(IDX).logits) <= 1e-5
        assert max_diff(exported(IDX).logits, ref) <= 1e-5


@pytest.mark.parametrize("case", ["r4_alpha16", "r8_alpha32_rslora"])
def test_scaled_adapters_roundtrip_with_peft(base, case, tmp_path):
    from peft import PeftModel
    r, alpha, rslora = CASES[case]
    ours, pm = lora_pair(base, r, alpha, rslora)
    save_adapter(ours, tmp_path / "ours", adapter_config(ours, base[1]))
    loaded = PeftModel.from_pretrained(copy.deepcopy(base[0]), str(tmp_path / "ours")).eval()
    pm.save_pretrained(str(tmp_path / "peft"))
    fresh = load_model(base[1])
    cfg = load_adapter(fresh, str(tmp_path / "peft"))
    assert (cfg["r"], cfg["lora_alpha"], cfg.get("use_rslora", False)) == (r, alpha, rslora)
    with torch.no_grad():
        ref = pm(IDX).logits
        assert max_diff(loaded(IDX).logits, ref) <= 1e-5
        assert max_diff(fresh(IDX)[0], ref) <= 1e-5


def test_lora_linear_formula_and_dropout():
    """y = x W^T + s * B(A(dropout(x))): eval mode is the dropout-free output exactly; train mode draws one dropout
    mask over x (the same draws as F.dropout from the same RNG state) and is right on average."""
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 12, bias=False)
    for dropout in (0.0, 0.3):
        m = LoRALinear.from_linear(base, r=4, alpha=12, dropout=dropout)
        m.reset_lora_parameters(torch.Generator().manual_seed(1))
        with torch.no_grad():
            m.lora_B.weight.normal_()
        x = torch.randn(5, 24)
        A, B, W = m.lora_A.weight, m.lora_B.weight, base.weight
        clean = x @ W.T + 3.0 * (x @ A.T @ B.T)
        m.eval()
        with torch.no_grad():
            assert max_diff(m(x), clean) <= 1e-5
            m.train()
            torch.manual_seed(7)
            y = m(x)
            torch.manual_seed(7)
            manual = x @ W.T + 3.0 * (F.dropout(x, dropout, training=True) @ A.T @ B.T)
            assert max_diff(y, manual) <= 1e-5
            if dropout:
                assert max_diff(y, clean) > 1e-2
                mean = m(x.expand(4000, *x.shape)).mean(0)  # E[dropout(x)] = x: 4000 independent masks
                assert max_diff(mean, clean) <= 0.05 * clean.abs().max().item()
            else:
                assert torch.equal(y, m.eval()(x))


def test_dropout_matches_peft_in_train_and_eval_mode(base, tmp_path):
    ours, pm = lora_pair(base, 8, 16, False, dropout=0.25)
    with torch.no_grad():
        ref_eval = pm(IDX).logits
        assert max_diff(ours.eval()(IDX)[0], ref_eval) <= 1e-5
        ours.train(), pm.train()
        torch.manual_seed(11)
        y = ours(IDX)[0]
        torch.manual_seed(11)
        assert max_diff(y, pm(IDX).logits) <= 1e-5  # the same masks, drawn in the same order
        assert max_diff(y, ref_eval) > 1e-3
    save_adapter(ours, tmp_path / "a", adapter_config(ours))
    from lora import read_adapter_config
    assert read_adapter_config(str(tmp_path / "a"))["lora_dropout"] == 0.25
