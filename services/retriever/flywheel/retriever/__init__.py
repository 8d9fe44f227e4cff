"""Flywheel retriever: documents, their chunks and vectors, and hybrid retrieval per tenant and collection."""
