"""Layer 2, data: images on disk become manifests.

dataset (layout discovery, robust decoding, manifests), groups (per-source / per-difficulty groups), perturb
(JPEG / blur / resize / noise perturbations and augmentations) and hashmemo (the stat-keyed sha256 memo).
"""
