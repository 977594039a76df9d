"""Index stage: batch-embed the catalog with the item tower, build/load/query Faiss indexes."""
