"""Layer 6, evaluation: scoring saved detectors on data, and what is built on that.

evaluate (reports on any split of any dataset, predict), robustness (perturbation sweeps), attack (adversarial
evaluation), explain (heatmaps and galleries), benchmark (the whole comparison in one call) and estimators
(scikit-learn-style estimators over the library).
"""
