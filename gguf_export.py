"""
GGUF out: our models as llama.cpp files, written as llama.cpp's own converter (convert_hf_to_gguf.py, LlamaModel;
convert_lora_to_gguf.py for adapters) writes an HF LLaMA, so llama.cpp, ollama, LM Studio and llama-cpp-python run
them with no converter and none of its requirements.

    python gguf_export.py --init_from=out/pmc/hf --out=pmc-f16.gguf --outtype=f16            # f32 | f16 | bf16 | q8_0
    python gguf_export.py --init_from=base.gguf --lora=out/ft/adapter --out=adapter.gguf     # the adapter alone
    python gguf_export.py --init_from=base.gguf --lora=out/ft/adapter --merge --out=ft.gguf  # base + adapter merged

    save_gguf(model_or_state, args, "model.gguf", outtype="f16", tokenizer=tok)
    save_gguf_lora(lora_state, args, "adapter.gguf", scaling=alpha / r)

--init_from takes whatever load_model reads: an HF folder, one of train.py's checkpoint folders, or a .gguf. A model
file holds the converter's `llama.*` metadata, the tokenizer (`tokenizer.ggml.*`: a sentencepiece vocabulary as
model `llama`, a byte-level BPE as `gpt2` with its merges and pre-tokenizer name, the special ids and the add-BOS
flag, so the file alone tokenizes as our Tokenizer does), and the weights under llama.cpp's names with q/k rows in
llama.cpp's interleaved rope order; norms stay F32, every matrix takes the outtype (Q8_0 by gguf's own quantizer);
a tied head is the embedding alone (llama.cpp reuses token_embd when output.weight is absent). An adapter file is
what llama.cpp's --lora / llama-cpp-python's lora_path= loads on top of the base GGUF: `<tensor>.lora_a` (A) and
`.lora_b` (B, q/k rows permuted as the base's), with adapter.lora.alpha = scaling * r (llama.cpp scales by alpha/r).

Everything that could make a file wrong (a rope scaling llama.cpp cannot express, Q8_0 rows that are not whole
32-value blocks, an F16 overflow, a tokenizer larger than the model's vocabulary or with a pre-tokenizer llama.cpp
lacks, a tensor with no llama.cpp name) is a one-line error before the file is opened; it is written to `out.tmp`
and renamed when complete. `gguf` is imported only here, when a file is written.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from configurator import configure, require
from model import ModelArgs
from tokenizer import (_PRE, BYTE, CONTROL, NORMAL, TOKENIZER_PATHS, UNKNOWN, UNUSED, USER_DEFINED, Tokenizer,
                       _add_specials, _byte_level_bpe, _need, gguf_reader)
from weights import GGUF_NAMES, MODEL_PATHS, load_model, read_args

OUTTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
            "q8_0": ("Q8_0", "MOSTLY_Q8_0")}  # --outtype -> (tensor type, general.file_type), as the converter's
TO_GGUF = {ours: theirs for theirs, ours in GGUF_NAMES.items()}
F16_MAX = 65504.0
# one name per pre-tokenizer of tokenizer._PRE (llama.cpp splits every name of a group alike), tried in this order
PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")
assert set(PRE_NAMES) <= set(_PRE)
# the text llama.cpp's converter tokenizes to tell pre-tokenizers apart (get_vocab_base_pre), and medical text
CHECK_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
              "✅ 🦙🦙 "
              "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
              "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE "
              "you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
              " Serum K+ 5.9 mEq/L;  creatinine 2.1 mg/dL (×2), time  70 min. Metformin is a first-line biguanide.")

# settings of the command (python gguf_export.py --key=value)
init_from = ""  # HF folder, train.py checkpoint folder or .gguf: the model (with --lora, the base)
out = ""  # the .gguf to write
outtype = "f16"  # f32 | f16 | bf16 | q8_0
tokenizer = ""  # tokenizer.model / tokenizer.json / folder / .gguf; default: the one inside init_from
lora = ""  # a LoRA adapter folder (PEFT format: finetune_qa.py's out_dir/adapter)
merge = False  # with --lora: the base with the adapter merged; without: the adapter alone, a llama.cpp LoRA GGUF
name = ""  # general.name; default: init_from's file or folder name


def gguf_type(outtype, where="outtype"):
    if outtype not in OUTTYPES:
        raise ValueError(f"{where}={outtype!r}: not a GGUF type we write ({', '.join(OUTTYPES)})")
    return OUTTYPES[outtype]


def gguf_name(name):
    """Our (HF) parameter name -> llama.cpp's, or None."""
    if name.startswith("model.layers."):
        i, rest = name[len("model.layers."):].split(".", 1)
        return f"blk.{i}.{TO_GGUF[rest]}" if rest in TO_GGUF else None
    return TO_GGUF.get(name)


