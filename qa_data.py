"""
The QA benchmarks, in their official raw formats, and their prompts: PMC-LLaMA's three (PubMedQA, MedMCQA,
MedQA-USMLE) and the six medical subjects of MMLU, the nine medical tasks the field reports; and MMLU's 57 subjects
in lm-evaluation-harness' four categories, the general knowledge that continued pre-training may cost.

Fine-tuning (finetune_qa.py) and evaluation (eval_qa.py) both read examples through this module, so a model is
trained on exactly the strings it is scored on. Prompts are lm-evaluation-harness's templates, so zero-shot numbers
are comparable with the harness:

  pubmedqa  "Abstract: {contexts joined by \\n}\\nQuestion: {question}\\nAnswer:"        -> " yes" / " no" / " maybe"
  medmcqa   "Question: {q}\\nChoices:\\nA. {opa}\\nB. {opb}\\nC. {opc}\\nD. {opd}\\nAnswer:"  -> " A" .. " D"
  usmle     "Question: {q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"                  -> " A" .. " D"
  mmlu_*    "The following are multiple choice questions (with answers) about {subject}.\\n\\n"     (the description)
            "{q.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"                     -> " A" .. " D"
The multiple-choice formats take any number of lettered options (MedQA also ships 5-option files, A-E).

Formats:
  pubmedqa  ori_pqal.json / ori_pqaa.json: {PMID: {QUESTION, CONTEXTS, final_decision, ...}}; PQA-L's official test
            split is the 500 ids of test_ground_truth.json (looked for beside the data file), the other 500 are train;
            the official split script's test_set.json (train_set.json, dev_set.json) is its split by itself.
  medmcqa   JSON lines {question, opa, opb, opc, opd, cop, subject_name, id, ...}; `cop` is 1-based in the raw
            release and 0-based in the Hugging Face copy: callers say which (cop_base), and data that contradicts
            it (a cop of 0 when 1-based, of 4 when 0-based) is an error.
  usmle     MedQA JSON lines {question, options: {A: .., B: .., ...}, answer_idx, answer, meta_info}.
  mmlu_*    the MMLU release's data/test/<subject>_test.csv: no header, 6 fields (question, A, B, C, D, answer letter),
            standard CSV quoting (commas, quotes and newlines inside fields).
A malformed record is an error naming the file, the line (or PubMedQA id) and the field. This module knows nothing
of models or tokenizers beyond the `encode` callable handed to `encode_example`.
"""
import csv
import json
import os
import re
from dataclasses import dataclass, field

MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                 "professional_medicine")  # the medical subjects of MultiMedQA and the Open Medical-LLM Leaderboard
MMLU_CATEGORIES = {  # lm-evaluation-harness' groups mmlu_stem, mmlu_humanities, ... (Hendrycks et al.'s categories)
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
             "high_school_statistics", "machine_learning"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
              "professional_medicine", "virology"),
}
MMLU_ALL = tuple(sorted(s for subjects in MMLU_CATEGORIES.values() for s in subjects))  # the 57
BENCHMARKS = ("pubmedqa", "medmcqa", "usmle") + tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS)  # the nine medical tasks
TASKS = BENCHMARKS + tuple(f"mmlu_{s}" for s in MMLU_ALL if s not in MMLU_SUBJECTS)  # every task this module reads
GROUPS = {"all": BENCHMARKS, "mmlu": BENCHMARKS[3:],  # names that stand for several tasks
          "mmlu_all": tuple(f"mmlu_{s}" for s in MMLU_ALL)} | {
    f"mmlu_{cat}": tuple(f"mmlu_{s}" for s in subjects) for cat, subjects in MMLU_CATEGORIES.items()}
PUBMEDQA_LABELS = ("yes", "no", "maybe")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class QAExample:
    id: str
    prompt: str  # the exact text before the answer, without BOS
    choices: list  # answer continuations, e.g. [" A", " B", " C", " D"]
    gold: int  # index into choices
    info: dict = field(default_factory=dict)  # subject (MedMCQA, MMLU), meta_info (USMLE)
    description: str = ""  # the head of `prompt` that a few-shot prompt states once, before the shots (MMLU)

    @property
    def answer(self):
        return self.choices[self.gold]


class QAFormatError(ValueError):
    pass


def _err(path, where, field_, msg):
    return QAFormatError(f"{path}:{where}: field {field_!r}: {msg}")


def check_bench(bench):
    if bench not in TASKS:
        raise ValueError(f"unknown benchmark {bench!r}; known: pubmedqa, medmcqa, usmle, mmlu_<subject> (the 57: "
                         f"{', '.join(MMLU_ALL)}), or the groups {', '.join(GROUPS)}")
    return bench


def mmlu_category(bench):
    """'mmlu_anatomy' -> 'stem' (lm-evaluation-harness' group); None for other tasks."""
    subject = bench.removeprefix("mmlu_")
    return next((cat for cat, subjects in MMLU_CATEGORIES.items() if subject in subjects), None)


