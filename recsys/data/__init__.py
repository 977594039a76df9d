"""Data stage: sources, validation, sequences, synthetic data, adapters for public data sets."""
