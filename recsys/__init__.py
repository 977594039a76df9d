"""recsys: search and recommendations from fine-tuned transformer encoders on Ray."""

__version__ = "0.1.0"
