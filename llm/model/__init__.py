"""The model: the transformer, LoRA, generation, checkpoints, and the Hugging Face format."""
