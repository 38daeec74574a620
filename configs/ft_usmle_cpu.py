# The data-efficient USMLE scenario, small, on CPU:  python finetune_qa.py configs/ft_usmle_cpu.py [--lora=True]
# MedQA-USMLE's 10,178-question train split is not reachable offline: this config trains on its dev split (1,272
# questions) instead, and eval_qa.py --bench=usmle scores the official 1,273-question test, which it never saw.
# Numbers from it are a small-data stand-in for the paper's USMLE fine-tuning, not its result.
import os

# the data root the tests use: $NANOPMC_DATA, else ../shared/data beside the repository (not the working directory)
_data = os.environ.get("NANOPMC_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
init_from = "out/tiny_pmc/hf"
out_dir = "out/ft_usmle_cpu"
usmle_train = os.path.join(_data, "medqa_usmle", "phrases_no_exclude_dev.jsonl")
block_size = 256  # tiny_pmc's context; longer prompts lose their beginning
micro_batch_size = 10
global_batch_size = 20
epochs = 3.0
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 2
dtype = "float32"
log_interval = 5
ckpt_interval = 0
export_dtype = "float32"
lora = False
