# PMC-LLaMA's continued pre-training (Wu et al. 2023): LLaMA-7B on PubMed Central papers from S2ORC, one random
# 512-token window per paper per epoch, global batch 128, AdamW lr 2e-5, bf16, FSDP, 5 epochs, on 8 x A100.
#
#   python prepare_corpus.py --source=s2orc --input=/data/s2orc --tokenizer=/models/llama-7b-hf --out_dir=data/pmc
#   torchrun --nproc_per_node=8 train.py configs/pmc.py
out_dir = "out/pmc_llama_7b"
init_from = "/models/llama-7b-hf"  # an HF LLaMA-7B folder (config.json + safetensors + tokenizer.model)
data_dir = "data/pmc"
tokenizer = "/models/llama-7b-hf/tokenizer.model"
block_size = 512
micro_batch_size = 4  # per GPU; grad_accum = 128 / (4 x 8) = 4
global_batch_size = 128
# gradients reduce-scattered after every micro-step, only their shards kept: ~16 GiB allocated per GPU, a 40 GB card
# fits; True (one reduce-scatter per step) keeps unsharded fp32 gradients, +25 GiB: ~38 GiB (docs/training.md: the
# memory plan; check any change first with python train.py configs/pmc.py --dry_run=True)
defer_grad_sync = False
epochs = 5.0
learning_rate = 2e-5
min_lr = 2e-6
warmup_iters = 1000
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dtype = "bfloat16"
activation_checkpointing = True
compile = True
eval_interval = 2000
eval_batches = 16
log_interval = 10
ckpt_interval = 2000
keep_checkpoints = 2
export_dtype = "bfloat16"
model_preset = "llama-7b"  # init_from's shape, for the dry run on a machine without the weights (train.py --dry_run=True)
