"""Fine-tuning on the runtime's torch model: data builders, SFT (full and LoRA), GRPO with chunk-wise rollout.

    minicpm train sft --config training/configs/smollm2_mcp_lora.yaml
    minicpm train rl  --config training/configs/tiny_rl.yaml
"""
