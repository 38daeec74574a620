import json
import math
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch

import eval_qa
import qa_data
from configurator import configure
from conftest import data_path, make_hf_with_tokenizer
from weights import load_model
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_with_tokenizer(tmp_path_factory.mktemp("m") / "hf")


def items_for(tok, examples):
    out = []
    for ex in examples:
        pairs = [eval_qa.encode_pair(tok, ex.prompt, ch) for ch in ex.choices]
        out.append((pairs[0][0], [c for _, c in pairs]))
    return out


def test_scores_match_a_transformers_computation(hf_dir):
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    sp = spm.SentencePieceProcessor(model_file=data_path("tokenizer", "llama_tokenizer.model"))
    tok = Tokenizer(hf_dir)
    ours = load_model(hf_dir)
    for bench, file in (("pubmedqa", ("pubmedqa", "ori_pqal.json")), ("medmcqa", ("medmcqa", "dev.json")),
                        ("usmle", ("medqa_usmle", "sample_200.jsonl"))):
        examples = qa_data.load(bench, data_path(*file), split="test", cop_base=1)[:6]
        scores = eval_qa.score_loglik(ours, items_for(tok, examples), 4, "cpu", progress=False)
        for ex, s in zip(examples, scores):
            ref = []
            for ch in ex.choices:  # the harness, written out: BOS + prompt, then the continuation's tokens
                ctx = [1] + sp.encode(ex.prompt)
                cont = ([1] + sp.encode(ex.prompt + ch))[len(ctx):]
                with torch.no_grad():
                    lp = torch.log_softmax(hf(torch.tensor([ctx + cont])).logits[0].float(), -1)
                ref.append(sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
            assert max(abs(a - b) for a, b in zip(s, ref)) <= 1e-4, (s, ref)
            assert max(range(len(s)), key=s.__getitem__) == max(range(len(ref)), key=ref.__getitem__)


def test_batching_and_shortcuts_do_not_change_scores(hf_dir):
    tok = Tokenizer(hf_dir)
    ours = load_model(hf_dir)
    examples = qa_data.load("medmcqa", data_path("medmcqa", "dev.json"), cop_base=1)[:10]
    examples += qa_data.load("pubmedqa", data_path("pubmedqa", "ori_pqal.json"), split="test")[:5]
    items = items_for(tok, examples)
    assert all(len(c) == 1 for _, conts in items for c in conts)  # the LLaMA tokenizer: one-token answers
    ref = eval_qa.score_loglik(ours, items, 1, "cpu", progress=False, naive=True)
    for bs in (1, 3, 16):
        got = eval_qa.score_loglik(ours, items, bs, "cpu", progress=False)
        assert max(abs(a - b) for s, r in zip(got, ref) for a, b in zip(s, r)) <= 1e-5
    shared = [eval_qa.score_shared_prompt(ours, ctx, conts, "cpu") for ctx, conts in items]
    assert max(abs(a - b) for s, r in zip(shared, ref) for a, b in zip(s, r)) <= 1e-5
    # multi-token continuations take the shared-KV path; it must equal the naive per-pair loop
    multi = [(ctx, conts + [tok.encode(" maybe not at all")]) for ctx, conts in items[:4]]
    got = eval_qa.score_loglik(ours, multi, 8, "cpu", progress=False)
    ref = eval_qa.score_loglik(ours, multi, 8, "cpu", progress=False, naive=True)
    assert max(abs(a - b) for s, r in zip(got, ref) for a, b in zip(s, r)) <= 1e-5


def test_real_files_chance_level_and_group_counts(hf_dir, tmp_path, capsys):
    res = {}
    for bench, data in (("pubmedqa", data_path("pubmedqa", "ori_pqal.json")),
                        ("medmcqa", data_path("medmcqa", "dev.json")),
                        ("usmle", data_path("medqa_usmle", "sample_200.jsonl"))):
        res.update(eval_qa.main([f"--bench={bench}", f"--data={data}", f"--init_from={hf_dir}", "--device=cpu",
                                 "--dtype=float32", "--batch_size=32", f"--out={tmp_path / bench}"]))
        preds = [json.loads(l) for l in open(tmp_path / bench / "predictions.jsonl")]
        assert len(preds) == res[bench]["n"] and all(p["prompt"].endswith("Answer:") for p in preds)
        assert sum(p["correct"] for p in preds) == round(res[bench]["acc"] * res[bench]["n"])
    assert (res["pubmedqa"]["n"], res["medmcqa"]["n"], res["usmle"]["n"]) == (500, 4183, 200)
    assert 0.1 < res["medmcqa"]["acc"] < 0.4 and 0.1 < res["usmle"]["acc"] < 0.45
    assert 0.05 < res["pubmedqa"]["acc"] < 0.65  # a random model tends to favour one label; 0.552 is all-"yes"
    assert sum(g["n"] for g in res["medmcqa"]["per_subject"].values()) == 4183
    assert len(res["medmcqa"]["per_subject"]) == 21
    assert sum(g["n"] for g in res["usmle"]["per_meta_info"].values()) == 200
    lo, hi = res["medmcqa"]["acc_ci95"]
    assert lo < res["medmcqa"]["acc"] < hi and hi - lo < 0.03
    assert "medmcqa" in capsys.readouterr().out


def test_test_set_json_alone_and_a_validation_slice(hf_dir, tmp_path):
    """--data=test_set.json (no test_ground_truth.json beside it) scores the 500 official test questions exactly as
    ori_pqal.json's test split; --split=train --select=a:b scores a slice of the other 500 ids (to pick settings)."""
    alone = tmp_path / "official" / "test_set.json"
    alone.parent.mkdir()
    alone.write_bytes(open(data_path("pubmedqa", "test_set.json"), "rb").read())
    pqal = data_path("pubmedqa", "ori_pqal.json")
    run = ["--bench=pubmedqa", f"--init_from={hf_dir}", "--device=cpu", "--dtype=float32", "--batch_size=32"]
    a = eval_qa.main([*run, f"--data={alone}", f"--out={tmp_path / 'a'}"])["pubmedqa"]
    b = eval_qa.main([*run, f"--data={pqal}", f"--out={tmp_path / 'b'}"])["pubmedqa"]
    rows = {r["id"]: r["scores"] for r in map(json.loads, open(tmp_path / "a" / "predictions.jsonl"))}
    ref = {r["id"]: r["scores"] for r in map(json.loads, open(tmp_path / "b" / "predictions.jsonl"))}
    gt = json.load(open(data_path("pubmedqa", "test_ground_truth.json")))
    assert a["n"] == 500 and set(rows) == set(gt) == set(ref) and a["acc"] == b["acc"]  # another order, same scores
    # other batches (sorted by length among other questions): equal up to fp32 rounding of other matmul shapes
    assert all(abs(x - y) <= 1e-4 for k in rows for x, y in zip(rows[k], ref[k]))
    v = eval_qa.main([*run, f"--data={pqal}", "--split=train", "--select=400:500", f"--out={tmp_path / 'v'}"])
    ids = [r["id"] for r in map(json.loads, open(tmp_path / "v" / "predictions.jsonl"))]
    train_ids = [e.id for e in qa_data.load("pubmedqa", pqal, split="train")]
    assert v["pubmedqa"]["n"] == 100 and ids == train_ids[400:500] and not set(ids) & set(gt)


def test_generate_method_and_few_shot(hf_dir, tmp_path):
    res = eval_qa.main(["--bench=usmle", f"--data={data_path('medqa_usmle', 'sample_200.jsonl')}",
                        f"--init_from={hf_dir}", "--device=cpu", "--dtype=float32", "--method=generate", "--limit=5",
                        "--max_new_tokens=4", f"--out={tmp_path}"])["usmle"]
    rows = [json.loads(l) for l in open(tmp_path / "predictions.jsonl")]
    assert res["n"] == 5 and res["no_answer"] == sum(r["pred"] is None for r in rows)
    assert all("generation" in r for r in rows) and res["acc_norm"] is None
    eval_qa.main(["--bench=usmle", f"--data={data_path('medqa_usmle', 'sample_200.jsonl')}", f"--init_from={hf_dir}",
                  "--device=cpu", "--dtype=float32", "--method=generate", "--limit=5", "--max_new_tokens=4",
                  "--compile=True", f"--out={tmp_path / 'compiled'}"])
    compiled = [json.loads(l) for l in open(tmp_path / "compiled" / "predictions.jsonl")]
    assert [r["generation"] for r in compiled] == [r["generation"] for r in rows]  # compiled decoding: same text
    res = eval_qa.main(["--bench=pubmedqa", f"--data={data_path('pubmedqa', 'ori_pqal.json')}",
                        f"--init_from={hf_dir}", "--device=cpu", "--dtype=float32", "--shots=2", "--limit=3",
                        f"--out={tmp_path / 'shots'}"])["pubmedqa"]
    rows = [json.loads(l) for l in open(tmp_path / "shots" / "predictions.jsonl")]
    assert rows[0]["prompt"].count("Answer:") == 3 and res["shots"] == 2


def test_extract_answer():
    assert eval_qa.extract_answer("pubmedqa", " Yes, because", 3) == 0
    assert eval_qa.extract_answer("pubmedqa", " unclear", 3) is None
    assert eval_qa.extract_answer("usmle", " B. Hyperstabilization", 4) == 1
    assert eval_qa.extract_answer("usmle", " The answer is (C)", 4) == 2
    assert eval_qa.extract_answer("usmle", " E", 4) is None
    assert eval_qa.extract_answer("usmle", " E", 5) == 4


def test_lora_adapter_is_applied(hf_dir, tmp_path):
    from lora import adapter_config, apply_lora, save_adapter
    m = load_model(hf_dir)
    apply_lora(m)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_adapter(m, tmp_path / "ad", adapter_config(m))
    args = ["--bench=usmle", f"--data={data_path('medqa_usmle', 'sample_200.jsonl')}", f"--init_from={hf_dir}",
            "--device=cpu", "--dtype=float32", "--limit=8"]
    eval_qa.main(args + [f"--out={tmp_path / 'a'}", f"--lora={tmp_path / 'ad'}"])
    got = [json.loads(l)["scores"] for l in open(tmp_path / "a" / "predictions.jsonl")]
    tok = Tokenizer(hf_dir)
    examples = qa_data.load("usmle", data_path("medqa_usmle", "sample_200.jsonl"))[:8]
    ref = eval_qa.score_loglik(m, items_for(tok, examples), 8, "cpu", progress=False)  # unmerged LoRA model
    assert max(abs(a - b) for s, r in zip(got, ref) for a, b in zip(s, r)) <= 1e-4
    base = eval_qa.score_loglik(load_model(hf_dir), items_for(tok, examples), 8, "cpu", progress=False)
    assert max(abs(a - b) for s, r in zip(got, base) for a, b in zip(s, r)) > 1e-3


# --- accuracy, acc_norm, intervals and truncation against known answers ------------------------------------------

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_by_hand(k, n, z=Z95):
    """The Wilson interval as the two roots of (k/n - p)^2 = z^2 p (1 - p) / n, solved for p."""
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (1, 3), (37, 100), (81, 263), (1254, 4183)])
def test_wilson_interval_by_hand(k, n):
    lo, hi = eval_qa.wilson_ci(k, n)
    ref = wilson_by_hand(k, n)
    assert abs(lo - ref[0]) <= 1e-4 and abs(hi - ref[1]) <= 1e-4, ((lo, hi), ref)
    p = k / n
    for b in (lo, hi):  # each bound is a root of the score equation
        assert abs((p - b) ** 2 - Z95 ** 2 * b * (1 - b) / n) <= 1e-5


