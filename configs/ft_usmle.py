# PMC-LLaMA's data-efficient scenario: fine-tune on MedQA-USMLE's own train split (10,178 questions), test on its
# 1,273-question test split.   torchrun --nproc_per_node=8 finetune_qa.py configs/ft_usmle.py [--lora=True]
init_from = "out/pmc_llama_7b/hf"
model_preset = "llama-7b"  # its shape, for the dry run (finetune_qa.py --dry_run=True) without the weights
out_dir = "out/ft_usmle"
usmle_train = "data/medqa_usmle/phrases_no_exclude_train.jsonl"  # data_clean/questions/US/4_options/
block_size = 512
micro_batch_size = 4
global_batch_size = 128
epochs = 3.0
learning_rate = 2e-5
min_lr = 2e-6
warmup_iters = 10
dtype = "bfloat16"
activation_checkpointing = True
log_interval = 5
lora = False
