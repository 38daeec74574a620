"""
Continue a prompt with a LLaMA model (an HF folder, a llama.cpp .gguf or one of train.py's checkpoints), using the
KV cache.

    python sample.py --init_from=out/pmc/hf --prompt="Aspirin is" --max_new_tokens=64 --temperature=0

--temperature=0 is greedy decoding; an empty prompt starts from BOS alone. Tokens/s goes to stderr.
"""
import sys
import time

import torch

from configurator import configure, require
from tokenizer import TOKENIZER_PATHS, Tokenizer
from weights import MODEL_PATHS, load_model

init_from = ""  # HF folder, .gguf file or train.py checkpoint folder
tokenizer = ""  # tokenizer.model / tokenizer.json / folder / .gguf; default: the one inside init_from
prompt = ""
max_new_tokens = 100
temperature = 0.8  # 0 = greedy
top_k = 200
num_samples = 1
seed = 1337
compile = False  # torch.compile the one-token decoding steps (pays ~30 s once; then ~2x faster on CPU)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    require(cfg["init_from"], "init_from", MODEL_PATHS)
    require(cfg["tokenizer"] or cfg["init_from"], "tokenizer", TOKENIZER_PATHS)
    torch.manual_seed(cfg["seed"])
    model = load_model(cfg["init_from"], dtype=getattr(torch, cfg["dtype"]), device=cfg["device"])
    tok = Tokenizer(cfg["tokenizer"] or cfg["init_from"])
    # the model's own convention; an empty prompt needs a first token all the same (BOS, or EOS as a separator)
    bos = tok.add_bos or not cfg["prompt"]
    ids = tok.encode(cfg["prompt"], bos=bos and tok.bos_id is not None)
    ids = ids or [tok.eos_id]
    x = torch.tensor([ids], dtype=torch.long, device=cfg["device"])
    gen = torch.Generator(device=cfg["device"]).manual_seed(cfg["seed"])
    texts = []
    for _ in range(cfg["num_samples"]):
        t0 = time.perf_counter()
        y = model.generate(x, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"] or None,
                           eos_id=tok.eos_id, generator=gen, compile=cfg["compile"])
        dt = time.perf_counter() - t0
        new = y[0, len(ids):].tolist()
        texts.append(tok.decode(y[0].tolist()))  # prompt and continuation together (leading spaces stay right);
        print(texts[-1])  # decode drops the special ids (BOS, the EOS that ended it)
        print("---------------")
        print(f"{len(new)} tokens in {dt:.2f}s: {len(new) / dt:.1f} tokens/s", file=sys.stderr)
    return texts


if __name__ == "__main__":
    main()