def test_wilson_interval_published_values():
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson score): 81/263, 15/148, 0/20, 1/29
    for (k, n), ref in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                        (1, 29): (0.0061, 0.1718)}.items():
        assert [round(b, 4) for b in eval_qa.wilson_ci(k, n)] == list(ref), (k, n)


COLOURS = ("red", "green", "blue", "yellow", "black")  # one LLaMA token each


class CueModel(torch.nn.Module):
    """A rigged model: at each position, the logit of answer letter j is how often colour j occurred so far, so
    a question that names colour j makes letter j win, whatever the other choices' scores are."""

    def __init__(self, sp, max_seq_len=2048):
        super().__init__()
        self.args = SimpleNamespace(max_seq_len=max_seq_len)
        self.cues = torch.tensor([sp.encode(c)[0] for c in COLOURS])
        letters = [sp.encode(f"Answer: {L}")[-1] for L in "ABCDE"]
        self.lm_head = torch.nn.Linear(len(COLOURS), sp.get_piece_size(), bias=False)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.weight[letters, list(range(len(COLOURS)))] = 1.0

    def hidden(self, idx, start_pos=0):
        return (idx[..., None] == self.cues).float().cumsum(1)


def eval_settings(**kw):
    """eval_qa's own defaults (a new option cannot leave the tests behind), with the rigged model's overrides."""
    return SimpleNamespace(**{**configure(dict(vars(eval_qa)), []), "batch_size": 4, "device": "cpu",
                              "init_from": "rigged", **kw})


