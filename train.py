"""
Continued pre-training of LLaMA on biomedical papers (PMC-LLaMA), with native torch FSDP2 in bf16.

    torchrun --nproc_per_node=8 train.py configs/pmc.py          # the paper's recipe on 8 GPUs
    python train.py configs/tiny_pmc.py                           # a tiny model on CPU, minutes
    torchrun --nproc_per_node=2 train.py configs/tiny_pmc.py      # the same with 2 CPU processes (gloo)

Each epoch every training paper contributes one random window of block_size tokens (a fresh window per epoch,
seeded by (seed, epoch)); papers are shuffled per epoch and split across ranks without overlap. The loop itself,
`fit()`, knows nothing of papers: fine-tuning (finetune_qa.py) hands it a model and another batch source.
"""
import json
import math
import os
import re
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from configurator import configure, require
from kernels import linear_cross_entropy
from model import ModelArgs, Transformer, preset
from weights import (MODEL_PATHS, hf_config, is_dcp_checkpoint, load_state_dict_streaming, materialize, named_tensors,
                     read_args, read_hf_config, save_hf, write_tokenizer)

# -----------------------------------------------------------------------------
# defaults (override with a configs/*.py file and --key=value)
out_dir = "out/tiny_pmc"
init_from = "scratch"  # 'scratch' | 'resume' (newest checkpoint in out_dir) | an HF folder
# model, for init_from='scratch': a preset name (llama-7b, llama2-13b, ...) or the dimensions below; the dry run
# also takes init_from's shape from the preset when its weights are not on this machine
model_preset = ""
dim = 256
n_layers = 4
n_heads = 4
n_kv_heads = 0  # 0: = n_heads
intermediate_size = 688
data_dir = "data/biomed"  # prepare_corpus.py output
tokenizer = ""  # tokenizer.model for the HF export; default: the one prepare_corpus.py recorded
block_size = 512  # tokens per window (PMC-LLaMA: 512)
micro_batch_size = 4  # sequences per forward/backward on each process
global_batch_size = 128  # sequences per optimizer step over all processes (PMC-LLaMA: 128)
epochs = 5.0  # training length in epochs (PMC-LLaMA: 5) ...
max_iters = 0  # ... or in optimizer steps when > 0
lr_decay_iters = 0  # steps of the warmup + cosine schedule; 0: the whole run
learning_rate = 2e-5
min_lr = 2e-6  # cosine decays to this
warmup_iters = 0
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables
# with grad_accum > 1: False reduce-scatters the gradients after every micro-step, so each GPU only ever holds its
# shard of them (4 B/param / world); True reduce-scatters once, after the last micro-step (a quarter of the
# reduce-scatters at grad_accum 4), but FSDP2 then keeps every parameter's unsharded fp32 gradient between
# micro-steps, 4 B/param on every GPU: 25 GiB at 7B, which takes configs/pmc.py from ~17 to ~42 GiB per GPU (memplan.py)
defer_grad_sync = False
dtype = "bfloat16"  # 'bfloat16': bf16 compute, fp32 master weights and gradient reduction; 'float32'
activation_checkpointing = False
compile = False  # torch.compile each block (off by default on CPU)
device = ""  # '' = cuda if available else cpu
seed = 1337
eval_interval = 100  # optimizer steps between validations (and at the end); 0 disables
eval_batches = 8  # micro-batches of fixed held-out windows per process per validation
bpb_data = ""  # held-out text scored in bits per byte at every validation, comparable across tokenizers (e.g. the
# WikiText-2 test pages, general/wikitext2_test_raw/wikitext-test-pages.jsonl: the harness' wikitext task, in windows
# of block_size; or any folder / .jsonl / corpus eval_qa.py --bench=ppl reads)
log_interval = 1
ckpt_interval = 500  # steps between checkpoints (and at the end); 0: only at the end; -1: none but on preemption
keep_checkpoints = 2  # newest complete checkpoints kept
export_dtype = "bfloat16"  # dtype of the final HF export ('' to skip the export)
export_gguf = ""  # also write out_dir/model-<type>.gguf for llama.cpp: f32 | f16 | bf16 | q8_0 ('' none)
export_only = False  # write the HF export of init_from (with 'resume': of the newest checkpoint) and exit
eval_only = False  # measure the held-out loss / perplexity of init_from on data_dir's val split, and exit
dry_run = False  # run the step at its real shape and world size on fake tensors (dryrun.py): memory, FLOPs, fit; exit
world_size = 0  # the GPUs this config is for: the dry run simulates them (0: torchrun's WORLD_SIZE, else 8); a real
# run checks that torchrun started that many (0: any)
# -----------------------------------------------------------------------------

# dense bf16 peak FLOP/s per GPU, for MFU
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12, "L40S": 362e12,
              "A6000": 155e12, "4090": 165e12, "V100": 125e12}


# -----------------------------------------------------------------------------
# processes

