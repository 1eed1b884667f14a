"""Vector search for collections under a condition: one FAISS index per (collection, condition)."""
