"""featlab: tell real face photos from DeepFake / GAN-made / edited ones.

Data flow, one module per stage (imports only run "down" this list)::

    errors, versions      shared helpers
    data                  dataset discovery, manifest, robust image decoding
    backbones             registry of pretrained feature extractors + their preprocessing
    opennsfw              the offline ResNet-50 (Yahoo open_nsfw) backbone
    cache, extract        batched extraction into an on-disk embedding cache
    classical             StandardScaler -> PCA -> SVM pipeline, model files with hash checks
    cnn                   fine-tuned CNN baselines
    metrics, report       honest metrics, JSON reports, plots, comparison tables
    workspace, cli        the shared work folder and the thin typer CLI
"""

__version__ = "0.1.0"

#: Class mapping used everywhere (fake is the positive class).
LABELS: dict[str, int] = {"real": 0, "fake": 1}
CLASS_NAMES: tuple[str, ...] = ("real", "fake")
