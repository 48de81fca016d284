"""Layer 6, analysis (beside evaluation, independent of it): clustering of embeddings and latents, 2-D maps."""
