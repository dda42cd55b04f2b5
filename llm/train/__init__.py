"""Training: the one loop, pretraining, fine-tuning and preference tuning."""
