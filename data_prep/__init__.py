"""Dataset assembly for featlab (``featlab data build`` / ``featlab data synth``)."""
