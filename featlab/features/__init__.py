"""Layer 3, features: pretrained backbones turn images into embeddings, cached on disk.

specs (preprocessing and registry types), backbones (the registry), opennsfw (the offline ResNet-50), recipe
(multi-layer pooling, views, flip), runtime (device, precision, decoding into batches, pixels -> score),
extractor (a built feature extractor), cache (the content-addressed embedding cache), extract (extraction into
the cache) and distributed (the same on Ray Data).
"""
