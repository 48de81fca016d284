"""Write docs/api.md from the docstrings of featlab's public names (``make docs``; a test keeps it in sync)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import featlab

HEADER = """# featlab Python API

Generated from the docstrings by `make docs` (`docs/make_api.py`); `tests/test_api.py` fails when this page is out of
date. Import everything from `featlab` (`import featlab; featlab.DeepFeatures(...)`). Labels: 0 = real, 1 = fake.
Errors a caller can fix raise `featlab.FeatlabError` with one line that names the parameter.
"""


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def render() -> str:
    parts = [HEADER]
    for name in sorted(n for n in featlab.__all__ if n not in ("CLASS_NAMES", "LABELS", "__version__")):
        obj = getattr(featlab, name)
        kind = "class" if inspect.isclass(obj) else "function"
        parts.append(f"## `featlab.{name}`\n\n*{kind}* `{name}{_signature(obj)}`\n")
        doc = inspect.getdoc(obj) or ""
        parts.append(doc.strip() + "\n")
        if inspect.isclass(obj):
            for method in ("fit", "transform", "predict", "predict_proba", "decision_function", "score", "score_paths",
                           "split_scores", "differentiable", "describe", "costs", "labels"):
                member = obj.__dict__.get(method)
                if member is not None and inspect.getdoc(member):
                    parts.append(f"- `{method}{_signature(member)}`: {inspect.getdoc(member).splitlines()[0]}")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    target = Path(argv[0] if argv else Path(__file__).with_name("api.md"))
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
