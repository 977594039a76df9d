"""Model parts: encoder wrappers and pooling, query/item towers, ranker, losses."""