def usmle_file(path, cues, keys, letters="ABCD"):
    recs = [{"question": f"Which colour is named here: {COLOURS[c]}?", "options": dict(zip(letters, ("one", "two",
             "three", "four", "five"))), "answer_idx": letters[k], "meta_info": "step1"} for c, k in zip(cues, keys)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


@pytest.fixture(scope="module")
def sp_tok():
    path = data_path("tokenizer", "llama_tokenizer.model")
    return spm.SentencePieceProcessor(model_file=path), Tokenizer(path)


def test_rigged_model_accuracy_is_exact(tmp_path, sp_tok):
    sp, tok = sp_tok
    model = CueModel(sp)
    cues = [0, 1, 2, 3, 3, 2, 1, 0, 2]  # the questions' prompts differ in length: batches are sorted and unsorted
    n = len(cues)
    for name, keys, k in (("right", cues, n), ("reversed", [(c + 2) % 4 for c in cues], 0),
                          ("five", [c if i < 5 else (c + 1) % 4 for i, c in enumerate(cues)], 5)):
        path = usmle_file(tmp_path / name, cues, keys)
        res, rows = eval_qa.evaluate_bench(model, tok, eval_settings(), "usmle", path)
        assert [r["pred"] for r in rows] == cues, name  # the named colour's letter wins every question
        assert [r["correct"] for r in rows] == [c == g for c, g in zip(cues, keys)]
        assert res["n"] == n and res["acc"] == k / n and res["acc_norm"] == k / n, (name, res["acc"])
        ref = wilson_by_hand(k, n)
        assert all(abs(a - b) <= 1e-4 for a, b in zip(res["acc_ci95"], ref)), (res["acc_ci95"], ref)
        assert res["truncated_prompts"] == 0


def test_five_options_are_scored_over_five(tmp_path, sp_tok):
    """MedQA's 5-option files (A-E): a question naming the fifth colour makes E win, so E is predicted and scored."""
    sp, tok = sp_tok
    cues, keys = [4, 0, 4, 2, 1], [4, 0, 3, 2, 1]
    res, rows = eval_qa.evaluate_bench(CueModel(sp), tok, eval_settings(), "usmle",
                                       usmle_file(tmp_path / "five.jsonl", cues, keys, "ABCDE"))
    assert all(len(r["choices"]) == 5 and len(r["scores"]) == 5 for r in rows)
    assert [r["pred"] for r in rows] == cues and res["acc"] == 4 / 5


def test_summary_rows_by_hand():
    results = {"pubmedqa": {"n": 500, "correct": 300, "acc": 0.6, "acc_norm": 0.5},
               "mmlu_anatomy": {"n": 10, "correct": 3, "acc": 0.3, "acc_norm": 0.4},
               "mmlu_college_biology": {"n": 30, "correct": 15, "acc": 0.5, "acc_norm": 0.6}}
    rows = eval_qa.summarize(results)
    pooled = rows["mmlu_medical (pooled)"]
    assert pooled["n"] == 40 and pooled["acc"] == 18 / 40 and abs(pooled["acc_norm"] - (4 + 18) / 40) < 1e-12
    assert all(abs(a - b) <= 1e-4 for a, b in zip(pooled["acc_ci95"], wilson_by_hand(18, 40)))
    mean = rows["mean of 3 tasks"]
    assert abs(mean["acc"] - (0.6 + 0.3 + 0.5) / 3) < 1e-12 and abs(mean["acc_norm"] - 0.5) < 1e-12
    assert list(eval_qa.summarize({"pubmedqa": results["pubmedqa"]})) == []


def test_the_whole_suite_in_one_command(hf_dir, tmp_path, capsys):
    res = eval_qa.main(["--bench=all", f"--data_root={data_path()}", f"--init_from={hf_dir}", "--device=cpu",
                        "--dtype=float32", "--limit=2", f"--out={tmp_path}"])
    assert list(res) == list(qa_data.BENCHMARKS) and all(r["n"] == 2 for r in res.values())
    saved = json.load(open(tmp_path / "results.json"))
    assert list(saved["summary"]) == ["mmlu_medical (pooled)", "mean of 9 tasks"]
    assert saved["summary"]["mmlu_medical (pooled)"]["n"] == 12
    md = open(tmp_path / "results.md").read().splitlines()
    assert len([l for l in md if l.startswith("| ")]) == 1 + 9 + 2  # the header, nine tasks, pooled MMLU and the mean
    assert len(open(tmp_path / "predictions.jsonl").readlines()) == 18
    assert not list(tmp_path.glob("*.tmp"))
    out = capsys.readouterr().out
    assert "mmlu_professional_medicine" in out and "mean of 9 tasks" in out


def test_missing_subject_file_names_path_and_source(tmp_path, hf_dir):
    with pytest.raises(SystemExit, match=r"mmlu_anatomy: no data file .*mmlu/anatomy_test.csv .*MMLU's data/test/"
                                         r"anatomy_test.csv.*python download.py --benchmarks --data_root="):
        eval_qa.main(["--bench=mmlu", f"--data_root={tmp_path}", f"--init_from={hf_dir}", f"--out={tmp_path / 'o'}"])


def test_acc_norm_divides_by_choice_length(tmp_path, sp_tok, monkeypatch):
    """acc_norm divides by the characters of the harness' choice, without its target delimiter: "yes", "no", "maybe"
    have 3, 2 and 5 (lm_eval's process_results takes len() of doc_to_choice's strings). Rigged scores where the raw,
    the per-character and the per-character-with-the-space argmax differ give known acc and acc_norm."""
    _, tok = sp_tok
    questions = {"q1": ([-4.4, -3.0, -5.4], "maybe"),  # raw: no (-3.0);  per character: maybe (-1.08)
                 "q2": ([-1.0, -3.0, -9.0], "yes"),  # raw and per character: yes
                 "q3": ([-6.0, -100.0, -9.5], "maybe")}  # per character: maybe (-1.9 > -2.0); counting " ": yes
    recs = {q: {"QUESTION": f"Question {q}?", "CONTEXTS": ["Some context."], "final_decision": d}
            for q, (_, d) in questions.items()}
    (tmp_path / "ori_pqal.json").write_text(json.dumps(recs))
    (tmp_path / "test_ground_truth.json").write_text(json.dumps({q: d for q, (_, d) in questions.items()}))
    scores = [s for s, _ in questions.values()]
    monkeypatch.setattr(eval_qa, "score_loglik", lambda model, items, *a, **k: [list(s) for s in scores[:len(items)]])
    res, rows = eval_qa.evaluate_bench(SimpleNamespace(args=SimpleNamespace(max_seq_len=2048)), tok, eval_settings(),
                                       "pubmedqa", str(tmp_path / "ori_pqal.json"))
    assert [r["id"] for r in rows] == list(questions) and [r["pred"] for r in rows] == [1, 0, 0]
    assert res["acc"] == 1 / 3 and res["acc_norm"] == 1.0


class CharTokenizer:
    bos_id, add_bos = 1, True

    def encode(self, s):
        return [ord(ch) + 3 for ch in s]


@pytest.mark.usefixtures("one_thread")
def test_too_long_prompt_keeps_bos_and_every_answer():
    tok = CharTokenizer()
    choices = [" yes", " no", " maybe not"]  # the longest continuation: 10 tokens
    max_len = 40
    fits = "x" * (max_len - 11) + "?"  # BOS + 30 prompt tokens + 10 - 1 = 40: fits exactly, not cut
    long = "The beginning goes. " * 5 + "Question: is the end kept?\nAnswer:"
    examples = [qa_data.QAExample(str(i), p, choices, 0) for i, p in enumerate((fits, fits + "!", long))]
    items, truncated = eval_qa.encode_items(tok, [e.prompt for e in examples], examples, max_len)
    assert truncated == 2
    for e, (ctx, conts) in zip(examples, items):
        full = [1] + tok.encode(e.prompt)
        assert conts == [tok.encode(c) for c in choices]  # the answers are never cut
        assert ctx[0] == 1 and len(ctx) + 10 - 1 == min(max_len, len(full) + 10 - 1)
        assert ctx[1:] == full[len(full) - (len(ctx) - 1):]  # what is lost is the prompt's beginning, after BOS
    assert items[0][0] == [1] + tok.encode(fits) and len(items[1][0]) == len(items[0][0])
    # a model with exactly max_len positions scores them (a token too many would raise)
    from model import ModelArgs, Transformer
    m = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=200, intermediate_size=32, max_seq_len=max_len))
    m.init_weights()
    scores = eval_qa.score_loglik(m, items, 2, "cpu", progress=False)
    ref = eval_qa.score_loglik(m, items, 2, "cpu", progress=False, naive=True)
    assert max(abs(a - b) for s, r in zip(scores, ref) for a, b in zip(s, r)) <= 1e-5
