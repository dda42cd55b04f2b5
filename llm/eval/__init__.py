"""Evaluation: loss on a text, task and preference scoring, and the view inside a model."""
