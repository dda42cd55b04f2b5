"""Data: reading text, tokenizers, corpus shards, the chat template, task and preference files, batches."""
