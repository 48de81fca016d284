"""The shared work folder where every command keeps features, models and reports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = "featlab-work"
WORKDIR_ENV = "FEATLAB_WORKDIR"


@dataclass(frozen=True)
class Workspace:
    """Fixed layout under one root folder.

    ``features/``  one embedding cache per extraction key (see :mod:`featlab.features.cache`)
    ``models/``    fitted SVM pipelines and CNN checkpoints, each with metadata
    ``reports/``   JSON reports and plots, read by ``featlab compare``
    ``faces/``     face detections by image content (``--faces detect``; :mod:`featlab.data.faces`)
    """

    root: Path

    @classmethod
    def resolve(cls, workdir: str | os.PathLike | None = None) -> Workspace:
        chosen = workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
        return cls(Path(chosen).expanduser().resolve())

    def ensure_writable(self) -> Workspace:
        """Create the folder if needed and prove it takes files; a clear error otherwise. Returns self."""
        import tempfile

        from featlab.core.errors import FeatlabError

        if self.root.exists() and not self.root.is_dir():
            raise FeatlabError(f"work folder {self.root} is a file, not a folder; choose another work folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as error:
            raise FeatlabError(f"work folder {self.root} is not writable ({error.strerror}); choose another work folder") from None
        return self

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def faces(self) -> Path:
        return self.root / "faces"