def expand_benches(spec):
    """'pubmedqa,mmlu' -> the task names it stands for, in order, each once ('all': the nine medical tasks,
    'mmlu': MMLU's six medical subjects, 'mmlu_all': its 57, 'mmlu_stem' etc.: one category)."""
    names = []
    for b in (s.strip() for s in spec.split(",")):
        group = GROUPS[b] if b in GROUPS else [check_bench(b)] if b else []
        names += [n for n in group if n not in names]
    return names


# -----------------------------------------------------------------------------
# prompts (lm-evaluation-harness templates)

def pubmedqa_prompt(contexts, question):
    return "Abstract: " + "\n".join(contexts) + f"\nQuestion: {question}\nAnswer:"


def lettered(options):
    return "".join(f"{k}. {v}\n" for k, v in zip(LETTERS, options))


def medmcqa_prompt(q, options):
    return f"Question: {q}\nChoices:\n" + lettered(options) + "Answer:"


def usmle_prompt(q, options):
    return f"Question: {q}\n" + lettered(options) + "Answer:"


def mmlu_description(subject):
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_prompt(subject, q, options):
    return mmlu_description(subject) + q.strip() + "\n" + lettered(options) + "Answer:"


def render(ex, shots=()):
    """The text before the answer: the task's description once, then K solved examples (prompt + answer and a blank
    line: the harness' few-shot layout), then the question."""
    d = ex.description
    return d + "".join(s.prompt[len(s.description):] + s.answer + "\n\n" for s in shots) + ex.prompt[len(d):]


# -----------------------------------------------------------------------------
# loaders

