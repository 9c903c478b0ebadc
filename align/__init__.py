"""Stage 2: projection heads trained on cached tokens."""
