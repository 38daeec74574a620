import json

import pytest
import sentencepiece as spm
import torch

import eval_qa
import qa_data
from conftest import data_path, make_hf_with_tokenizer
from weights import load_hf
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
    ours = load_hf(hf_dir)
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
    ours = load_hf(hf_dir)
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


def test_lora_adapter_is_applied(hf_dir, tmp_path):
    from lora import adapter_config, apply_lora, save_adapter
    m = load_hf(hf_dir)
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
    base = eval_qa.score_loglik(load_hf(hf_dir), items_for(tok, examples), 8, "cpu", progress=False)
    assert max(abs(a - b) for s, r in zip(got, base) for a, b in zip(s, r)) > 1e-3
