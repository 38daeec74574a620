"""
Medical QA fine-tuning (PMC-LLaMA's evaluation scenarios), full or LoRA, with train.py's loop.

    torchrun --nproc_per_node=8 finetune_qa.py configs/ft_id.py                 # PubMedQA + MedMCQA train, full
    torchrun --nproc_per_node=8 finetune_qa.py configs/ft_id.py --lora=True     # the same with LoRA (PEFT defaults)
    torchrun --nproc_per_node=8 finetune_qa.py configs/ft_usmle.py              # data-efficient: USMLE train
    python finetune_qa.py configs/ft_id_cpu.py [--lora=True]                    # CPU, minutes, on ../shared/data

Every example becomes BOS + prompt + answer (qa_data's prompts, the ones eval_qa.py scores), prompt tokens are
cut from the left when the sequence exceeds block_size (the answer is always kept), and only the answer tokens
carry loss. A LoRA run saves out_dir/adapter in PEFT's format; a full run exports out_dir/hf. With
--export_gguf=f16 (f32, bf16, q8_0) it also writes llama.cpp files: out_dir/model-f16.gguf (a LoRA run: the merged
model) and, for LoRA, out_dir/adapter.gguf (F32), the adapter alone for llama.cpp's --lora on the base's GGUF.
"""
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import gguf_export
import qa_data
import train
from configurator import config_keys, configure, require
from lora import (adapter_config, apply_lora, init_lora, lora_state_dict, mark_only_lora_as_trainable,
                  merged_state_dict, save_adapter)
from tokenizer import TOKENIZER_PATHS, Tokenizer
from weights import MODEL_PATHS, read_args, read_hf_config, save_hf

# the training loop's settings and defaults, then fine-tuning's own
globals().update({k: getattr(train, k) for k in config_keys(vars(train))})
out_dir = "out/ft"
init_from = ""  # HF folder or train.py checkpoint to fine-tune; 'resume' continues out_dir's newest checkpoint
pubmedqa_train = ""  # ori_pqal.json (split below) or ori_pqaa.json (PQA-A, the paper's training set: split 'all')
pubmedqa_split = "train"  # 'train': the PQA-L ids outside the official 500 test ids; 'all': every record
medmcqa_train = ""  # MedMCQA train.json (JSON lines)
medmcqa_cop_base = 1  # 1: raw release; 0: the Hugging Face copy
usmle_train = ""  # MedQA-USMLE phrases_no_exclude_train.jsonl
select = ""  # 'a:b': keep examples a..b-1 of each file (small runs)
lora = False
lora_r = 8
lora_alpha = 8
lora_dropout = 0.0
lora_targets = "q_proj,v_proj"
block_size = 512
epochs = 3.0
learning_rate = 2e-5
global_batch_size = 128
micro_batch_size = 4
eval_interval = 0
export_merged = False  # LoRA: also export the merged model as an HF folder
export_gguf = ""  # also write llama.cpp GGUF files: f32 | f16 | bf16 | q8_0 (LoRA: merged model + adapter.gguf)


def load_examples(c):
    """The training examples of every configured benchmark file, in config order."""
    sets = [("pubmedqa", c.pubmedqa_train), ("medmcqa", c.medmcqa_train), ("usmle", c.usmle_train)]
    examples, counts = [], {}
    for bench, path in sets:
        if path:
            ex = qa_data.load(bench, path, split=c.pubmedqa_split, cop_base=c.medmcqa_cop_base, select=c.select)
            counts[bench] = len(ex)
            examples += ex
    if not examples:
        raise SystemExit("no training data: set pubmedqa_train, medmcqa_train and/or usmle_train")
    return examples, counts