def permute_rope_rows(w, n_heads):
    """llama.cpp's converter (LlamaModel.permute): each head's q/k rows from HF's rotate-half order to interleaved
    pairs, row (h, j, i) of (heads, 2, d/2) -> (h, i, j); weights.unpermute_rope_rows undoes it."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_heads(name, args):
    """The head count whose rows a q/k weight (or its LoRA B) is permuted by; None for every other tensor."""
    parts = name.split(".")
    return args.n_heads if "q_proj" in parts else args.n_kv_heads if "k_proj" in parts else None


# -----------------------------------------------------------------------------
# tensors: a plan of (llama.cpp name, shape, type, source) checked whole before anything is written

@dataclass
class Planned:
    name: str  # llama.cpp's
    shape: tuple  # PyTorch's (rows, cols) order
    qtype: str  # gguf.GGMLQuantizationType name
    get: object  # () -> float32 numpy array, in llama.cpp's row order


def check_tensor(where, name, t, qtype):
    """A tensor that this type cannot hold faithfully is an error naming it."""
    if qtype == "Q8_0" and t.shape[-1] % 32:
        raise ValueError(f"{where}: tensor {name} has rows of {t.shape[-1]} values, not whole Q8_0 blocks of 32; "
                         "use --outtype=f16, bf16 or f32")
    if qtype == "F16" and t.numel() and float(t.detach().abs().max()) > F16_MAX:
        raise ValueError(f"{where}: tensor {name} has values beyond F16's range (|x| > 65504); use bf16 or f32")


def source(t, heads):
    """The float32 numpy array of t as llama.cpp stores it, made only when written (one tensor in memory)."""
    def get():
        w = t.detach().to("cpu", torch.float32)
        return (permute_rope_rows(w, heads) if heads else w).contiguous().numpy()
    return get


def rope_freqs(args):
    """Llama-3.1's rope scaling as llama.cpp's converter writes it: a `rope_freqs` tensor of per-frequency divisors
    (from our own inverse frequencies, so it is exactly the scaling the model runs)."""
    from model import rope_inv_freq
    plain = rope_inv_freq(ModelArgs(dim=args.head_dim, n_heads=1, rope_theta=args.rope_theta))
    divisors = (plain.double() / rope_inv_freq(args).double()).float()
    return Planned("rope_freqs.weight", tuple(divisors.shape), "F32", lambda: divisors.numpy())


def rope_kind(args, where):
    kind = (args.rope_scaling or {}).get("rope_type", (args.rope_scaling or {}).get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ValueError(f"{where}: rope scaling type {kind!r} has no llama.cpp form we write "
                         "(default, linear, llama3)")
    return kind


def plan_model(sd, args, outtype, where):
    qtype = gguf_type(outtype)[0]
    plan = [rope_freqs(args)] if rope_kind(args, where) == "llama3" else []
    for name, t in sd.items():
        if name == "lm_head.weight" and args.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd for the head when output.weight is absent
        g = gguf_name(name)
        if g is None:
            hint = " (a LoRA tensor: merge the adapter first)" if ".lora_" in name else ""
            raise ValueError(f"{where}: tensor {name} has no llama.cpp name{hint}")
        qt = "F32" if t.ndim == 1 or g.endswith("_norm.weight") else qtype  # norms stay F32, as the converter's
        check_tensor(where, name, t, qt)
        plan.append(Planned(g, tuple(t.shape), qt, source(t, rope_heads(name, args))))
    return plan


def linear_shapes(args):
    """(out, in) of every linear of a LLaMA block, by our module name."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    return {"self_attn.q_proj": (q, args.dim), "self_attn.k_proj": (kv, args.dim), "self_attn.v_proj": (kv, args.dim),
            "self_attn.o_proj": (args.dim, q), "mlp.gate_proj": (args.intermediate_size, args.dim),
            "mlp.up_proj": (args.intermediate_size, args.dim), "mlp.down_proj": (args.dim, args.intermediate_size)}