def _json_lines(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise QAFormatError(f"{path}:{n}: invalid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise QAFormatError(f"{path}:{n}: not a JSON object")
            yield n, rec


def _need_str(rec, key, path, where):
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise _err(path, where, key, "missing or not a non-empty string")
    return v


def load_pubmedqa(path, split="test", test_ids=None):
    """split: 'test' (the official 500 ids), 'train' (the other ids of the file) or 'all' (e.g. PQA-A)."""
    if split not in ("test", "train", "all"):
        raise ValueError(f"PubMedQA split {split!r}: use test, train or all")
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise QAFormatError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(records, dict):
        raise QAFormatError(f"{path}: expected an object {{PMID: record}}")
    ids = None
    # the official split script's outputs (preprocess/split_dataset.py): test_set.json holds only test questions,
    # pqal_fold*/train_set.json and dev_set.json only train ones; each file is its split on its own
    own = {"test_set.json": "test", "train_set.json": "train", "dev_set.json": "train"}.get(os.path.basename(path))
    if own and split != "all":
        if split != own:
            raise QAFormatError(f"{path}: this file of the official split holds only {own} questions, not {split!r}")
        split = "all"
    if split != "all":
        test_ids = test_ids or os.path.join(os.path.dirname(path), "test_ground_truth.json")
        if not os.path.isfile(test_ids):
            raise FileNotFoundError(f"PubMedQA split {split!r} needs the official test id list {test_ids} "
                                    "(test_ground_truth.json of the pubmedqa repository)")
        with open(test_ids) as f:
            ids = set(json.load(f))
        missing = ids - set(records)
        if missing:
            raise QAFormatError(f"{test_ids}: {len(missing)} test id(s) not in {path}, e.g. {sorted(missing)[0]}")
    out = []
    for pmid, r in records.items():
        if ids is not None and (pmid in ids) != (split == "test"):
            continue
        if not isinstance(r, dict):
            raise QAFormatError(f"{path}:{pmid}: record is not an object")
        question = _need_str(r, "QUESTION", path, pmid)
        contexts = r.get("CONTEXTS")
        if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
            raise _err(path, pmid, "CONTEXTS", "missing or not a list of strings")
        label = r.get("final_decision")
        if label not in PUBMEDQA_LABELS:
            raise _err(path, pmid, "final_decision", f"{label!r} is not one of yes/no/maybe")
        out.append(QAExample(pmid, pubmedqa_prompt(contexts, question), [" yes", " no", " maybe"],
                             PUBMEDQA_LABELS.index(label), {}))
    return out


def load_medmcqa(path, cop_base):
    """cop_base=1 for the raw release (train.json/dev.json), 0 for the Hugging Face copy."""
    if cop_base not in (0, 1):
        raise ValueError(f"cop_base must be 0 (Hugging Face copy) or 1 (raw release), not {cop_base!r}")
    out = []
    for n, r in _json_lines(path):
        q = _need_str(r, "question", path, n)
        opts = []
        for k in ("opa", "opb", "opc", "opd"):
            v = r.get(k)
            if not isinstance(v, str):
                raise _err(path, n, k, "missing option")
            opts.append(v)
        cop = r.get("cop")
        if isinstance(cop, bool) or not isinstance(cop, int):
            raise _err(path, n, "cop", f"{cop!r} is not an integer answer index")
        if not cop_base <= cop <= cop_base + 3:
            hint = (" (0 is a 0-based answer: this looks like the Hugging Face copy, pass cop_base=0)" if cop == 0
                    else " (4 is a 1-based answer: this looks like the raw release, pass cop_base=1)" if cop == 4 else "")
            raise _err(path, n, "cop", f"{cop} is outside {cop_base}..{cop_base + 3} for cop_base={cop_base}{hint}")
        out.append(QAExample(str(r.get("id", n)), medmcqa_prompt(q, opts), [" A", " B", " C", " D"], cop - cop_base,
                             {"subject": r.get("subject_name") or "Unknown"}))
    return out


def load_usmle(path):
    out = []
    for n, r in _json_lines(path):
        q = _need_str(r, "question", path, n)
        opts = r.get("options")
        if not isinstance(opts, dict) or not opts:
            raise _err(path, n, "options", "missing or not an object")
        keys = sorted(opts)
        if keys != [chr(ord("A") + i) for i in range(len(keys))] or len(keys) < 2:
            raise _err(path, n, "options", f"keys {keys} are not A, B, C, ... in order")
        if not all(isinstance(v, str) for v in opts.values()):
            raise _err(path, n, "options", "option texts must be strings")
        idx = r.get("answer_idx")
        if idx not in opts:
            raise _err(path, n, "answer_idx", f"{idx!r} is not among the options {keys}")
        if "answer" in r and r["answer"] != opts[idx]:
            raise _err(path, n, "answer", f"{r['answer']!r} is not option {idx} ({opts[idx]!r})")
        options = {k: opts[k] for k in keys}
        out.append(QAExample(str(r.get("id", n)), usmle_prompt(q, options.values()), [f" {k}" for k in keys],
                             keys.index(idx), {"meta_info": r.get("meta_info") or "unknown"}))
    return out


def load_mmlu(path, subject):
    """An MMLU release CSV (no header; question, A, B, C, D, answer letter). Ids are subject/row, 0-based."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        for n, row in enumerate(rows):
            where = f"row {n + 1} (ending on line {rows.line_num})"
            if len(row) != 6:
                raise QAFormatError(f"{path}:{where}: {len(row)} fields, expected 6 (question, A, B, C, D, answer)")
            q, *options, answer = row
            if not q.strip():
                raise _err(path, where, "question", "empty")
            if len(answer) != 1 or answer not in LETTERS[:4]:
                raise _err(path, where, "answer", f"{answer!r} is not one of the listed letters A, B, C, D")
            out.append(QAExample(f"{subject}/{n}", mmlu_prompt(subject, q, options), [" A", " B", " C", " D"],
                                 LETTERS.index(answer), {"subject": subject}, mmlu_description(subject)))
    return out


def load(bench, path, split="test", cop_base=1, select=""):
    """Examples of a benchmark file. select='a:b' keeps examples a..b-1 (a Python slice, for small CPU runs)."""
    check_bench(bench)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{bench}: no data file {path}")
    if bench == "pubmedqa":
        ex = load_pubmedqa(path, split)
    elif bench == "medmcqa":
        ex = load_medmcqa(path, cop_base)
    elif bench == "usmle":
        ex = load_usmle(path)
    else:
        ex = load_mmlu(path, bench.removeprefix("mmlu_"))
    if select:
        if not re.fullmatch(r"-?\d*:-?\d*", select):
            raise ValueError(f"select={select!r}: expected 'start:end'")
        a, b = (int(s) if s else None for s in select.split(":"))
        ex = ex[a:b]
    return ex


# -----------------------------------------------------------------------------
# token sequences

def continuation_tokens(encode, prompt, choice):
    """lm-evaluation-harness' split: context = encode(prompt), continuation = encode(prompt + choice) after it."""
    ctx = encode(prompt)
    return ctx, encode(prompt + choice)[len(ctx):]


def encode_example(encode, bos_id, ex: QAExample, block_size):
    """(input ids, labels) for fine-tuning: BOS + prompt + answer, labels -100 everywhere but the answer tokens
    (bos_id None: no BOS, for tokenizers whose convention has none). A sequence longer than block_size loses
    prompt tokens from the left (after BOS); the answer is always kept."""
    ctx, ans = continuation_tokens(encode, ex.prompt, ex.answer)
    bos = [] if bos_id is None else [bos_id]
    room = block_size - len(bos) - len(ans)
    if room < 0:
        raise ValueError(f"example {ex.id}: answer of {len(ans)} tokens does not fit block_size={block_size}")
    ctx = ctx[len(ctx) - room:] if len(ctx) > room else ctx
    ids = bos + ctx + ans
    # position t predicts token t+1: the label at t is ids[t+1] when t+1 is an answer token
    labels = [-100] * (len(ids) - 1 - len(ans)) + ans + [-100]
    return ids, labels