class QABatches:
    """The batch source for fine-tuning, like train.PaperWindows: examples shuffled per epoch from (seed, epoch),
    cut into disjoint per-rank micro-batches, each padded to its longest sequence with padding masked."""

    def __init__(self, encoded, c, rank, world, pad_id):
        self.encoded, self.c, self.rank, self.world, self.pad_id = encoded, c, rank, world, pad_id
        self.n = len(encoded)
        self.steps_per_epoch = -(-self.n // c.global_batch_size)

    def micro_batches(self, epoch, step):
        order = np.random.default_rng([self.c.seed, epoch]).permutation(self.n)
        for rows in train.step_rows(self.n, step, self.c, self.rank, self.world):
            seqs = [self.encoded[order[i]] if i >= 0 else ([self.pad_id], [-100]) for i in rows]
            T = max(len(ids) for ids, _ in seqs)
            x = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
            y = torch.full((len(seqs), T), -100, dtype=torch.long)
            for j, (ids, labels) in enumerate(seqs):
                x[j, :len(ids)] = torch.tensor(ids)
                y[j, :len(labels)] = torch.tensor(labels)
            yield x, y


def export_lora(model, model_args, c, ctx, base_name):
    """A LoRA run's outputs: out_dir/adapter in PEFT's format; with export_merged the merged model as an HF folder;
    with export_gguf the merged model and the adapter alone (for llama.cpp's --lora on the base) as GGUF files."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = os.path.join(c.out_dir, "adapter")
    if ctx.master:
        save_adapter(lora_state_dict(sd), path, adapter_config(model, base_model_name_or_path=base_name))
        print(f"saved LoRA adapter (PEFT format) to {path}")
        scaling = c.lora_alpha / c.lora_r
        merged = merged_state_dict(sd, scaling=scaling) if c.export_merged or c.export_gguf else None
        if c.export_merged:
            save_hf(merged, model_args, os.path.join(c.out_dir, "hf"), dtype=getattr(torch, c.export_dtype),
                    tokenizer=c.tokenizer)
        if c.export_gguf:
            gguf = os.path.join(c.out_dir, f"model-{c.export_gguf}.gguf")
            gguf_export.save_gguf(merged, model_args, gguf, c.export_gguf, tokenizer=c.tokenizer)
            gguf_export.save_gguf_lora(lora_state_dict(sd), model_args, os.path.join(c.out_dir, "adapter.gguf"),
                                       scaling=scaling, outtype="f32")
            print(f"saved {gguf} (merged) and the adapter alone for llama.cpp, adapter.gguf")
    dist.barrier()
    return path


def lora_layers(c):
    """extend(model) for train.build_model: LoRA layers on c.lora_targets; None for full fine-tuning."""
    targets = tuple(t.strip() for t in c.lora_targets.split(",") if t.strip())
    return (lambda m: apply_lora(m, c.lora_r, c.lora_alpha, c.lora_dropout, targets)) if c.lora else None


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    if cfg["dry_run"]:  # the step at its real size on fake tensors: no weights, no QA files
        lora = cfg["lora"]
        return train.run_dry_run(cfg, extend=lora_layers(SimpleNamespace(**cfg)),
                             trainable=mark_only_lora_as_trainable if lora else None)
    ctx = train.setup_distributed(cfg["device"])
    c = train.resolve(cfg, ctx)
    torch.manual_seed(c.seed)
    resume = c.init_from == "resume"
    ckpt = train.resume_checkpoint(c.out_dir) if resume else None
    require(ckpt or c.init_from, "init_from", MODEL_PATHS)
    c.tokenizer = require(c.tokenizer or (ckpt or c.init_from), "tokenizer", TOKENIZER_PATHS)
    tok = Tokenizer(c.tokenizer)
    c.tokenizer = tok.path

    max_len = read_args(ckpt or c.init_from).max_seq_len
    if c.block_size > max_len:
        raise SystemExit(f"block_size={c.block_size} exceeds the model's max_seq_len={max_len}; lower block_size")
    examples, counts = load_examples(c)
    bos_id = tok.bos_id if tok.add_bos else None  # the model's own convention (SmolLM2 has no BOS)
    encoded = [qa_data.encode_example(tok.encode, bos_id, ex, c.block_size) for ex in examples]
    data = QABatches(encoded, c, ctx.rank, ctx.world, tok.pad_id)

    extend = lora_layers(c)
    if resume:  # every weight, base and adapter, comes from the checkpoint in fit()
        model = train.build_model(c, ctx.device, model_args=read_hf_config(ckpt), extend=extend)
    else:
        model = train.build_model(c, ctx.device, init_path=c.init_from, extend=extend)
        if c.lora:
            init_lora(model, seed=c.seed)
    n_train = mark_only_lora_as_trainable(model) if c.lora else sum(p.numel() for p in model.parameters())
    model_args = model.args
    if ctx.master:
        os.makedirs(c.out_dir, exist_ok=True)
        n_tok = sum(sum(l != -100 for l in labels) for _, labels in encoded)
        print(f"{len(examples):,} examples {counts}, {n_tok:,} answer tokens; "
              f"{'LoRA' if c.lora else 'full'} fine-tuning of {n_train:,} / "
              f"{sum(p.numel() for p in model.parameters()):,} parameters on {ctx.world} process(es)")
        train.write_json(os.path.join(c.out_dir, "train_config.json"), {**vars(c), "world_size": ctx.world,
                                                                         "examples": counts})

    if c.lora:
        export = lambda m: export_lora(m, model_args, c, ctx, base_name="" if resume else c.init_from)  # noqa: E731
    else:  # the HF folder (and the GGUF file) of the whole model, as pre-training exports it
        export = lambda m: train.export_final(m, model_args, c, ctx)  # noqa: E731
    try:
        if c.export_only:
            return train.run_export_only(model, c, ctx, export)
        return train.fit(model, data, c, ctx, model_args, export=export)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
