"""Stage 3: FAISS indexes, retrieval and synchronization search."""
