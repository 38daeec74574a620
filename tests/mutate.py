"""
Mutation testing, on demand (not part of CI): plant one small deliberate bug at a time in a copy of the repository,
run the tests named for it, and report whether they caught it ("killed") or still pass ("survived").

    python tests/mutate.py                            # every mutant (docs/testing.md has the last run's figures)
    python tests/mutate.py eval_argmin lora_no_scale  # some, by name
    python tests/mutate.py --list

A mutant is (name, file, original snippet, replacement, the tests that must kill it, the bug in words). Every
snippet must occur exactly once in its file, or nothing runs: a mutant cannot silently rot when the code changes.
The copy holds git's tracked and untracked-but-not-ignored files; its tests read the data that tests/conftest.py
reads here (NANOPMC_DATA is set to it). First the chosen tests run unmutated and must pass. Killed means pytest
failed (or ran past --timeout); the exit status is 1 if any mutant survived.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.abspath(os.environ.get("NANOPMC_DATA", os.path.join(ROOT, "..", "shared", "data")))
Mutant = namedtuple("Mutant", "name file old new tests doc")
M = Mutant
T_MODEL = "tests/test_model.py::"
T_EVAL = "tests/test_eval_qa.py::"
T_STEP = "tests/test_train_step.py"

MUTANTS = [
    # model.py
    M("rmsnorm_eps_outside", "model.py", "torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)",
      "(torch.rsqrt(h.pow(2).mean(-1, keepdim=True)) + self.eps)", T_MODEL + "test_logits_and_loss_match_transformers",
      "RMSNorm adds eps after the rsqrt"),
    M("rope_sign", "model.py", "torch.cat((-x2, x1), dim=-1)", "torch.cat((x2, -x1), dim=-1)",
      T_MODEL + "test_logits_and_loss_match_transformers", "rotate_half with the wrong sign"),
    M("llama3_rope_ramp", "model.py", "smoothed = (1 - smooth) * scaled / factor + smooth * scaled",
      "smoothed = smooth * scaled / factor + (1 - smooth) * scaled", "tests/test_rope.py",
      "llama3 rope scaling's ramp reversed"),
    M("linear_rope_scaling", "model.py", 'return inv_freq / scaling["factor"]', 'return inv_freq * scaling["factor"]',
      "tests/test_rope.py", "linear rope scaling speeds positions up"),
    M("no_causal_mask", "model.py", "mask, causal = None, T > 1", "mask, causal = None, False",
      T_MODEL + "test_logits_and_loss_match_transformers", "attention sees future tokens"),
    M("kv_mask_offset", "model.py", ".tril(diagonal=S - T)", ".tril(diagonal=S - T - 1)",
      T_MODEL + "test_kv_cache_chunks_equal_full_forward", "a cached chunk's queries miss their own key"),
    M("gqa_repeat_order", "model.py", "k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)",
      "k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)", T_MODEL + "test_kv_cache_chunks_equal_full_forward",
      "GQA: heads paired with the wrong KV head"),
    M("decode_position", "model.py", "logits, _ = step(nxt[:, None], start_pos=pos)",
      "logits, _ = step(nxt[:, None], start_pos=pos - 1)", T_MODEL + "test_greedy_generation_matches_transformers",
      "generate writes each new token one cache slot early"),
    M("swiglu_swapped", "model.py", "F.silu(self.gate_proj(x)) * self.up_proj(x)",
      "F.silu(self.up_proj(x)) * self.gate_proj(x)", T_MODEL + "test_logits_and_loss_match_transformers",
      "SwiGLU gates the wrong projection"),
    M("init_no_residual_scale", "model.py", "out_std = std / math.sqrt(2 * self.args.n_layers)", "out_std = std",
      "tests/test_sampling.py::test_init_standard_deviations_per_layer", "residual projections init at std 0.02"),
    M("top_k_removed", "model.py", "    if top_k is not None:\n        v, _", "    if False:\n        v, _",
      "tests/test_sampling.py", "sampling ignores top_k"),
    M("top_k_drops_kth", "model.py", "logits < v[:, [-1]]", "logits <= v[:, [-1]]", "tests/test_sampling.py",
      "top-k keeps only k - 1 tokens"),
    M("temperature_inverted", "model.py", "logits = logits.float() / temperature",
      "logits = logits.float() * temperature", "tests/test_sampling.py", "temperature multiplies the logits"),
    M("generate_drops_top_k", "model.py", "sample_next(logits[:, -1], temperature, top_k, generator)",
      "sample_next(logits[:, -1], temperature, None, generator)", "tests/test_sampling.py", "generate ignores top_k"),
    M("untied_embeddings", "model.py", "self.lm_head.weight = self.model.embed_tokens.weight", "pass",
      T_MODEL + "test_logits_and_loss_match_transformers", "tie_word_embeddings ignored (Llama-3.2-1B)"),
    M("mean_loss_over_all", "model.py", "total / (targets != -100).sum()", "total / targets.numel()",
      T_MODEL + "test_chunked_linear_cross_entropy_matches_full_logits", "mean loss counts ignored targets"),
    # kernels.py
    M("ce_ignore_index", "kernels.py", ".mul(valid).sum()", ".sum()",
      T_MODEL + "test_chunked_linear_cross_entropy_matches_full_logits", "chunked loss counts -100 targets"),
    M("ce_logsumexp", "kernels.py", "(zmax + sumexp.log()).squeeze(1)", "sumexp.log().squeeze(1)",
      T_MODEL + "test_chunked_linear_cross_entropy_matches_full_logits", "logsumexp without the max"),
    M("ce_grad_ignored_rows", "kernels.py", "keep = valid[:, None].to(h.dtype)",
      "keep = torch.ones_like(valid[:, None], dtype=h.dtype)",
      T_MODEL + "test_chunked_linear_cross_entropy_matches_full_logits", "-100 rows get gradients"),
    # weights.py
    M("export_kv_heads", "weights.py", '"num_key_value_heads": args.n_kv_heads,',
      '"num_key_value_heads": args.n_heads,',
      T_MODEL + "test_export_roundtrip_loads_in_transformers", "HF export forgets grouped-query attention"),
    # lora.py
    M("lora_scale_inverted", "lora.py", "else alpha / r", "else r / alpha", "tests/test_lora.py", "scale r / alpha"),
    M("lora_no_scale", "lora.py", "self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling",
      "self.lora_B(self.lora_A(self.lora_dropout(x)))", "tests/test_lora.py", "forward drops the scale"),
    M("rslora_ignored", "lora.py", "alpha / math.sqrt(r) if use_rslora else", "alpha / r if use_rslora else",
      "tests/test_lora.py", "use_rslora has no effect"),
    M("merge_no_scale", "lora.py", "return (self.lora_B.weight @ self.lora_A.weight) * self.scaling",
      "return self.lora_B.weight @ self.lora_A.weight", "tests/test_lora.py", "merge_lora adds B A unscaled"),
    M("merged_export_sign", "lora.py", "w.float() + scaling * (b.float() @ a.float())",
      "w.float() - scaling * (b.float() @ a.float())", "tests/test_lora.py", "merged_state_dict is W - s B A"),
    M("dropout_on_output", "lora.py", "self.lora_B(self.lora_A(self.lora_dropout(x)))",
      "self.lora_dropout(self.lora_B(self.lora_A(x)))", "tests/test_lora.py", "dropout on the update, not on x"),
    M("dropout_never", "lora.py", "nn.Dropout(dropout) if dropout > 0 else nn.Identity()", "nn.Identity()",
      "tests/test_lora.py", "lora_dropout ignored"),
    M("adapter_alpha", "lora.py", '"lora_alpha": m.alpha,', '"lora_alpha": m.r,', "tests/test_lora.py",
      "saved adapter_config has alpha = r"),
    # finetune_qa.py
    M("ft_merged_scale", "finetune_qa.py", "scaling = c.lora_alpha / c.lora_r", "scaling = c.lora_r / c.lora_alpha",
      "tests/test_finetune.py::test_lora_under_fsdp_two_processes", "fine-tuning's merged export scale r / alpha"),
    M("ft_padding_unmasked", "finetune_qa.py", "y = torch.full((len(seqs), T), -100, dtype=torch.long)",
      "y = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)",
      "tests/test_finetune.py::test_qa_batches_labels_are_the_answer_ids_and_padding_is_masked",
      "padding carries loss (targets = pad id)"),
    M("ft_same_order_every_epoch", "finetune_qa.py", "np.random.default_rng([self.c.seed, epoch])",
      "np.random.default_rng(self.c.seed)",
      "tests/test_finetune.py::test_qa_batches_labels_are_the_answer_ids_and_padding_is_masked",
      "fine-tuning examples in one order every epoch"),
    # train.py
    M("lr_constant", "train.py",
      "return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)",
      "return c.learning_rate", T_STEP, "no cosine decay"),
    M("lr_no_warmup", "train.py", "return c.learning_rate * (it + 1) / (c.warmup_iters + 1)",
      "return c.learning_rate", T_STEP, "no warmup"),
    M("no_grad_clip", "train.py", 'c.grad_clip if c.grad_clip > 0 else float("inf")', 'float("inf")', T_STEP,
      "gradient clipping removed"),
    M("decay_on_vectors", "train.py", '{"params": no_decay, "weight_decay": 0.0}',
      '{"params": no_decay, "weight_decay": c.weight_decay}', T_STEP, "weight decay on norms too"),
    M("no_weight_decay", "train.py", '{"params": decay, "weight_decay": c.weight_decay}',
      '{"params": decay, "weight_decay": 0.0}', T_STEP, "weight decay never applied"),
    M("beta2_is_beta1", "train.py", "betas=(c.beta1, c.beta2)", "betas=(c.beta1, c.beta1)", T_STEP,
      "AdamW's beta2 ignored"),
    M("accum_per_micro_mean", "train.py", "(loss * (ctx.world / max(n_tok, 1))).backward()",
      "(loss * (ctx.world / max(int((y != -100).sum()), 1))).backward()", T_STEP,
      "gradient accumulation averages micro-batch means"),
    M("decay_iters_ignored", "train.py", "total = c.lr_decay_iters or total", "total = total", T_STEP,
      "lr_decay_iters has no effect"),
    M("grads_accumulate_across_steps", "train.py", "opt.zero_grad(set_to_none=True)", "pass", T_STEP,
      "gradients never zeroed"),
    M("window_targets_unshifted", "train.py", "y[:len(w) - 1] = w[1:]", "y[:len(w) - 1] = w[:-1]",
      "tests/test_train.py::test_windows_differ_between_epochs_and_padding_is_masked", "targets = inputs"),
    M("ranks_overlap", "train.py", "lo = start + (m * world + rank) * c.micro_batch_size",
      "lo = start + (m + rank) * c.micro_batch_size",
      "tests/test_train.py::test_every_paper_once_per_epoch_across_ranks", "ranks' micro-batches overlap"),
    M("grad_sync_never_deferred", "train.py",
      "set_requires_gradient_sync(not c.defer_grad_sync or m == len(batches) - 1)",
      "set_requires_gradient_sync(True)", T_STEP + "::test_gradients_between_micro_steps_are_sharded_unless_deferred",
      "defer_grad_sync ignored"),
    M("grad_sync_always_deferred", "train.py",
      "set_requires_gradient_sync(not c.defer_grad_sync or m == len(batches) - 1)",
      "set_requires_gradient_sync(m == len(batches) - 1)",
      T_STEP + "::test_gradients_between_micro_steps_are_sharded_unless_deferred",
      "unsharded gradients kept between micro-steps by default"),
    # memplan.py
    M("memplan_shards_in_backward_only", "memplan.py",
      '"always" if accumulate and not defer_grad_sync else "optimizer" if deferred else "backward"', '"backward"',
      "tests/test_gpu_script.py::test_memory_plan_of_configs_pmc_by_hand",
      "the plan drops the gradient shards held between micro-steps"),
    M("memplan_accumulator_always", "memplan.py", "4 * n if deferred else 0",
      "4 * n if accumulate else 0", "tests/test_gpu_script.py::test_memory_plan_of_configs_pmc_by_hand",
      "the plan counts the unsharded accumulator in both modes"),
    # dryrun.py and the MFU formula
    M("dryrun_books_dtensor_propagation", "dryrun.py", "ShardingPropagator._fake_mode_lock = OwnFakeMode()",
      "ShardingPropagator._fake_mode_lock = saved", "tests/test_dryrun.py",
      "the tracker books DTensor's global-shape propagation tensors (full gradients in clip_grad_norm_)"),
    M("mfu_counts_embedding", "train.py", "matmul_params = n_params - (0 if", "matmul_params = n_params + 0 * (0 if",
      "tests/test_dryrun.py", "the MFU formula counts the embedding lookup as a matrix product"),
    # perplexity.py, prepare_corpus.py --merge, train.py's mixtures
    M("rolling_last_window_one_token", "perplexity.py", "inputs = tokens[end - max_len - 1:end - 1]",
      "inputs = tokens[start - 1:end - 1]", "tests/test_perplexity.py",
      "the last window gets one token of context, not the harness' full window"),
    M("merge_keeps_cross_shard_duplicates", "prepare_corpus.py", 'if pmc and not seen.add(f"PMC{pmc}"):',
      "if False:", "tests/test_prepare_corpus.py::test_shards_merge_to_the_bytes_of_one_run",
      "a paper in two shards kept twice"),
    M("mixture_rows_round_down", "train.py", "rows[i] += 1", "rows[i] += 0", "tests/test_mixture.py",
      "a mixture step short of the global batch"),
    # qa_data.py
    M("qa_truncate_right", "qa_data.py", "ctx = ctx[len(ctx) - room:] if len(ctx) > room else ctx",
      "ctx = ctx[:room] if len(ctx) > room else ctx", "tests/test_qa_data.py", "a long prompt loses its end"),
    M("qa_labels_unshifted", "qa_data.py", "labels = [-100] * (len(ids) - 1 - len(ans)) + ans + [-100]",
      "labels = [-100] * (len(ids) - len(ans)) + ans", "tests/test_qa_data.py", "labels not shifted by one"),
    M("continuation_alone", "qa_data.py", "return ctx, encode(prompt + choice)[len(ctx):]",
      "return ctx, encode(choice)", "tests/test_qa_data.py", "answer tokenized apart from its prompt"),
    M("mmlu_subject_underscore", "qa_data.py", "about {subject.replace('_', ' ')}.", "about {subject}.",
      "tests/test_lm_eval_golden.py::test_prompts_choices_and_answers_are_the_harness_own",
      "MMLU's description names the subject with its underscore"),
    M("mmlu_question_unstripped", "qa_data.py", "mmlu_description(subject) + q.strip() + ", "mmlu_description(subject) + q + ",
      "tests/test_qa_data.py::test_mmlu_csv_quoting_and_errors", "MMLU's question keeps its surrounding spaces"),
    M("pubmedqa_contexts_spaced", "qa_data.py", '"Abstract: " + "\\n".join(contexts)',
      '"Abstract: " + " ".join(contexts)',
      "tests/test_lm_eval_golden.py", "PubMedQA's abstract paragraphs joined by spaces, not newlines"),
    M("medmcqa_no_choices_line", "qa_data.py", 'f"Question: {q}\\nChoices:\\n" + lettered(options)',
      'f"Question: {q}\\n" + lettered(options)', "tests/test_lm_eval_golden.py", "MedMCQA's prompt without 'Choices:'"),
    M("usmle_letter_paren", "qa_data.py", 'return "".join(f"{k}. {v}\\n"', 'return "".join(f"({k}) {v}\\n"',
      "tests/test_lm_eval_golden.py", "options lettered '(A) ...', not the harness' 'A. ...'"),
    M("gguf_export_no_permute", "gguf_export.py", "source(t, rope_heads(name, args))", "source(t, None)",
      "tests/test_gguf_export.py::test_f32_gguf_gives_transformers_and_our_logits",
      "q/k rows written in HF's rotate-half order, not llama.cpp's interleaved one"),
    M("gguf_export_kv_as_heads", "gguf_export.py", "args.n_kv_heads if \"k_proj\" in parts",
      "args.n_heads if \"k_proj\" in parts",
      "tests/test_gguf_export.py::test_f32_gguf_gives_transformers_and_our_logits",
      "k rows permuted by the query head count (wrong under grouped-query attention)"),
    M("gguf_lora_alpha_is_scale", "gguf_export.py", "float(scaling) * rank)", "float(scaling))",
      "tests/test_gguf_export.py::test_lora_merged_and_adapter_gguf",
      "adapter alpha written as the scale, not scale * r"),
    M("fewshot_description_repeated", "qa_data.py", "s.prompt[len(s.description):] + s.answer", "s.prompt + s.answer",
      "tests/test_qa_data.py::test_few_shot_layout_states_the_description_once", "each shot repeats the description"),
    M("mmlu_pooled_macro", "eval_qa.py", "n, k = sum(r[\"n\"] for r in mmlu), sum(r[\"correct\"] for r in mmlu)",
      "n, k = len(mmlu), sum(r[\"acc\"] for r in mmlu)", T_EVAL + "test_summary_rows_by_hand",
      "pooled MMLU as the mean of subjects, not over questions"),
    # eval_qa.py
    M("eval_argmin", "eval_qa.py", "preds = [max(range(len(s)), key=s.__getitem__)",
      "preds = [min(range(len(s)), key=s.__getitem__)", T_EVAL + "test_rigged_model_accuracy_is_exact",
      "the answer is the lowest score"),
    M("acc_norm_unnormalised", "eval_qa.py", 's[j] / len(ex.choices[j].removeprefix(" "))', "s[j]",
      T_EVAL + "test_acc_norm_divides_by_choice_length", "acc_norm without the length"),
    M("acc_norm_with_delimiter", "eval_qa.py", 's[j] / len(ex.choices[j].removeprefix(" "))', "s[j] / len(ex.choices[j])",
      T_EVAL + "test_acc_norm_divides_by_choice_length", "acc_norm counts the target delimiter (the harness does not)"),
    M("wilson_z1", "eval_qa.py", "def wilson_ci(k, n, z=1.96):", "def wilson_ci(k, n, z=1.0):",
      T_EVAL + "test_wilson_interval_by_hand", "a 68% interval called 95%"),
    M("wilson_centre", "eval_qa.py", "centre = (p + z * z / (2 * n)) / (1 + z * z / n)", "centre = p",
      T_EVAL + "test_wilson_interval_by_hand", "Wald's centre in Wilson's interval"),
    M("eval_truncation_drops_bos", "eval_qa.py", "(ctx[:keep] + ctx[keep + over:], True)", "(ctx[over:], True)",
      T_EVAL + "test_too_long_prompt_keeps_bos_and_every_answer", "a cut prompt loses BOS"),
    M("eval_truncation_off_by_one", "eval_qa.py", "max(len(c) for c in conts) - 1 - max_len",
      "max(len(c) for c in conts) - max_len", T_EVAL + "test_too_long_prompt_keeps_bos_and_every_answer",
      "prompts cut one token too many"),
    M("one_pass_wrong_position", "eval_qa.py", "last = torch.tensor([len(items[i][0]) - 1 for i in rows]",
      "last = torch.tensor([len(items[i][0]) - 2 for i in rows]",
      T_EVAL + "test_scores_match_a_transformers_computation",
      "scores read one position early"),
    # prepare_corpus.py
    M("corpus_no_eos", "prepare_corpus.py", "bos=_tok.add_bos, eos=True,", "bos=_tok.add_bos, eos=False,",
      "tests/test_corpus_split.py", "documents without EOS"),
    M("corpus_no_bos", "prepare_corpus.py", "bos=_tok.add_bos, eos=True,", "bos=False, eos=True,",
      "tests/test_corpus_split.py", "documents without BOS"),
    M("split_ignores_seed", "prepare_corpus.py", 'f"{seed}:{key}".encode()', 'f"{key}".encode()',
      "tests/test_corpus_split.py", "the split does not depend on the seed"),
    M("split_inverted", "prepare_corpus.py", '/ 2**64 < val_fraction else "train"',
      '/ 2**64 >= val_fraction else "train"', "tests/test_corpus_split.py", "val gets 1 - val_fraction"),
    M("min_tokens_counts_bos_eos", "prepare_corpus.py", "if n - 1 - tok.add_bos < args.min_tokens", "if n < args.min_tokens",
      "tests/test_corpus_split.py", "BOS and EOS count towards min_tokens"),
    M("skips_not_counted", "prepare_corpus.py", "self.counts[reason] += 1", "self.counts[reason] = 1",
      "tests/test_prepare_corpus.py::test_pubmedqa_source_and_test_exclusion", "each skip reason counted once"),
    M("doc_ids_shifted", "prepare_corpus.py", "ids[ends[j] - int(lengths[j]):ends[j]]",
      "ids[ends[j] - int(lengths[j]) + 1:ends[j] + 1]", "tests/test_corpus_split.py",
      "each document written with its neighbour's first token"),
    # corpus_data.py, corpus_sources.py
    M("idx_holds_lengths", "corpus_data.py", "np.int64(self.tokens[split]).tobytes()", "np.int64(len(ids)).tobytes()",
      "tests/test_corpus_split.py", ".idx holds document lengths, not offsets"),
    M("s2orc_layout_ignored", "corpus_sources.py", 'if glob.glob(os.path.join(path, "metadata", "metadata_*.jsonl*")):',
      "if False:", "tests/test_prepare_corpus.py::test_s2orc_join_keeps_pmc_papers_with_a_parse",
      "the S2ORC 2020 release read as Datasets API shards"),
    M("pubtator_repeats_kept", "corpus_sources.py", "if pmid in seen:", "if False:",
      "tests/test_prepare_corpus.py::test_pubtator_bc5cdr_and_ncbi", "a repeated PubTator PMID written twice"),
    M("source_list_not_the_table", "prepare_corpus.py", "if kind not in cs.SOURCES:",
      'if kind not in ("s2orc", "pmc_xml", "bioc", "jsonl", "text", "pubtator", "pubmedqa"):',
      "tests/test_prepare_corpus.py::test_a_new_format_is_one_parser_and_one_entry",
      "a new SOURCES entry also needs a second list"),
    M("outputs_emptied_first", "corpus_data.py", "os.makedirs(out_dir, exist_ok=True)",
      "os.makedirs(out_dir, exist_ok=True)\n        for s in SPLITS:\n"
      "            open(os.path.join(out_dir, s + '.bin'), 'wb').close()",
      "tests/test_prepare_corpus.py::test_a_failed_run_leaves_the_previous_corpus_whole",
      "a run empties the previous corpus before it has a new one"),
    # weights.py's GGUF reader and tokenizer.py's BOS convention
    M("gguf_no_unpermute", "weights.py", "w = unpermute_rope_rows(w, args.n_heads)", "pass",
      "tests/test_gguf.py::test_gguf_written_like_llama_cpp_loads_with_hf_logits", "q rows left in llama.cpp's order"),
    M("gguf_kv_heads_as_heads", "weights.py", "w = unpermute_rope_rows(w, args.n_kv_heads)",
      "w = unpermute_rope_rows(w, args.n_heads)", "tests/test_gguf.py::test_gguf_written_like_llama_cpp_loads_with_hf_logits",
      "k un-permuted with the query head count"),
    M("gguf_untied", "weights.py", 'tie_word_embeddings="output.weight" not in names', "tie_word_embeddings=False",
      "tests/test_gguf.py::test_gguf_written_like_llama_cpp_loads_with_hf_logits", "a GGUF without output.weight untied"),
    M("gguf_rope_ramp_default", "weights.py", "    if int(ramp.sum()) >= 2:", "    if False:",
      "tests/test_gguf.py::test_gguf_written_like_llama_cpp_loads_with_hf_logits", "llama3 ramp not recovered"),
    M("tok_gguf_bos_default", "tokenizer.py", 'key("add_bos_token", default_bos)', "True",
      "tests/test_tokenizers.py", "GGUF add_bos_token ignored"),
]


def pytest(cwd, tests, timeout, env):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:warnings", *tests]
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        return "timeout", e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the mutants (all, or those named) against their tests.")
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (past it: killed)")
    ap.add_argument("--no_baseline", action="store_true", help="skip the unmutated run of the chosen tests")
    a = ap.parse_args(argv)
    unknown = set(a.names) - {m.name for m in MUTANTS}
    if unknown or len({m.name for m in MUTANTS}) != len(MUTANTS):
        raise SystemExit(f"unknown or duplicate mutant names: {sorted(unknown)}")
    chosen = [m for m in MUTANTS if not a.names or m.name in a.names]
    stale = [f"{m.name}: {m.file} holds the snippet {n} times: {m.old!r}" for m in chosen
             if (n := open(os.path.join(ROOT, m.file)).read().count(m.old)) != 1]
    if stale:
        raise SystemExit("mutants out of date with the code (a snippet must occur exactly once):\n" + "\n".join(stale))
    if a.list:
        for m in chosen:
            print(f"{m.name:<28} {m.file:<18} {m.doc}  [{m.tests}]")
        return 0
    env = {**os.environ, "NANOPMC_DATA": DATA, "PYTHONDONTWRITEBYTECODE": "1"}  # no stale .pyc between mutants
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True, timeout=60).stdout.split("\0")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nanopmc-mutants-") as tmp:
        for f in filter(None, files):
            if os.path.isfile(os.path.join(ROOT, f)):
                os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
                shutil.copy2(os.path.join(ROOT, f), os.path.join(tmp, f))
        if not a.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests.split()})
            rc, out = pytest(tmp, tests, a.timeout * 2, env)
            if rc != 0:
                raise SystemExit(f"the chosen tests fail without any mutant ({rc}):\n{out[-3000:]}")
            print(f"baseline: {len(tests)} test selections pass unmutated ({time.perf_counter() - t_start:.0f} s)")
        results = []
        for m in chosen:
            path = os.path.join(tmp, m.file)
            original = open(path).read()
            with open(path, "w") as f:
                f.write(original.replace(m.old, m.new))
            t0 = time.perf_counter()
            try:
                rc, out = pytest(tmp, m.tests.split(), a.timeout, env)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            status = {0: "SURVIVED", 1: "killed", 2: "killed", "timeout": "killed"}.get(rc, f"ERROR (pytest exit {rc})")
            results.append(status)
            print(f"{status:<9} {m.name:<28} {time.perf_counter() - t0:6.1f} s  {m.doc}", flush=True)
            lines = out.strip().splitlines()
            if status != "killed":
                print("    " + "\n    ".join(lines[-15:]))
            else:  # by which test, or why
                why = next((l for l in lines if l.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
                print("    " + why[:150])
    killed = results.count("killed")
    print(f"{killed}/{len(results)} mutants killed in {time.perf_counter() - t_start:.0f} s")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
