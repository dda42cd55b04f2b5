"""A from-scratch transformer library: tokenizer, corpus, model, trainer, fine-tuning, generation."""
