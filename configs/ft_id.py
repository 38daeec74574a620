# PMC-LLaMA's in-domain fine-tuning: PubMedQA (PQA-A, 211k) + MedMCQA train (183k), tested on PubMedQA's 500 test
# ids and MedMCQA dev (in-domain) and USMLE test (out-of-domain). Max length 512, AdamW 2e-5, batch 128, 3 epochs.
#   torchrun --nproc_per_node=8 finetune_qa.py configs/ft_id.py                # full fine-tuning
#   torchrun --nproc_per_node=8 finetune_qa.py configs/ft_id.py --lora=True    # LoRA, PEFT defaults (r=8, alpha=8,
#                                                                             # dropout 0, q_proj + v_proj)
init_from = "out/pmc_llama_7b/hf"  # the continued-pre-trained model (or an HF LLaMA folder for the baseline)
model_preset = "llama-7b"  # its shape, for the dry run (finetune_qa.py --dry_run=True) without the weights
out_dir = "out/ft_id"
pubmedqa_train = "data/pubmedqa/ori_pqaa.json"
pubmedqa_split = "all"  # PQA-A has no test ids
medmcqa_train = "data/medmcqa/train.json"
medmcqa_cop_base = 1  # the raw release
block_size = 512
micro_batch_size = 4
global_batch_size = 128
epochs = 3.0
learning_rate = 2e-5
min_lr = 2e-6
warmup_iters = 100
dtype = "bfloat16"
activation_checkpointing = True
ckpt_interval = 1000
log_interval = 10
lora = False
