"""Classification probes of `avfeat eval --labels`: kNN and a linear probe on the heads'
embeddings, cross-validated with folds that never split a video, scored by top-1 accuracy
(single-label) or macro mAP (multi-label).

scikit-learn does the learning: ``StratifiedGroupKFold`` deals the folds,
``KNeighborsClassifier`` votes (cosine, with this module's vote weights),
``LogisticRegression`` (L-BFGS) is the probe and ``average_precision_score`` scores mAP. It is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np

KNN_VOTES = ("weighted", "majority")
KNN_TEMPERATURE = 0.07  # weighted vote: each neighbour counts exp(cosine / T), as in DINO's kNN protocol
SMALL_PROBLEM = 1 << 20  # feature values under which classification runs on one thread
PROBE_MAX_ITER = 200  # L-BFGS iterations of the linear probe
PROBE_TOL = 1e-7  # L-BFGS stops when no gradient component exceeds this


class LabelSet(Protocol):
    """What classification reads of :class:`avfeat.evaluation.Labels`."""

    labels: dict[str, tuple[str, ...]]  # video id → its labels (never empty)

    @property
    def classes(self) -> list[str]: ...

    @property
    def multi_label(self) -> bool: ...


def video_folds(groups: np.ndarray, strata: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """The cross-validation fold of each sample, such that all samples of one group (video)
    share one fold: a video's windows never sit on both sides of a split (neighbouring windows
    of one video are near copies, and would inflate the score).

    ``min(folds, groups)`` folds. With ``strata`` (one class key per sample), scikit-learn's
    ``StratifiedGroupKFold`` deals the shuffled groups so that each fold gets a share of every
    class; without, or where no class has as many samples as there are folds,
    ``GroupKFold`` deals them evenly. ``seed`` fixes the shuffle.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    n_splits = min(folds, len(np.unique(groups)))
    fold = np.zeros(len(groups), dtype=np.int64)
    if n_splits < 2:
        return fold
    stratified = strata is not None and np.unique(np.asarray(strata), return_counts=True)[1].max() >= n_splits
    if stratified:
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for f, (_, test) in enumerate(splitter.split(groups, strata if stratified else None, groups)):
            fold[test] = f
    return fold


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, vote: str) -> np.ndarray:
    """(test, classes) vote shares of each test vector's k nearest training vectors by cosine.
    ``majority``: one vote per neighbour, ties broken by similarity (the tie-break adds less
    than one vote); ``weighted``: exp(cosine / 0.07). ``train_y`` is one 0/1 column per class;
    a sample with several labels votes for each."""
    from sklearn.neighbors import KNeighborsClassifier

    k = min(k, len(train_x))
    if vote == "weighted":
        def weights(distance):
            return np.exp((1 - distance) / KNN_TEMPERATURE)
    else:
        def weights(distance):
            return 1 + (1 - distance) / (k + 1)

    knn = KNeighborsClassifier(n_neighbors=k, weights=weights, algorithm="brute", metric="cosine")
    knn.fit(train_x, train_y.astype(np.int64))
    # One output per class column (multi-output): each gives the vote share of 0 and of 1.
    return np.stack([_share_of_one(classes, proba) for classes, proba in zip(knn.classes_, knn.predict_proba(test_x))], axis=1)


