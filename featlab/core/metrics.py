"""Binary detection metrics with fake (label 1) as the positive class."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from featlab import CLASS_NAMES


def equal_error_rate(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Equal error rate (where false-positive rate = false-negative rate) and its threshold.

    The ROC curve is interpolated linearly between the two points where FNR - FPR changes
    sign, so the EER is exact for step curves. Returns ``(nan, nan)`` when only one class
    is present.
    """
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan"), float("nan")
    fpr, tpr, thresholds = skm.roc_curve(y_true, score, drop_intermediate=False)
    fnr = 1.0 - tpr
    gap = fnr - fpr  # starts at 1 (threshold +inf), ends at -1
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0]), float(thresholds[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    return float(eer), float(thresholds[i])


#: How every ROC-AUC interval is computed (recorded beside it in reports).
CI_LEVEL, CI_RESAMPLES, CI_SEED = 0.95, 1000, 0
CI_METHOD = f"stratified bootstrap, {CI_RESAMPLES} resamples, seed {CI_SEED}, percentile {CI_LEVEL:.0%} interval"


def roc_auc_interval(y_true: np.ndarray, score: np.ndarray, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                     seed: int = CI_SEED) -> list[float] | None:
    """A ``level`` confidence interval of the ROC-AUC: [low, high] by stratified bootstrap (reals and fakes
    resampled separately, so every resample keeps the class counts), percentile method, seeded.

    Vectorised: each resample's AUC is the Mann-Whitney statistic from average ranks (ties count one half),
    exactly ``roc_auc_score`` of that resample. ``None`` when one class is missing.
    """
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    positives, negatives = score[y_true == 1], score[y_true == 0]
    n1, n0 = len(positives), len(negatives)
    if not n1 or not n0:
        return None
    rng = np.random.default_rng(seed)
    aucs = []
    chunk = max(1, 4_000_000 // (n1 + n0))  # bounded memory for large sets
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        both = np.concatenate([positives[rng.integers(0, n1, (b, n1))], negatives[rng.integers(0, n0, (b, n0))]], axis=1)
        ranks = rankdata(both, axis=1)
        aucs.append((ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0))
    low, high = np.quantile(np.concatenate(aucs), [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def stratified_resamples(strata: np.ndarray, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> np.ndarray:
    """Bootstrap row indices, shape (resamples, n): each stratum's members drawn with replacement, its count kept.

    Column ``j`` of every resample holds a member of row ``j``'s stratum, so a subset of columns (one source, one
    class) is the same subset in every resample. Draw once and score several models on the same resamples for a
    *paired* comparison (:func:`resampled_roc_auc`)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(strata)), dtype=np.int64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        out[:, members] = members[rng.integers(0, len(members), (resamples, len(members)))]
    return out


def resampled_roc_auc(y_true: np.ndarray, score: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The ROC-AUC of ``score`` on each row of ``indices`` (from :func:`stratified_resamples`, stratified by at
    least the label so that each row holds both classes): the Mann-Whitney statistic from average ranks."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(int)[indices]
    ranks = rankdata(np.asarray(score, dtype=float)[indices], axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    if (n1 == 0).any() or (n0 == 0).any():
        raise ValueError("every resample must hold both classes: stratify by the label")
    return ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Every metric of the common report.

    Parameters
    ----------
    y_true : 0 = real, 1 = fake.
    score : higher means more likely fake (decision value, logit or probability).
    threshold : ``score >= threshold`` is predicted fake.

    Returns
    -------
    dict with accuracy, precision, recall, f1, roc_auc and its 95 % interval (``roc_auc_ci``, see
    :func:`roc_auc_interval`), average_precision, eer, eer_threshold, per_class_accuracy, confusion_matrix (rows =
    true real/fake, columns = predicted real/fake), threshold and counts. Metrics undefined for the data are ``None``.
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if y_true.shape != score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and score {score.shape} must be 1-D of the same length")
    y_pred = (score >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    cm = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    per_class = {
        name: (float(cm[k, k] / cm[k].sum()) if cm[k].sum() else None) for k, name in enumerate(CLASS_NAMES)
    }
    eer, eer_threshold = equal_error_rate(y_true, score)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, score)) if both else None,
        "roc_auc_ci": roc_auc_interval(y_true, score) if both else None,
        "roc_auc_ci_method": CI_METHOD,
        "average_precision": float(skm.average_precision_score(y_true, score)) if both else None,
        "eer": eer if both else None,
        "eer_threshold": eer_threshold if both else None,
        "per_class_accuracy": per_class,
        "real_accuracy": per_class["real"],
        "fake_accuracy": per_class["fake"],
        **best_threshold_accuracy(y_true, score),
        "confusion_matrix": cm.tolist(),
        "threshold": float(threshold),
        "n": int(len(y_true)),
        "n_real": int((y_true == 0).sum()),
        "n_fake": int((y_true == 1).sum()),
        "notes": [] if both else [
            f"one class only ({'fake' if (y_true == 1).all() else 'real'} images): ROC-AUC, AP and EER are undefined "
            "and left out; read the accuracy of that class (recall for fakes) at the model's threshold"],
    }


def best_threshold_accuracy(y_true: np.ndarray, score: np.ndarray) -> dict:
    """The highest accuracy any threshold reaches on these labels, and that threshold.

    An **oracle** figure (the threshold is chosen on the evaluation labels themselves), reported
    as the literature does to separate ranking quality from calibration; never a model's accuracy.
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if len(np.unique(y_true)) < 2:
        return {"best_threshold_accuracy_oracle": None, "best_threshold_oracle": None}
    order = np.argsort(-score, kind="stable")
    s, y = score[order], y_true[order]
    # Predict fake for the top k scores, k = 0..n; only cut between distinct scores.
    fakes_above = np.r_[0, np.cumsum(y)]
    reals_above = np.r_[0, np.cumsum(1 - y)]
    correct = fakes_above + (reals_above[-1] - reals_above)
    valid = np.r_[True, s[1:] != s[:-1], True]
    k = int(np.argmax(np.where(valid, correct, -1)))
    threshold = float(s[k - 1]) if k > 0 else float(s[0]) + 1.0
    return {"best_threshold_accuracy_oracle": float(correct[k] / len(y)), "best_threshold_oracle": threshold}


def group_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float, groups: list[list[str]]) -> list[dict]:
    """Metrics per group of images (see :mod:`featlab.data.groups`), one dict per group, sorted by name.

    A group holding both classes gets ROC-AUC, AP, EER and accuracies on its own images. A group
    holding one class only (e.g. the fakes of one difficulty) is scored against **all** real images
    of the evaluation set for ROC-AUC and AP (``scored_against`` says so), and by its accuracy at
    the threshold (its recall when it holds fakes).
    """
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    names = sorted({name for names in groups for name in names})
    rows = []
    for name in names:
        member = np.array([name in g for g in groups], dtype=bool)
        y, s = y_true[member], score[member]
        correct = (s >= threshold).astype(int) == y
        row = {"group": name, "n": int(member.sum()), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
               "accuracy": float(correct.mean())}
        if len(np.unique(y)) == 2:
            eer, _ = equal_error_rate(y, s)
            row.update(roc_auc=float(skm.roc_auc_score(y, s)), roc_auc_ci=roc_auc_interval(y, s),
                       average_precision=float(skm.average_precision_score(y, s)),
                       eer=eer, real_accuracy=float(correct[y == 0].mean()), fake_accuracy=float(correct[y == 1].mean()),
                       scored_against="its own images")
        elif (y == 1).all() and (y_true == 0).any():
            reals = y_true == 0
            y_vs = np.r_[np.zeros(int(reals.sum()), dtype=int), y]
            s_vs = np.r_[score[reals], s]
            row.update(roc_auc=float(skm.roc_auc_score(y_vs, s_vs)), roc_auc_ci=roc_auc_interval(y_vs, s_vs),
                       average_precision=float(skm.average_precision_score(y_vs, s_vs)), eer=None,
                       real_accuracy=None, fake_accuracy=row["accuracy"],
                       scored_against=f"all {int(reals.sum())} real images of the evaluation set (one-class group)")
        else:
            row.update(roc_auc=None, roc_auc_ci=None, average_precision=None, eer=None,
                       real_accuracy=row["accuracy"] if (y == 0).all() else None, fake_accuracy=None,
                       scored_against="accuracy only (one-class group)")
        rows.append(row)
    return rows


def curve_points(y_true: np.ndarray, score: np.ndarray, threshold: float, max_points: int = 200) -> dict | None:
    """ROC and PR curves (at most ``max_points`` each) and the operating point at ``threshold``,
    stored in reports so that comparison pages overlay curves without re-running any model."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if len(np.unique(y_true)) < 2:
        return None
    fpr, tpr, _ = skm.roc_curve(y_true, score)
    precision, recall, _ = skm.precision_recall_curve(y_true, score)

    def thin(*arrays):
        keep = np.unique(np.linspace(0, len(arrays[0]) - 1, min(max_points, len(arrays[0]))).round().astype(int))
        return [np.round(a[keep], 5).tolist() for a in arrays]

    predicted = score >= threshold
    tp = int((predicted & (y_true == 1)).sum())
    fp = int((predicted & (y_true == 0)).sum())
    roc_fpr, roc_tpr = thin(fpr, tpr)
    pr_recall, pr_precision = thin(recall, precision)
    return {
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
        "pr": {"recall": pr_recall, "precision": pr_precision},
        "operating_point": {"fpr": fp / max(1, int((y_true == 0).sum())), "tpr": tp / max(1, int((y_true == 1).sum())),
                            "precision": tp / max(1, tp + fp)},
    }
