"""Offline evaluation: full-ranking metrics and the baselines a fine-tuned encoder must beat."""
