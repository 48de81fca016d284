"""Layer 7, service: ``featlab serve`` - detectors loaded once and scored over HTTP (see :mod:`featlab.service.app`)."""
