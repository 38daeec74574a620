"""
Outside CI, in the llama-cpp-python venv: does llama.cpp agree with itself? For one job of llamacpp_check.py's
jobs.json (its file and Fig. 3 prompt ids), 40 greedy tokens per prompt under llama.cpp's own settings: KV cache F32
or F16, flash attention on or off, one or two threads, weight repacking on or off; each compared with the first.

    /work/refs/llamacpp-venv/bin/python tests/refs/llamacpp_self_check.py WORK/jobs.json JOB_INDEX
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

SETTINGS = [dict(flash_attn=False, kv=0, n_threads=2, use_extra_bufts=True),
            dict(flash_attn=True, kv=0, n_threads=2, use_extra_bufts=True),
            dict(flash_attn=False, kv=1, n_threads=2, use_extra_bufts=True),
            dict(flash_attn=False, kv=0, n_threads=1, use_extra_bufts=True),
            dict(flash_attn=False, kv=0, n_threads=2, use_extra_bufts=False),
            dict(flash_attn=True, kv=1, n_threads=2, use_extra_bufts=True)]


def greedy(llm, prompt, n=40):
    llm.reset()
    llm.eval(prompt)
    new = []
    for _ in range(n):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return new


def main(jobs_path, index):
    job = json.load(open(jobs_path))[int(index)]
    print(job["case"], job["model"])
    first = None
    for s in SETTINGS:
        llm = Llama(model_path=job["model"], n_ctx=512, n_batch=512, logits_all=True, n_threads=s["n_threads"],
                    verbose=False, type_k=s["kv"], type_v=s["kv"], flash_attn=s["flash_attn"],
                    use_extra_bufts=s["use_extra_bufts"])
        out = [greedy(llm, p) for p in job["prompts"]]
        del llm
        first = first or out
        diffs = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(first, out)]
        name = ", ".join(f"{k}={'f16' if k == 'kv' and v else 'f32' if k == 'kv' else v}" for k, v in s.items())
        print(f"{name}: greedy equal to the first setting's {diffs.count(None)}/{len(diffs)}, "
              f"first differences {diffs}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