def plan_lora(lora_sd, args, outtype, where):
    """A/B pairs -> `<name>.lora_a` (A, r x in) and `<name>.lora_b` (B, out x r, q/k rows permuted like the base's):
    llama.cpp computes W x + scale * B (A x), as PEFT does, with the same row order as its base tensor."""
    qtype = gguf_type(outtype)[0]
    shapes, plan = linear_shapes(args), []
    for key in sorted(k for k in lora_sd if k.endswith(".lora_A.weight")):
        base = key.removesuffix(".lora_A.weight")
        a, b = lora_sd[key], lora_sd.get(base + ".lora_B.weight")
        g = gguf_name(base + ".weight")
        layer = base.split(".")[3:] if base.startswith("model.layers.") else []
        if b is None or g is None or ".".join(layer) not in shapes or int(base.split(".")[2]) >= args.n_layers:
            raise ValueError(f"{where}: LoRA tensor {key} has no B, or is not on a linear of the model's blocks")
        want = shapes[".".join(layer)]
        if (b.shape[0], a.shape[1]) != want or a.shape[0] != b.shape[1]:
            raise ValueError(f"{where}: LoRA pair {base} is {tuple(b.shape)} @ {tuple(a.shape)} but the model's "
                             f"{base} is {want}: an adapter of another model")
        for suffix, t, heads in ((".lora_a", a, None), (".lora_b", b, rope_heads(base, args))):
            check_tensor(where, key if suffix == ".lora_a" else base + ".lora_B.weight", t, qtype)
            plan.append(Planned(g + suffix, tuple(t.shape), qtype, source(t, heads)))
    if not plan or len(plan) != len(lora_sd):
        raise ValueError(f"{where}: the adapter holds {len(lora_sd)} tensors, {len(plan)} of them in LoRA A/B pairs "
                         "(llama.cpp's adapters hold A/B pairs alone)")
    return plan


# -----------------------------------------------------------------------------
# the tokenizer: our Tokenizer as `tokenizer.ggml.*` metadata

@dataclass
class Vocab:
    model: str  # "llama" (sentencepiece) | "gpt2" (byte-level BPE)
    pre: str
    tokens: list
    types: list
    scores: Optional[list] = None
    merges: Optional[list] = None
    unk: Optional[int] = None
    pad: Optional[int] = None
    add_space_prefix: Optional[bool] = None
    chat_template: Optional[str] = None


def vocab_from_gguf(tok):
    """A GGUF's own vocabulary, as written there (our Tokenizer was built from exactly this)."""
    fields = gguf_reader(tok.path).fields

    def get(key, default=None):
        return fields[key].contents() if key in fields else default
    return Vocab(get("tokenizer.ggml.model"), get("tokenizer.ggml.pre", "default"), get("tokenizer.ggml.tokens"),
                 get("tokenizer.ggml.token_type"), get("tokenizer.ggml.scores"), get("tokenizer.ggml.merges"),
                 get("tokenizer.ggml.unknown_token_id"), get("tokenizer.ggml.padding_token_id"),
                 get("tokenizer.ggml.add_space_prefix"), get("tokenizer.chat_template"))


def vocab_from_sentencepiece(sp, added=()):
    """As the converter's _create_vocab_sentencepiece: every piece with its score and type; then tokens a
    tokenizer.json adds beyond the .model (a fine-tune's <pad>), score -1000, CONTROL if special."""
    n = sp.vocab_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
             else BYTE if sp.is_byte(i) else NORMAL for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    for i, t in sorted((i, t) for i, t in added if i >= n):
        tokens += [f"[PAD{j}]" for j in range(len(tokens), i)]  # the converter's filler for unused ids
        types += [UNUSED] * (i - len(types))
        scores += [-10000.0] * (i - len(scores))
        tokens.append(t.content)
        types.append(CONTROL if t.special else USER_DEFINED)
        scores.append(-1000.0)
    return Vocab("llama", "default", tokens, types, scores, unk=sp.unk_id() if sp.unk_id() >= 0 else None)