def setup_distributed(device=""):
    """One process group always (world 1 for a plain `python train.py`): NCCL on GPUs, gloo on CPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ:  # torchrun
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return SimpleNamespace(rank=dist.get_rank(), world=dist.get_world_size(), device=torch.device(device),
                           master=dist.get_rank() == 0)


def all_sum(*values, device):
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard_model(model, c, device):
    """FSDP2: each block, then the root (embeddings, final norm, lm_head). bf16 compute, fp32 reduction."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if c.dtype == "bfloat16" \
        else MixedPrecisionPolicy()
    model.activation_checkpointing = c.activation_checkpointing
    for i, layer in enumerate(model.model.layers):
        if c.compile:
            layer.compile()
        # the last block's parameters are needed again at once by the root's backward: keep them gathered
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(model.model.layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def build_model(c, device, init_path=None, model_args=None, extend=None):
    """Meta-device model -> extend(model) (e.g. add LoRA layers) -> FSDP2 -> real storage -> weights.

    Weights come from init_path (an HF folder, or a train.py checkpoint for the base parameters), each process
    copying only its own shard of each tensor as it streams past, so none ever holds a full copy; without
    init_path, a seeded from-scratch init. Parameters added by extend() are left for the caller to initialise.
    """
    args = read_args(init_path) if init_path else model_args
    model, base_names = sharded_meta_model(args, c, device, extend)
    materialize(model, device)
    if init_path is None:
        load_state_dict_streaming(model, model.init_tensors(seed=c.seed), where="init")
    elif is_dcp_checkpoint(init_path):
        load_dcp_weights(model, init_path, base_names)
    else:
        load_state_dict_streaming(model, named_tensors(init_path), where=init_path,
                                  names=base_names)
    return model


def sharded_meta_model(args, c, device, extend=None):
    """The model on the meta device, extend(model), FSDP2: no storage yet. -> (model, the base parameters' names)"""
    with torch.device("meta"):
        model = Transformer(args)
    base_names = [n for n, _ in model.named_parameters()]
    if extend is not None:
        extend(model)
    shard_model(model, c, device)
    return model, base_names


def load_dcp_weights(model, path, names):
    """The parameters `names` of a (sharded) model from a train.py checkpoint, resharded to this world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
    full = get_model_state_dict(model)
    sd = {k: full[k] for k in names}
    dcp.load({"model": sd}, checkpoint_id=path)
    set_model_state_dict(model, sd, options=StateDictOptions(strict=False))


# -----------------------------------------------------------------------------
# data: one random window per paper per epoch

def step_rows(n_items, step, c, rank, world):
    """Item indices (into an epoch's order) of each micro-batch of `step` on `rank`; -1 pads the epoch's last step.
    Micro-batch m of rank r takes the (m * world + r)-th slice of the step, so 1 process with grad_accum 2k sees
    exactly the batches that 2 processes with grad_accum k see together."""
    start = step * c.global_batch_size
    out = []
    for m in range(c.grad_accum):
        lo = start + (m * world + rank) * c.micro_batch_size
        out.append([i if i < n_items else -1 for i in range(lo, lo + c.micro_batch_size)])
    return out


class PaperWindows:
    """The batch source for pre-training: `steps_per_epoch` and `micro_batches(epoch, step)`, deterministic in
    (seed, epoch, step) so that a resumed run sees exactly the batches the uninterrupted run would have."""

    def __init__(self, tokens, idx, c, rank, world, pad_id, shuffle=True, stream=None):
        self.tokens, self.starts, self.lens = tokens, idx[:-1], np.diff(idx)
        self.c, self.rank, self.world, self.pad_id, self.shuffle = c, rank, world, pad_id, shuffle
        self.seed = [c.seed] if stream is None else [c.seed, stream]  # a mixture's sources draw independently
        self.n = len(self.lens)
        self.steps_per_epoch = math.ceil(self.n / c.global_batch_size)
        self._epoch, self._order, self._offsets = None, None, None

    def _plan(self, epoch):
        if self._epoch != epoch:  # per epoch: paper order and each paper's window start
            rng = np.random.default_rng([*self.seed, epoch])
            self._order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            room = np.maximum(self.lens - self.c.block_size, 0)
            self._offsets = (rng.random(self.n) * (room + 1)).astype(np.int64)
            self._epoch = epoch
        return self._order, self._offsets

    def window(self, paper, offset):
        """(x, y) for one paper: block_size tokens from offset; y is x shifted left; padding and the last
        position (whose next token lies outside the window) carry -100, exactly like HF's causal-LM loss."""
        T = self.c.block_size
        w = np.asarray(self.tokens[self.starts[paper] + offset: self.starts[paper] + offset + min(T, self.lens[paper])],
                       dtype=np.int64)
        x = np.full(T, self.pad_id, dtype=np.int64)
        y = np.full(T, -100, dtype=np.int64)
        x[:len(w)] = w
        y[:len(w) - 1] = w[1:]
        return x, y

    def micro_batches(self, epoch, step):
        order, offsets = self._plan(epoch)
        T = self.c.block_size
        for rows in step_rows(self.n, step, self.c, self.rank, self.world):
            x = np.full((len(rows), T), self.pad_id, dtype=np.int64)
            y = np.full((len(rows), T), -100, dtype=np.int64)
            for j, i in enumerate(rows):
                if i >= 0:
                    p = order[i]
                    x[j], y[j] = self.window(p, offsets[p])
            yield torch.from_numpy(x), torch.from_numpy(y)

    def papers(self, epoch, step):
        """The papers this rank trains on at (epoch, step): for tests of the sampler."""
        order, _ = self._plan(epoch)
        return [int(order[i]) for rows in step_rows(self.n, step, self.c, self.rank, self.world) for i in rows if i >= 0]


def mixture_rows(weights, global_batch_size):
    """Each source's rows in every step: global_batch_size x weight, rounded by largest remainders so that they add
    up to the global batch and each is within one row of its share."""
    exact = [global_batch_size * w for w in weights]
    rows = [math.floor(x) for x in exact]
    for i in sorted(range(len(rows)), key=lambda i: rows[i] - exact[i])[:global_batch_size - sum(rows)]:
        rows[i] += 1
    return rows


class Mixture:
    """A weighted mixture of corpora (data_dir='data/pmc:0.9,data/general:0.1'), the same interface as PaperWindows.
    Every step takes mixture_rows() rows from each source: the sources' rows one after another, then spread over
    ranks and micro-batches as a single corpus's are (so 1 process with grad_accum 2k still equals 2 with k). Each
    source keeps its own per-paper windows and cycles through its papers at its own pace (its own epochs, seeded by
    (seed, source, its epoch)); an epoch of the mixture is one of the first source's, the corpus being adapted to."""

    def __init__(self, splits, names, weights, c, rank, world, pad_id):
        self.names, self.rows, self.c, self.rank, self.world = names, mixture_rows(weights, c.global_batch_size), c, \
            rank, world
        if 0 in self.rows:
            raise SystemExit(f"data_dir: {names[self.rows.index(0)]} gets no row of a global batch of "
                             f"{c.global_batch_size}; raise its weight or the global batch")
        self.parts = [PaperWindows(tokens, idx, SimpleNamespace(**{**vars(c), "global_batch_size": k}), rank, world,
                                   pad_id, stream=i) for i, ((tokens, idx), k) in enumerate(zip(splits, self.rows))]
        self.steps_per_epoch = self.parts[0].steps_per_epoch
        self.pad_id = pad_id

    def step_items(self, epoch, step):
        """The whole global batch of a step: [(source, paper or -1 past the end of its epoch)]."""
        s = epoch * self.steps_per_epoch + step
        items = []
        for i, (part, k) in enumerate(zip(self.parts, self.rows)):
            ep, st = divmod(s, part.steps_per_epoch)
            order, _ = part._plan(ep)
            items += [(i, int(order[j]) if j < part.n else -1) for j in range(st * k, st * k + k)]
        return items

    def micro_batches(self, epoch, step):
        items = self.step_items(epoch, step)
        s, T = epoch * self.steps_per_epoch + step, self.c.block_size
        for rows in step_rows(len(items), 0, self.c, self.rank, self.world):
            x = np.full((len(rows), T), self.pad_id, dtype=np.int64)
            y = np.full((len(rows), T), -100, dtype=np.int64)
            for r, j in enumerate(rows):
                i, paper = items[j]
                if paper >= 0:
                    part = self.parts[i]
                    _, offsets = part._plan(s // part.steps_per_epoch)
                    x[r], y[r] = part.window(paper, offsets[paper])
            yield torch.from_numpy(x), torch.from_numpy(y)

    def step_tokens(self, epoch, step):
        """Tokens each source gives the whole step (every rank's), for the log."""
        out = dict.fromkeys(self.names, 0)
        for i, paper in self.step_items(epoch, step):
            if paper >= 0:
                out[self.names[i]] += int(min(self.parts[i].lens[paper], self.c.block_size))
        return {f"tokens/{k}": v for k, v in out.items()}


# -----------------------------------------------------------------------------
# checkpoints: torch.distributed.checkpoint into ckpt-N.tmp, renamed to ckpt-N when complete

CKPT = re.compile(r"^ckpt-(\d+)$")


def latest_checkpoint(out_dir):
    found = [(int(m.group(1)), d) for d in os.listdir(out_dir) if (m := CKPT.match(d))] if os.path.isdir(out_dir) else []
    found = [(n, d) for n, d in found if is_dcp_checkpoint(os.path.join(out_dir, d))]
    return os.path.join(out_dir, max(found)[1]) if found else None


def resume_checkpoint(out_dir):
    """The checkpoint init_from='resume' continues: the newest complete one in out_dir; exits if there is none."""
    path = latest_checkpoint(out_dir)
    if path is None:
        raise SystemExit(f"init_from='resume': no complete checkpoint (ckpt-N folder) in {out_dir}")
    return path


def save_checkpoint(model, opt, state, c, ctx, model_args):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    final = os.path.join(c.out_dir, f"ckpt-{state['iter']:08d}")
    tmp = final + ".tmp"
    if ctx.master:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(sd, checkpoint_id=tmp)
    torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng-{ctx.rank}.pt"))
    dist.barrier()
    if ctx.master:
        # the tokenizer too, so that sample.py / eval_qa.py can take the checkpoint folder alone
        tok = write_tokenizer(c.tokenizer or None, tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:  # an HF config: load_model() reads this folder
            json.dump(hf_config(model_args, tokenizer=tok), f, indent=2)
        with open(os.path.join(tmp, "train_state.json"), "w") as f:
            json.dump({**state, "world_size": ctx.world, "config": vars(c)}, f, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a crash before this line leaves only a .tmp, never a broken ckpt-N
        old = sorted((int(m.group(1)), d) for d in os.listdir(c.out_dir) if (m := CKPT.match(d)))
        for _, d in old[:-c.keep_checkpoints] if c.keep_checkpoints > 0 else []:
            shutil.rmtree(os.path.join(c.out_dir, d), ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(model, opt, path, ctx):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    sd = {"model": get_model_state_dict(model)}
    if opt is not None:
        sd["optim"] = get_optimizer_state_dict(model, opt)
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(model, sd["model"])
    if opt is not None:
        set_optimizer_state_dict(model, opt, sd["optim"])
    rng = os.path.join(path, f"rng-{ctx.rank}.pt")
    if os.path.isfile(rng):
        torch.set_rng_state(torch.load(rng, weights_only=True))
    with open(os.path.join(path, "train_state.json")) as f:
        return json.load(f)


def export_hf(model, model_args, path, dtype, tokenizer_path, ctx):
    """Gather the full weights onto rank 0 (CPU) and write an HF folder."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.master:
        save_hf(sd, model_args, path, dtype=getattr(torch, dtype), tokenizer=tokenizer_path)
    dist.barrier()
    return path


# -----------------------------------------------------------------------------
# the loop

def get_lr(it, total, c):
    total = c.lr_decay_iters or total
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if total <= c.warmup_iters:
        return c.learning_rate
    progress = min(1.0, (it - c.warmup_iters) / max(1, total - c.warmup_iters))
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


def flops_per_token(args: ModelArgs, n_params, seq_len):
    """Model FLOPs per training token (no recomputation): 6 per parameter of a matrix product (not the embedding
    lookup, unless tied to the head) plus attention's 12 * layers * heads * head_dim * seq (no causal discount, as
    PaLM's MFU counts). The dry run's FLOP counter agrees to 0.01% at LLaMA-7B (docs/training.md)."""
    matmul_params = n_params - (0 if args.tie_word_embeddings else args.vocab_size * args.dim)
    return 6 * matmul_params + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len


def peak_flops(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_memory_mib(device):
    """Peak GPU memory allocated, or on CPU the process' peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(model, val_data, c, ctx):
    """(token-weighted mean loss, target tokens) over a fixed set of held-out micro-batches of every rank."""
    model.eval()
    loss_sum, count = 0.0, 0
    for x, y in val_data.micro_batches(0, 0):
        x, y = x.to(ctx.device), y.to(ctx.device)
        _, loss = model(x, y, reduction="sum", loss_fn=linear_cross_entropy)
        loss_sum, count = loss_sum + loss.item(), count + int((y != -100).sum())
    model.train()
    loss_sum, count = all_sum(loss_sum, count, device=ctx.device)
    return loss_sum / max(count, 1), int(count)


class HeldOutText:
    """Documents scored as lm-evaluation-harness scores perplexity (perplexity.py: rolling windows of block_size, the
    first conditioned on BOS, else EOS), each rank a share of the windows, micro_batch_size at a time; every rank runs
    the same number of forwards (FSDP gathers parameters in each), the last padded with empty rows."""

    def __init__(self, path, tokenizer, c, rank, world):
        import perplexity
        from tokenizer import Tokenizer
        tok = Tokenizer(tokenizer)
        texts, counted = perplexity.documents(path)
        prefix = perplexity.prefix_token(tok)
        windows = [w for t in texts for w in perplexity.rolling_windows(tok.encode(t), prefix, c.block_size)]
        self.n_bytes = sum(len(t.encode("utf-8")) for t in counted)
        per_rank = -(-len(windows) // world)
        mine = windows[rank * per_rank:(rank + 1) * per_rank]
        self.batches = []
        for b in range(0, -(-per_rank // c.micro_batch_size) * c.micro_batch_size, c.micro_batch_size):
            x = torch.zeros(c.micro_batch_size, c.block_size, dtype=torch.long)
            y = torch.full((c.micro_batch_size, c.block_size), -100, dtype=torch.long)
            for r, (inputs, targets) in enumerate(mine[b:b + c.micro_batch_size]):
                x[r, :len(inputs)], y[r, :len(targets)] = torch.tensor(inputs), torch.tensor(targets)
            self.batches.append((x, y))

    @torch.no_grad()
    def bits_per_byte(self, model, ctx):
        model.eval()
        nll = 0.0
        for x, y in self.batches:
            _, loss = model(x.to(ctx.device), y.to(ctx.device), reduction="sum", loss_fn=linear_cross_entropy)
            nll += loss.item()
        model.train()
        return all_sum(nll, device=ctx.device)[0] / self.n_bytes / math.log(2)


def held_out(model, val_data, c, ctx):
    """The held-out figures of one validation: val_data is the windows of one corpus (-> its loss), or {name:
    windows or HeldOutText} (a mixture's sources, bpb_data) -> {val_loss/name: ..., val_bpb/name: ...}."""
    if not isinstance(val_data, dict):
        return evaluate(model, val_data, c, ctx)[0]
    return {(f"val_bpb/{name}" if isinstance(v, HeldOutText) else f"val_loss/{name}"):
            (v.bits_per_byte(model, ctx) if isinstance(v, HeldOutText) else evaluate(model, v, c, ctx)[0])
            for name, v in val_data.items()}


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self):
        self.requested = False
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        self.requested = True


def make_optimizer(model, c):
    """AdamW over the trainable parameters, weight decay on matrices only (not on norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c.learning_rate, betas=(c.beta1, c.beta2), eps=1e-8,
                             fused=True)  # one kernel for all parameters: ~5x faster than foreach on CPU


def train_step(model, opt, batches, c, ctx):
    """One optimizer step on this rank's micro-batches [(x, y)] of the global batch: -> (loss, grad norm, tokens).

    The loss is the mean over every target token of the whole global batch (sum over micro-batches and ranks / their
    token count), so it does not depend on how the batch is split across processes; tokens counts every position of
    every rank, padding included. Gradients are reduce-scattered after each micro-step, so that only their shards
    accumulate; c.defer_grad_sync reduce-scatters once, after the last (see its setting for the memory that costs).
    A non-finite loss or gradient norm raises FloatingPointError before the optimizer steps."""
    n_tok, n_seen = all_sum(sum(int((y != -100).sum()) for _, y in batches), sum(x.numel() for x, _ in batches),
                            device=ctx.device)
    loss_sum = 0.0
    for m, (x, y) in enumerate(batches):
        model.set_requires_gradient_sync(not c.defer_grad_sync or m == len(batches) - 1)
        _, loss = model(x, y, reduction="sum", loss_fn=linear_cross_entropy)
        # FSDP averages gradients over ranks: scale by world so the result is sum(loss) / n_tok
        (loss * (ctx.world / max(n_tok, 1))).backward()
        loss_sum += loss.item()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss_val = all_sum(loss_sum, device=ctx.device)[0] / max(n_tok, 1)
    if not math.isfinite(loss_val) or not math.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite loss {loss_val} / grad norm {grad_norm}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_val, grad_norm, n_seen


class Throughput:
    """Tokens per second (padding included) and MFU over the steps since the last reading."""

    def __init__(self, model, model_args, c, ctx):
        n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = flops_per_token(model_args, n_params, c.block_size)
        peak = peak_flops(ctx.device)
        self.peak = peak * ctx.world if peak else None  # the whole job's
        self.tokens, self.t = 0, time.perf_counter()

    def read(self):
        now = time.perf_counter()
        tps = self.tokens / max(now - self.t, 1e-9)
        self.tokens, self.t = 0, now
        return round(tps, 1), round(tps * self.flops_per_token / self.peak, 4) if self.peak else None


def due(it, total, interval):
    """Every `interval` steps and at the last; never when interval <= 0."""
    return interval > 0 and (it % interval == 0 or it == total)


def checkpoint_due(it, total, c):
    """Every ckpt_interval steps and at the end; ckpt_interval=0: only at the end; -1: never (preemption aside)."""
    return (c.ckpt_interval > 0 and it % c.ckpt_interval == 0) or (it == total and c.ckpt_interval >= 0)


def preemption_requested(preempt, ctx):
    """Whether any rank was signalled: every rank then saves the same checkpoint and stops."""
    return all_sum(preempt.requested, device=ctx.device)[0] > 0


def record(it, total, steps_per_epoch, c, meter, val_loss, **step):
    """The log line of iteration `it`, or None: the step's values every log_interval steps, the held-out loss
    (val_loss(), or None for no validation) every eval_interval steps; both at the last."""
    rec = {}
    if due(it, total, c.log_interval):
        tps, mfu = meter.read()
        rec.update(step, tokens_per_s=tps, mfu=mfu)
    if val_loss is not None and due(it, total, c.eval_interval):
        v = val_loss()
        if isinstance(v, dict):  # several sources and/or bits per byte; val_loss is the first source's
            rec.update(v)
            v = next((x for k, x in v.items() if k.startswith("val_loss/")), None)
        if v is not None:
            rec.update(val_loss=v, val_ppl=math.exp(min(v, 50)))
    return {"iter": it, "epoch": round(it / steps_per_epoch, 4), **rec} if rec else None


def write_log(rec, path, ctx):
    if rec and ctx.master:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def resume(model, opt, c, ctx):
    """Model, optimizer and RNG state from the newest checkpoint in out_dir: -> the iteration it was saved at."""
    path = resume_checkpoint(c.out_dir)
    it = load_checkpoint(model, opt, path, ctx)["iter"]
    if ctx.master:
        print(f"resumed from {path} at iteration {it}")
    return it


def fit(model, data, c, ctx, model_args, val_data=None, export=None):
    """Train `model` (already sharded) on `data` (steps_per_epoch, micro_batches(epoch, step) -> (x, y) pairs):
    each iteration one train_step, then the decisions: log, evaluate, checkpoint, stop on preemption.

    Resumes from the newest checkpoint when c.init_from == 'resume'. export(model) is called at the end.
    """
    from tqdm import tqdm
    opt = make_optimizer(model, c)
    total = c.max_iters if c.max_iters > 0 else math.ceil(c.epochs * data.steps_per_epoch)
    it = resume(model, opt, c, ctx) if c.init_from == "resume" else 0
    meter, preempt = Throughput(model, model_args, c, ctx), Preemption()
    log_path = os.path.join(c.out_dir, "log.jsonl")
    model.train()
    loss = None
    with tqdm(total=total, initial=it, desc="train", disable=not ctx.master, dynamic_ncols=True) as bar:
        while it < total:
            epoch, step = divmod(it, data.steps_per_epoch)
            lr = get_lr(it, total, c)
            for g in opt.param_groups:
                g["lr"] = lr
            batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in data.micro_batches(epoch, step)]
            try:
                loss, grad_norm, n_seen = train_step(model, opt, batches, c, ctx)
            except FloatingPointError as e:
                raise FloatingPointError(f"{e} at iteration {it}; stopped without saving (last good checkpoint: "
                                         f"{latest_checkpoint(c.out_dir)})") from None
            meter.tokens += n_seen
            it += 1
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
            val_loss = None if val_data is None else (lambda: held_out(model, val_data, c, ctx))
            mix = data.step_tokens(epoch, step) if isinstance(data, Mixture) else {}  # what each source gave
            rec = record(it, total, data.steps_per_epoch, c, meter, val_loss, loss=loss, lr=lr, grad_norm=grad_norm,
                         **mix)
            write_log(rec, log_path, ctx)
            stop = preemption_requested(preempt, ctx)
            if stop or checkpoint_due(it, total, c):
                save_checkpoint(model, opt, {"iter": it, "epoch": epoch, "step_in_epoch": step + 1, "seed": c.seed}, c,
                                ctx, model_args)
            if stop:
                if ctx.master:
                    print(f"\npreempted: checkpoint saved at iteration {it}; resume with --init_from=resume")
                return None
    if ctx.master:
        print(f"done: {it} iterations, final loss {loss if loss is not None else float('nan'):.4f}, "
              f"peak memory {peak_memory_mib(ctx.device):,.0f} MiB, log in {log_path}")
    return export(model) if export else None


# -----------------------------------------------------------------------------
# pre-training

def resolve(cfg, ctx):
    """Config dict -> namespace with derived grad_accum; checks that the global batch divides and, before hours of
    training rather than after, that a GGUF export type is one we write."""
    c = SimpleNamespace(**cfg)
    if c.world_size and c.world_size != ctx.world:
        raise SystemExit(f"world_size={c.world_size} in the config, but {ctx.world} process(es) started: "
                         f"torchrun --nproc_per_node=... x --nnodes=... must give {c.world_size} (or set world_size=0)")
    per_step = c.micro_batch_size * ctx.world
    if c.global_batch_size % per_step:
        raise SystemExit(f"global_batch_size={c.global_batch_size} is not divisible by micro_batch_size="
                         f"{c.micro_batch_size} x world_size={ctx.world}")
    c.grad_accum = c.global_batch_size // per_step
    if c.export_gguf:
        import gguf_export
        try:
            gguf_export.gguf_type(c.export_gguf, "export_gguf")
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return c


def scratch_args(c, vocab_size):
    if c.model_preset:
        return preset(c.model_preset, vocab_size=vocab_size, max_seq_len=max(c.block_size, 2048))
    return ModelArgs(dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads or None,
                     vocab_size=vocab_size, intermediate_size=c.intermediate_size, max_seq_len=c.block_size)


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)  # a crash never leaves a half-written file under the final name


def data_sources(spec):
    """data_dir -> [(folder, weight)]: one prepared corpus, or a weighted mixture 'data/pmc:0.9,data/general:0.1'
    (weights relative: they are normalised)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and not re.search(r":[0-9.eE+-]+$", parts[0]):
        return [(parts[0], 1.0)]
    out = []
    for p in parts:
        path, _, w = p.rpartition(":")
        try:
            weight = float(w)
        except ValueError:
            weight = -1.0
        if not path or not weight > 0:
            raise SystemExit(f"data_dir={spec}: '{p}' is not FOLDER:WEIGHT with a weight > 0 (e.g. data/pmc:0.9)")
        out.append((path, weight))
    total = sum(w for _, w in out)
    return [(p, w / total) for p, w in out]


def corpus_meta(c):
    """data_dir's meta.json (prepare_corpus.py's record of the corpus; of a mixture, each source's, which must share
    one tokenizer); fills in c.tokenizer from it. -> the first source's meta."""
    metas = []
    for path, _ in data_sources(c.data_dir):
        require(os.path.join(path, "meta.json"), "data_dir (its meta.json)",
                "prepare_corpus.py writes it, e.g. python prepare_corpus.py --source=s2orc --input=/data/s2orc "
                f"--tokenizer=/models/llama-7b-hf --out_dir={path} (docs/corpus.md)")
        with open(os.path.join(path, "meta.json")) as f:
            metas.append((path, json.load(f)))
    first, meta = metas[0]
    for path, m in metas[1:]:
        if m["tokenizer_sha256"] != meta["tokenizer_sha256"]:
            raise SystemExit(f"data_dir: {path} was prepared with another tokenizer than {first} ({m['tokenizer']} vs "
                             f"{meta['tokenizer']}, sha256 differ): prepare every source with the model's tokenizer")
    if c.init_from not in ("scratch", "resume"):
        require(c.init_from, "init_from", MODEL_PATHS + " Or init_from=scratch / resume.")
    c.tokenizer = c.tokenizer or meta["tokenizer"]
    require(c.tokenizer, "tokenizer", "Give the tokenizer the corpus was prepared with (--tokenizer=...).")
    return meta


def make_model(c, ctx, meta):
    """The sharded model of init_from: -> (model, its ModelArgs). A resumed model gets its weights in fit()."""
    if c.init_from == "resume":
        model_args = read_hf_config(resume_checkpoint(c.out_dir))
        model = build_model(c, ctx.device, model_args=model_args)
    elif c.init_from == "scratch":
        model_args = scratch_args(c, meta["vocab_size"])
        model = build_model(c, ctx.device, model_args=model_args)
    else:
        model = build_model(c, ctx.device, init_path=c.init_from)
        model_args = model.args
    if model_args.vocab_size < meta["vocab_size"]:
        raise SystemExit(f"model vocab_size {model_args.vocab_size} < corpus vocab_size {meta['vocab_size']}")
    if ctx.master:
        os.makedirs(c.out_dir, exist_ok=True)
        write_json(os.path.join(c.out_dir, "train_config.json"),
                   {**vars(c), "world_size": ctx.world, "model": asdict(model_args)})
        print(f"{sum(p.numel() for p in model.parameters()):,} parameters, {ctx.world} process(es) on "
              f"{ctx.device.type}, grad_accum {c.grad_accum}, global batch {c.global_batch_size} x {c.block_size}")
    return model, model_args


def batch_sources(c, ctx, meta):
    """(training windows, fixed held-out windows or None when the corpus has no val split) of this rank; of a
    mixture, a Mixture and {source: its held-out windows} for the sources with a val split."""
    from corpus_data import load_split
    pad = meta["eos_id"]
    sources = data_sources(c.data_dir)
    # fixed windows: epoch 0's draw of the val papers, the first eval_batches micro-batches per rank
    vc = SimpleNamespace(**{**vars(c), "grad_accum": c.eval_batches,
                            "global_batch_size": c.micro_batch_size * c.eval_batches * ctx.world})
    val = {path: PaperWindows(*load_split(path, "val"), vc, ctx.rank, ctx.world, pad, shuffle=False)
           for path, _ in sources if has_val(path)}
    if c.bpb_data:  # bits per byte of held-out text, beside the held-out loss of each source
        val[os.path.basename(c.bpb_data.rstrip("/"))] = HeldOutText(c.bpb_data, c.tokenizer, c, ctx.rank, ctx.world)
    if len(sources) == 1:
        data = PaperWindows(*load_split(c.data_dir, "train"), c, ctx.rank, ctx.world, pad)
        return data, val if c.bpb_data else val.get(c.data_dir)  # one corpus alone: its windows, as before
    data = Mixture([load_split(p, "train") for p, _ in sources], [p for p, _ in sources], [w for _, w in sources],
                   c, ctx.rank, ctx.world, pad)
    return data, val or None


def has_val(path):
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)["splits"]["val"]["documents"] > 0


def run_eval_only(model, val, c, ctx):
    """--eval_only: the held-out loss and perplexity of init_from, written to out_dir/eval.json."""
    if val is None:
        raise SystemExit(f"eval_only: {c.data_dir} has no val split (prepare it with --val_fraction > 0)")
    vals = val if isinstance(val, dict) else {c.data_dir: val}  # a mixture: every source with a val split
    losses = {name: evaluate(model, v, c, ctx) for name, v in vals.items() if not isinstance(v, HeldOutText)}
    v, n_tok = next(iter(losses.values())) if losses else (float("nan"), 0)
    result = {"model": c.init_from, "data_dir": c.data_dir, "val_loss": v, "val_ppl": math.exp(v), "val_tokens": n_tok}
    if len(losses) > 1:
        result["val_loss_by_source"] = {name: loss for name, (loss, _) in losses.items()}
    result.update({f"val_bpb/{name}": t.bits_per_byte(model, ctx) for name, t in vals.items()
                   if isinstance(t, HeldOutText)})
    if ctx.master:
        write_json(os.path.join(c.out_dir, "eval.json"), result)
        print(f"val loss {v:.4f}, perplexity {math.exp(v):.2f} ({c.init_from} on {c.data_dir})")
    return result


def run_export_only(model, c, ctx, export):
    """--export_only: export the model as built; with init_from='resume', the newest checkpoint's weights."""
    if c.init_from == "resume":
        load_checkpoint(model, None, resume_checkpoint(c.out_dir), ctx)
    return export(model) if export else None


def export_final(model, model_args, c, ctx):
    """The HF folder out_dir/hf in export_dtype ('' skips it), and out_dir/model-<type>.gguf if export_gguf."""
    path = None
    if c.export_dtype:
        path = export_hf(model, model_args, os.path.join(c.out_dir, "hf"), c.export_dtype, c.tokenizer, ctx)
        if ctx.master:
            print(f"exported {path}")
    if c.export_gguf:
        import gguf_export  # the module: the config key export_gguf would shadow a function of that name
        gguf = gguf_export.export_gguf(model, model_args, os.path.join(c.out_dir, f"model-{c.export_gguf}.gguf"),
                                       c.export_gguf, c.tokenizer, ctx)
        path = path or gguf
    return path


# -----------------------------------------------------------------------------
# the dry run: the step at its real size on fake tensors (dryrun.py measures it)

def dry_run_args(c, vocab_size=32000):
    """The model's shape without its weights: init_from's config.json (or GGUF header, or checkpoint) when it is on
    this machine, else the named model_preset; from scratch, the dimensions (the corpus' vocabulary if prepared)."""
    if c.init_from == "scratch":
        meta = os.path.join(data_sources(c.data_dir)[0][0], "meta.json")  # a mixture's sources share a vocabulary
        if os.path.isfile(meta):
            with open(meta) as f:
                vocab_size = json.load(f)["vocab_size"]
        return scratch_args(c, vocab_size)
    path = latest_checkpoint(c.out_dir) if c.init_from == "resume" else c.init_from
    if path and os.path.exists(path):
        return read_args(path)
    if c.model_preset:
        return preset(c.model_preset)
    from model import PRESETS
    raise SystemExit(f"dry run: init_from={c.init_from} is not on this machine; name its shape with "
                     f"--model_preset=NAME (known: {', '.join(PRESETS)})")


def run_dry_run(cfg, extend=None, trainable=None):
    """--dry_run: train_step at the config's real shape and world size, on fake tensors and a fake process group
    (dryrun.py): peak memory per GPU by category beside memplan.py's plan, the FLOPs of one optimizer step, and
    whether it fits a 40 / 80 GB card (the plan's verdict first). extend(model) adds layers (LoRA) before sharding;
    trainable(model) marks what trains and returns its parameter count. Reads no weights and no data."""
    import dryrun
    world = cfg["world_size"] or int(os.environ.get("WORLD_SIZE", 8))
    ctx = dryrun.fake_world(world)
    try:
        c = resolve({**cfg, "world_size": world}, ctx)
        c.compile = False  # eager, as memplan plans; compiling fake tensors would only cost time
        args = dry_run_args(c)
        model, _ = sharded_meta_model(args, c, ctx.device, extend)
        n_train = trainable(model) if trainable else None
        n_tensors = sum(p.requires_grad for p in model.parameters()) if trainable else None
        plan = dryrun.planned(args, c, world, n_train, n_tensors)
        line = (f"dry run of {c.init_from} ({args.n_layers} layers, dim {args.dim}, vocab {args.vocab_size}) on "
                f"{world} GPUs; planned (memplan.py, + {dryrun.OVERHEAD_GIB:g} GiB CUDA allowance): "
                f"{dryrun.verdict(plan[1])}")
        if plan[1] / dryrun.GiB + dryrun.OVERHEAD_GIB > max(dryrun.CARDS_GIB):
            raise SystemExit(line)  # fits no card: nothing to measure
        print(line)
        with dryrun.fake_tensors():
            materialize(model, ctx.device)  # fake storage: the values do not matter, only shapes and dtypes
            opt = make_optimizer(model, c)
            zeros = torch.zeros(c.micro_batch_size, c.block_size, dtype=torch.long)  # full windows: every target counts
            m = dryrun.measure(lambda: train_step(model, opt, [(zeros, zeros)] * c.grad_accum, c, ctx), model, opt)
        tokens = c.micro_batch_size * c.block_size * c.grad_accum
        n_params = sum(p.numel() for p in model.parameters())
        model_flops = flops_per_token(args, n_params, c.block_size) * tokens
        if n_train is not None:  # a frozen matrix gets no weight gradient: 4 FLOPs per parameter, not 6
            model_flops -= 2 * (n_params - n_train - (0 if args.tie_word_embeddings else args.vocab_size * args.dim)) * tokens
        recompute = dryrun.recompute_flops_per_token(args, c.block_size) * tokens if c.activation_checkpointing else 0
        return dryrun.report(m, plan, c, world, model_flops, recompute, os.path.join(c.out_dir, "dry_run.json"))
    finally:
        dist.destroy_process_group()


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    if cfg["dry_run"]:
        return run_dry_run(cfg)
    ctx = setup_distributed(cfg["device"])
    try:
        c = resolve(cfg, ctx)
        torch.manual_seed(c.seed)
        meta = corpus_meta(c)
        model, model_args = make_model(c, ctx, meta)
        data, val = batch_sources(c, ctx, meta)
        if c.eval_only:
            return run_eval_only(model, val, c, ctx)
        export = lambda m: export_final(m, model_args, c, ctx)  # noqa: E731
        if c.export_only:
            return run_export_only(model, c, ctx, export)
        return fit(model, data, c, ctx, model_args, val_data=val, export=export)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