def _share_of_one(classes: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The probability of the class ``1`` of one binary output (0 where training had no 1)."""
    hit = np.flatnonzero(classes == 1)
    return proba[:, hit[0]] if len(hit) else np.zeros(len(proba))


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, multi_label: bool, l2: float,
                 seed: int, max_iter: int = PROBE_MAX_ITER) -> np.ndarray:
    """(test, classes) probabilities of a logistic regression fitted on the training fold:
    features standardised with the training fold's statistics, L-BFGS on the mean
    cross-entropy (one sigmoid per class when ``multi_label``, averaged over samples and
    classes) + ``l2``·‖W‖² (the bias is not penalised); a convex problem, so the result
    depends on the data only.

    scikit-learn's objective is ``C``·Σ loss + ½‖w‖², so ``C`` is set to give that same
    ``l2``: 1 / (2·n·l2) for a softmax over three or more classes; 1 / (n·l2) for two (one
    sigmoid, whose weight vector is the difference of two softmax rows: ‖W‖² = ½‖w‖² at the
    optimum); 1 / (2·n·classes·l2) per class of a multi-label probe.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.astype(np.float64))
    x, test = scaler.transform(train_x.astype(np.float64)), scaler.transform(test_x.astype(np.float64))
    n, classes = train_y.shape
    out = np.zeros((len(test_x), classes))
    # Each fit is one (target, C) pair: one per class column when multi-label, else one softmax.
    if multi_label:
        fits = [(train_y[:, c], [c], 2 * n * classes * l2) for c in range(classes)]
    else:
        target = train_y.argmax(1)
        present = np.unique(target)
        fits = [(target, present, (1 if len(present) == 2 else 2) * n * l2)]
    for y, columns, inverse_c in fits:
        if len(np.unique(y)) < 2:  # one class in the training fold: it is the answer
            out[:, columns] = y[0] if multi_label else 1
            continue
        model = LogisticRegression(C=1 / inverse_c if inverse_c > 0 else np.inf, max_iter=max_iter, tol=PROBE_TOL, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds the work, as documented
            model.fit(x, y)
        proba = model.predict_proba(test)
        out[:, columns] = proba[:, 1:] if multi_label else proba
    return out


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive (tied scores count as one
    threshold, as scikit-learn's ``average_precision_score`` has them)."""
    from sklearn.metrics import average_precision_score

    scored = truth.sum(0) > 0
    if not scored.any():
        return float("nan")
    return float(average_precision_score(truth[:, scored], scores[:, scored], average="macro"))


def _score(scores: np.ndarray, truth: np.ndarray, multi_label: bool) -> float:
    if multi_label:
        return mean_average_precision(scores, truth)
    return float(np.mean(scores.argmax(1) == truth.argmax(1)))


def cross_validate(x: np.ndarray, truth: np.ndarray, fold: np.ndarray, multi_label: bool,
                   knn_k: int, knn_vote: str, probe_l2: float, seed: int) -> dict[str, float]:
    """kNN and linear-probe scores of out-of-fold predictions (pooled over the folds)."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    x = np.ascontiguousarray(x, np.float32)
    knn, probe = np.zeros(truth.shape), np.zeros(truth.shape)
    # Tiny kernels: thread hand-offs cost more than the work (many times slower on a busy 2-core CPU).
    with threadpool_limits(1 if x.size < SMALL_PROBLEM else None):
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            if not train.any():
                continue
            knn[test] = knn_scores(x[train], truth[train], x[test], knn_k, knn_vote)
            probe[test] = probe_scores(x[train], truth[train], x[test], multi_label, probe_l2, seed)
    return {"knn": round(_score(knn, truth, multi_label), 4), "linear_probe": round(_score(probe, truth, multi_label), 4)}


def classification(embedded, labels: LabelSet, folds: int = 5, knn_k: int = 20, knn_vote: str = "weighted",
                   probe_l2: float = 1e-3, seed: int = 0) -> dict:
    """kNN and linear-probe classification of the labelled videos from the heads' embeddings,
    per modality, at the video level (mean of a video's window vectors) and the window level
    (each window carries its video's labels), K-fold cross-validated with folds by video: one
    dealing of the videos into folds serves both levels.

    Every labelled video counts, not only the checkpoint's held-out ones: the heads never saw a
    label, and the held-out split is usually too small for K folds. Top-1 accuracy for
    single-label data; macro mAP when some video has several labels.
    """
    from avfeat.index.export import video_vectors

    classes = labels.classes
    multi = labels.multi_label
    result: dict[str, Any] = {
        "metric": "mAP" if multi else "accuracy", "classes": len(classes), "folds": folds, "seed": seed,
        "knn_k": knn_k, "knn_vote": knn_vote, "probe_l2": probe_l2,
    }
    window_ids = embedded.video_ids
    keep = np.array([vid in labels.labels for vid in window_ids], dtype=bool)
    videos = list(dict.fromkeys(window_ids[keep].tolist()))
    result["no_window"] = len(set(labels.labels) - set(videos))  # labelled, but shorter than one window: not classified
    if len(classes) < 2 or len(videos) < 2:
        result["skipped"] = f"needs two classes and two labelled videos with a window (found {len(classes)} classes, {len(videos)} videos)"
        return result
    column = {name: c for c, name in enumerate(classes)}
    truth_of = {}
    for vid in videos:
        row = np.zeros(len(classes), np.float32)
        row[[column[label] for label in labels.labels[vid]]] = 1
        truth_of[vid] = row
    windows = window_ids[keep].astype(str)
    window_fold = video_folds(windows, np.array([",".join(labels.labels[vid]) for vid in windows]), folds, seed)
    fold_of = dict(zip(windows.tolist(), window_fold.tolist()))
    for level in ("video", "window"):
        if level == "video":
            groups = np.array(videos, dtype=object)
            features = {m: video_vectors(window_ids[keep], embedded.vectors[m][keep])[1] for m in ("audio", "visual")}
        else:
            groups = window_ids[keep]
            features = {m: embedded.vectors[m][keep] for m in ("audio", "visual")}
        truth = np.stack([truth_of[vid] for vid in groups])
        fold = np.array([fold_of[vid] for vid in groups.astype(str)], dtype=np.int64)
        # Chance: always answering the most common class (accuracy), or the mean class prevalence (mAP).
        chance = float(truth.mean(0).mean()) if multi else float(truth.mean(0).max())
        result[level] = {"samples": len(groups), "chance": round(chance, 4)}
        for modality, x in features.items():
            result[level][modality] = cross_validate(x, truth, fold, multi, knn_k, knn_vote, probe_l2, seed)
    return result


def format_classification(result: dict) -> list[str]:
    metric = "top-1 accuracy" if result["metric"] == "accuracy" else "macro mAP"
    head = (f"classification   {metric}, {result['folds']}-fold cross-validation by video (seed {result['seed']}); "
            f"kNN k={result['knn_k']} {result['knn_vote']} cosine; linear probe L2 {result['probe_l2']:g}")
    if "skipped" in result:
        return [head, f"                 skipped: {result['skipped']}"]
    lines = [head, "level    samples  chance  audio kNN  audio probe  visual kNN  visual probe"]
    for level in ("video", "window"):
        r = result[level]
        lines.append(f"{level:<8} {r['samples']:<8} {r['chance']:<7.3f} {r['audio']['knn']:<10.3f} {r['audio']['linear_probe']:<12.3f} "
                     f"{r['visual']['knn']:<11.3f} {r['visual']['linear_probe']:.3f}")
    if result.get("no_window"):
        lines.append(f"                 {result['no_window']} labelled videos are shorter than one window and not classified")
    return lines