def vocab_from_tokenizer_json(tok):
    """A tokenizer.json: with a sentencepiece tokenizer.model beside it (LLaMA's HF folders, our save_hf), that
    vocabulary, as the converter prefers; else a byte-level BPE (SmolLM2, Llama-3): tokens, merges, types, and
    the llama.cpp pre-tokenizer whose splitting gives our ids on CHECK_TEXT."""
    spec = json.loads(tok.tk.to_str())["model"]
    added = tok.tk.get_added_tokens_decoder()
    sp_path = os.path.join(os.path.dirname(tok.path), "tokenizer.model")
    if spec.get("byte_fallback") and os.path.isfile(sp_path):
        import sentencepiece as spm
        return vocab_from_sentencepiece(spm.SentencePieceProcessor(model_file=sp_path), added.items())
    if spec.get("type") != "BPE" or spec.get("byte_fallback"):
        fallback = " with byte fallback" if spec.get("byte_fallback") else ""
        raise ValueError(f"{tok.path}: a {spec.get('type')} tokenizer{fallback} without its sentencepiece "
                         "tokenizer.model beside it; GGUF export takes a sentencepiece model or a byte-level BPE")
    ids = tok.tk.get_vocab(with_added_tokens=True)
    tokens = [f"[PAD{i}]" for i in range(max(ids.values()) + 1)]  # the converter's filler for unused ids
    types = [UNUSED] * len(tokens)
    for t, i in ids.items():
        tokens[i] = t
        types[i] = NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    unk = ids.get(spec["unk_token"]) if spec.get("unk_token") else None
    return Vocab("gpt2", pre_tokenizer_name(tok, tokens, types, merges), tokens, types, merges=merges, unk=unk)


def pre_tokenizer_name(tok, tokens, types, merges):
    want = tok.encode(CHECK_TEXT)
    for pre in PRE_NAMES:
        tk = _add_specials(_byte_level_bpe(tokens, merges, pre), tokens, types)
        tk.encode_special_tokens = True
        if tk.encode(CHECK_TEXT, add_special_tokens=False).ids == want:
            return pre
    raise ValueError(f"{tok.path}: no llama.cpp pre-tokenizer ({', '.join(PRE_NAMES)}) splits text as this "
                     "tokenizer does")


def vocab_of(tok: Tokenizer, n_vocab):
    """The Vocab of our Tokenizer, padded to the model's vocabulary size as the converter pads ([PADi], unused)."""
    if tok.kind == "gguf":
        v = vocab_from_gguf(tok)
    elif tok.kind == "sentencepiece":
        v = vocab_from_sentencepiece(tok.sp)
    else:
        v = vocab_from_tokenizer_json(tok)
    if tok.kind != "gguf" and tok.pad_id != tok.eos_id:  # Tokenizer's pad falls back to EOS: no pad of its own
        v.pad = tok.pad_id
    if len(v.tokens) > n_vocab:
        raise ValueError(f"{tok.path}: the tokenizer has {len(v.tokens)} tokens but the model's vocab_size is "
                         f"{n_vocab}")
    pad = range(len(v.tokens), n_vocab)
    v.tokens = list(v.tokens) + [f"[PAD{i}]" for i in pad]
    v.types = list(v.types) + [UNUSED] * len(pad)
    if v.scores is not None:
        v.scores = list(v.scores) + [-10000.0] * len(pad)
    return v


def add_vocab(w, v: Vocab, tok: Tokenizer):
    """tokenizer.ggml.* in the converter's order; BOS/EOS ids and flags are our Tokenizer's."""
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    w.add_token_types(v.types)
    if v.merges:
        w.add_token_merges(v.merges)
    for kind, i in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", v.unk), ("pad", v.pad)):
        if i is not None:
            getattr(w, f"add_{kind}_token_id")(i)
    w.add_add_bos_token(tok.add_bos)
    w.add_add_eos_token(tok.add_eos)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    if v.chat_template:
        w.add_chat_template(v.chat_template)


# -----------------------------------------------------------------------------
# writing: metadata, then the planned tensors one at a time, into out.tmp renamed at the end

