"""
LoRA (Hu et al. 2021), hand-written, with adapters saved and loaded in PEFT's format.

A LoRALinear *is* the nn.Linear it replaces (same `weight` parameter, same state-dict key) plus two small layers:
    y = x W^T + scale * B(A(dropout(x))),   A: in -> r (Kaiming-uniform), B: r -> out (zeros), scale = alpha / r
so a LoRA model still loads HF checkpoints unchanged, and its adapter keys are PEFT's keys without the
`base_model.model.` prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`). The paper's setting is PEFT's
defaults: r=8, alpha=8, dropout 0, targets q_proj and v_proj.

    apply_lora(model, r=8, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    mark_only_lora_as_trainable(model)
    save_adapter(model, "out/adapter")          # adapter_config.json + adapter_model.safetensors, loads in peft
    load_adapter(model, "some/peft/adapter")    # applies LoRA as configured there and loads A/B
    merge_lora(model); unmerge_lora(model)
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from weights import atomic_folder, copy_param_

PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Linear):
    def __init__(self, weight: nn.Parameter, r, alpha, dropout=0.0, use_rslora=False):
        nn.Module.__init__(self)  # not nn.Linear's: the base weight is handed in, never allocated twice
        self.out_features, self.in_features = weight.shape
        self.weight = weight  # the very same parameter as the replaced linear's
        self.register_parameter("bias", None)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = dict(bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.Linear(self.in_features, r, **kw)
        self.lora_B = nn.Linear(r, self.out_features, **kw)
        self.merged = False

    @classmethod
    def from_linear(cls, base: nn.Linear, r, alpha, dropout=0.0, use_rslora=False):
        if base.bias is not None:
            raise ValueError("LoRA here wraps bias-free linears (LLaMA has no biases)")
        return cls(base.weight, r, alpha, dropout, use_rslora)

    @torch.no_grad()
    def reset_lora_parameters(self, generator=None):
        """PEFT's init: A ~ kaiming_uniform(a=sqrt(5)) (= U(-1/sqrt(in), 1/sqrt(in))), B = 0, so LoRA starts as a no-op.
        Drawn whole on the CPU and copied, so FSDP-sharded parameters get the same values for any world size."""
        bound = 1.0 / math.sqrt(self.in_features)
        a = torch.empty(self.lora_A.weight.shape).uniform_(-bound, bound, generator=generator)
        copy_param_(self.lora_A.weight, a)
        copy_param_(self.lora_B.weight, torch.zeros(self.lora_B.weight.shape))

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self):
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False


def lora_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(model, r=8, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"), use_rslora=False, seed=0):
    """Replace every nn.Linear whose name ends in one of targets by a LoRALinear; returns the replaced names."""
    targets = tuple(targets)
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and child_name in targets:
                setattr(module, child_name, LoRALinear.from_linear(child, r, alpha, dropout, use_rslora))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    if not replaced:
        raise ValueError(f"apply_lora: no nn.Linear named {targets} in the model")
    if not any(p.is_meta for p in model.parameters()):
        init_lora(model, seed)
    return replaced


def init_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(model):
        m.reset_lora_parameters(gen)


def is_lora_param(name):
    return ".lora_A." in name or ".lora_B." in name


def mark_only_lora_as_trainable(model):
    for n, p in model.named_parameters():
        p.requires_grad = is_lora_param(n)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model):
    for _, m in lora_modules(model):
        m.merge()


def unmerge_lora(model):
    for _, m in lora_modules(model):
        m.unmerge()


def lora_state_dict(state_dict):
    return {k: v for k, v in state_dict.items() if is_lora_param(k)}


def merged_state_dict(state_dict, scaling):
    """A full state dict with every LoRA pair folded into its base weight (W + scaling * B @ A), LoRA keys dropped:
    merge_lora() for a state dict, e.g. one gathered from FSDP."""
    out = {k: v for k, v in state_dict.items() if not is_lora_param(k)}
    for k, w in out.items():
        a = state_dict.get(k.removesuffix(".weight") + ".lora_A.weight")
        if a is not None:
            b = state_dict[k.removesuffix(".weight") + ".lora_B.weight"]
            out[k] = (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
    return out


def adapter_config(model, base_model_name_or_path=""):
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA layers")
    m = mods[0][1]
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": m.r, "lora_alpha": m.alpha, "lora_dropout": getattr(m.lora_dropout, "p", 0.0),
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n, _ in mods}), "bias": "none",
        "use_rslora": m.scaling != m.alpha / m.r, "use_dora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def save_adapter(model_or_state, out_dir, config):
    """PEFT layout: adapter_config.json + adapter_model.safetensors with `base_model.model.`-prefixed keys.
    model_or_state is a LoRA model or a full state dict (e.g. gathered from FSDP); written to a temp folder, renamed."""
    from safetensors.torch import save_file
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(sd).items()}
    with atomic_folder(out_dir) as tmp:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return os.path.abspath(out_dir)


def read_adapter_config(path):
    cp = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(cp):
        raise FileNotFoundError(f"{path}: no adapter_config.json (expected a PEFT LoRA adapter folder)")
    with open(cp) as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cp}: peft_type {cfg['peft_type']!r}; only LORA adapters are supported")
    for key, ok in (("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if cfg.get(key, ok) != ok:
            raise ValueError(f"{cp}: {key}={cfg[key]!r} is not supported (need {ok!r})")
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save"):
        if cfg.get(key):
            raise ValueError(f"{cp}: {key} is not supported")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        raise ValueError(f"{cp}: target_modules as a regex ({targets!r}) is not supported; list module names")
    return cfg


def apply_lora_from_config(model, cfg, seed=0):
    return apply_lora(model, r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout", 0.0),
                      targets=cfg["target_modules"], use_rslora=cfg.get("use_rslora", False), seed=seed)


@torch.no_grad()
def load_adapter(model, path):
    """Apply LoRA as an adapter folder (ours or PEFT's) configures it, and load its A/B weights strictly."""
    from safetensors.torch import load_file
    cfg = read_adapter_config(path)
    if not lora_modules(model):
        apply_lora_from_config(model, cfg)
    wp = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(wp):
        raise FileNotFoundError(f"{path}: no adapter_model.safetensors")
    tensors = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in load_file(wp).items()}
    params = {n: p for n, p in model.named_parameters() if is_lora_param(n)}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{wp}: adapter does not match the model; missing {missing[:5]}, unexpected {unexpected[:5]}")
    for n, t in tensors.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"{wp}: tensor {n} has shape {tuple(t.shape)} but the model expects {tuple(params[n].shape)}")
        copy_param_(params[n], t)
    return cfg