def add_model_metadata(w, args: ModelArgs, file_type, name, n_params):
    """What the converter writes for a LlamaForCausalLM (general.*, then llama.*)."""
    gguf = _need("gguf")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_size_label(gguf.size_label(n_params, n_params, 0, 0))
    w.add_block_count(args.n_layers)
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_feed_forward_length(args.intermediate_size)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    if rope_kind(args, name) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(args.rope_scaling["factor"])
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_key_length(args.head_dim)
    w.add_value_length(args.head_dim)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    w.add_vocab_size(args.vocab_size)
    w.add_rope_dimension_count(args.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(path, plan, add_metadata):
    """Tensor infos from the plan, the header and metadata, then each tensor converted and written in turn (the
    GGUFWriter's add_tensor would hold every converted tensor until the end); written to path.tmp, then renamed."""
    gguf = _need("gguf")
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    try:
        add_metadata(w)
        for p in plan:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[p.qtype]]
            w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), math.prod(p.shape) // block * size,
                              raw_dtype=gguf.GGMLQuantizationType[p.qtype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in plan:
            w.write_tensor_data(gguf.quants.quantize(p.get(), gguf.GGMLQuantizationType[p.qtype]))
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_gguf(model_or_state, args: ModelArgs, path, outtype="f16", tokenizer=None, name="nanoPMC"):
    """A llama.cpp model file of a Transformer or a full state dict (e.g. gathered from FSDP).

    tokenizer: a Tokenizer or anything Tokenizer() reads; None writes a file without a vocabulary, which llama.cpp
    cannot run on text (tests use it to check weights alone)."""
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    where = os.path.abspath(path)
    plan = plan_model(sd, args, outtype, where)
    tok = tokenizer if tokenizer is None or isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
    vocab = None if tok is None else vocab_of(tok, args.vocab_size)
    n_params = sum(t.numel() for k, t in sd.items() if not (k == "lm_head.weight" and args.tie_word_embeddings))

    def metadata(w):
        add_model_metadata(w, args, gguf_type(outtype)[1], name, n_params)
        if vocab is not None:
            add_vocab(w, vocab, tok)
    return write_gguf(path, plan, metadata)


def save_gguf_lora(lora_sd, args: ModelArgs, path, scaling, outtype="f32", name="nanoPMC-lora"):
    """A llama.cpp LoRA adapter file (convert_lora_to_gguf.py's): general.type=adapter, adapter.type=lora,
    adapter.lora.alpha. lora_sd: our LoRA keys (model.layers.N.self_attn.q_proj.lora_A.weight, ...); scaling: the
    factor the adapter was trained with (alpha / r, or alpha / sqrt(r) for rsLoRA)."""
    plan = plan_lora(lora_sd, args, outtype, os.path.abspath(path))
    rank = plan[1].shape[1]  # llama.cpp divides alpha by the rank it reads from lora_b
    gguf = _need("gguf")

    def metadata(w):
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_name(name)
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(scaling) * rank)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return write_gguf(path, plan, metadata)


def export_gguf(model, model_args, path, outtype, tokenizer, ctx):
    """train.export_hf's twin: gather the full weights onto rank 0 (CPU) and write a GGUF model file there."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.master:
        save_gguf(sd, model_args, path, outtype, tokenizer=tokenizer)
        print(f"exported {path}")
    dist.barrier()
    return path


# -----------------------------------------------------------------------------
# the command

def read_lora(path):
    """(our-keyed LoRA state dict, scaling) of a PEFT adapter folder."""
    from safetensors.torch import load_file
    from lora import PEFT_PREFIX, read_adapter_config
    cfg = read_adapter_config(path)
    wp = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(wp):
        raise FileNotFoundError(f"{path}: no adapter_model.safetensors")
    sd = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in load_file(wp).items()}
    r = cfg["r"]
    return sd, cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)


def main(argv=None):
    c = configure(dict(globals()), argv)
    require(c["init_from"], "init_from", MODEL_PATHS)
    if not c["out"]:
        raise SystemExit("out=(empty): name the .gguf file to write, e.g. --out=model-f16.gguf")
    name = c["name"] or os.path.basename(os.path.normpath(c["init_from"])).removesuffix(".gguf")
    try:
        gguf_type(c["outtype"])
        if c["lora"] and not c["merge"]:  # the adapter alone: the base's shapes, none of its weights
            require(c["lora"], "lora", "It takes a PEFT LoRA adapter folder (finetune_qa.py's out_dir/adapter).")
            sd, scaling = read_lora(c["lora"])
            path = save_gguf_lora(sd, read_args(c["init_from"]), c["out"], scaling, c["outtype"], name + "-lora")
        else:
            tok = Tokenizer(require(c["tokenizer"] or c["init_from"], "tokenizer", TOKENIZER_PATHS))
            model = load_model(c["init_from"])
            if c["lora"]:
                from lora import is_lora_param, load_adapter, merge_lora
                load_adapter(model, require(c["lora"], "lora", "It takes a PEFT LoRA adapter folder."))
                merge_lora(model)
                sd = {k: v for k, v in model.state_dict().items() if not is_lora_param(k)}
            else:
                sd = model.state_dict()
            path = save_gguf(sd, model.args, c["out"], c["outtype"], tokenizer=tok, name=name)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return path


if __name__ == "__main__":
    main()
