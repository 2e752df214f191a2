"""Memorisation check: are generated volumes closer to the training volumes than to unseen real ones?

Distances are voxel-wise RMS differences in HU, with every volume clipped to the generating model's HU range
(``window``: its mapping's :meth:`~prdit.data.intensity.IntensityMapping.hu_range`, read from its checkpoint or
the samples' sidecars), so real values the model cannot produce (air below -1000 HU) do not count. A model that copies its training data puts its samples next to training volumes:
their nearest-neighbour (NN) distance to the training set falls below their NN distance to a held-out set of the
same size. NN distances shrink as a reference set grows, so the training set is compared in random subsets of
the held-out set's size, never whole.

Three numbers (see :func:`distance_statistics`): the samples' median NN distance to the training set over that
of unseen real volumes (``nn_ratio``), the same at equal reference-set sizes (``equal_size_ratio``), and the
fraction of samples closer to the training set than 95% of unseen real volumes are (``copies``). Ratios near 1 or
above and a copy fraction near 5% mean no sign of memorisation. The floor is the same statistics for real unseen
volumes (half of the held-out set as queries, the other half as the held-out reference).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

COPY_QUANTILE = 0.05  # a sample "looks copied" when closer to the training set than 95% of unseen real volumes are


Window = tuple[float, float]


def _flat(volumes: np.ndarray, window: Window) -> np.ndarray:
    return np.clip(np.asarray(volumes, dtype=np.float64), *window).reshape(len(volumes), -1)


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """RMS HU distance (inside ``window``) of each query volume to its nearest reference volume, and its index."""
    q, r = _flat(queries, window), _flat(references, window)
    squared = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * q @ r.T
    distances = np.sqrt(np.maximum(squared, 0.0) / q.shape[1])
    nearest = distances.argmin(axis=1)
    return distances[np.arange(len(q)), nearest], nearest


def distance_statistics(
    queries: np.ndarray, train: np.ndarray, heldout: np.ndarray, window: Window, rng: np.random.Generator, subsets: int,
) -> dict:
    """How close ``queries`` sit to the training set, against unseen real volumes (``heldout``).

    ``nn_ratio``: median NN distance of the queries to the training set / that of the held-out volumes (same
    reference set, so comparable; a blurry generator scores above 1 as well, so only values below 1 mean something).
    ``equal_size_ratio``: median NN distance of the queries to random training subsets of the held-out set's
    size / to the held-out set (independent of the generator's quality), with the one-sided Mann-Whitney
    p-value of "closer to the training data".
    """
    to_train, _ = nearest_neighbours(queries, train, window)
    heldout_to_train, _ = nearest_neighbours(heldout, train, window)
    to_heldout, _ = nearest_neighbours(queries, heldout, window)
    m = len(heldout)
    to_subsets = np.stack([nearest_neighbours(queries, train[rng.choice(len(train), m, replace=False)], window)[0]
                           for _ in range(subsets)])
    return {
        "nn_ratio": float(np.median(to_train) / np.median(heldout_to_train)),
        "median_to_train_hu": float(np.median(to_train)),
        "heldout_median_to_train_hu": float(np.median(heldout_to_train)),
        "equal_size_ratio": float(np.median(to_subsets, axis=1).mean() / np.median(to_heldout)),
        "median_to_heldout_hu": float(np.median(to_heldout)),
        "p_closer_to_train": float(mannwhitneyu(to_subsets.mean(axis=0), to_heldout, alternative="less").pvalue),
    }


def memorisation_report(
    samples: np.ndarray, train: np.ndarray, heldout: np.ndarray, window: Window, seed: int = 0, subsets: int = 20, closest: int = 5,
    sample_names: list[str] | None = None, train_names: list[str] | None = None,
) -> dict:
    """Nearest-neighbour distances of ``samples`` to ``train`` vs ``heldout`` (HU sets ``[N, D, H, W]``), inside the
    generating model's HU range ``window``.

    Needs fewer held-out than training volumes (equal-size subsets) and at least 4 held-out volumes (the floor
    splits them in halves).
    """
    if not 4 <= len(heldout) <= len(train):
        raise ValueError(f"need 4 <= held-out volumes <= training volumes, got {len(heldout)} held-out and {len(train)} training")
    rng = np.random.default_rng(seed)
    result: dict = {"samples": distance_statistics(samples, train, heldout, window, rng, subsets)}
    order = rng.permutation(len(heldout))
    half_a, half_b = heldout[order[: len(heldout) // 2]], heldout[order[len(heldout) // 2 :]]
    result["floor"] = distance_statistics(half_a, train, half_b, window, rng, subsets)
    to_train, nearest = nearest_neighbours(samples, train, window)
    heldout_to_train, _ = nearest_neighbours(heldout, train, window)
    threshold = float(np.quantile(heldout_to_train, COPY_QUANTILE))
    result["copies"] = {
        "threshold_hu": threshold,
        "fraction_below": float((to_train < threshold).mean()),
        "expected_fraction": COPY_QUANTILE,
        "heldout_median_to_train_hu": float(np.median(heldout_to_train)),
    }
    sample_names = sample_names or [str(i) for i in range(len(samples))]
    train_names = train_names or [str(i) for i in range(len(train))]
    result["closest"] = [
        {"sample": sample_names[i], "train": train_names[nearest[i]], "distance_hu": float(to_train[i])}
        for i in np.argsort(to_train)[:closest]
    ]
    result["protocol"] = {
        "n_samples": len(samples), "n_train": len(train), "n_heldout": len(heldout), "train_subsets": subsets, "seed": seed,
        "distance": f"RMS voxel difference in HU after clipping to the model's {list(window)} HU",
        "window_hu": list(window),
        "nn_ratio": "median NN distance to the training set: samples / held-out volumes",
        "equal_size_ratio": "median NN distance to training subsets of the held-out size / median NN distance to the held-out set",
        "copies": f"fraction of samples closer to the training set than the {COPY_QUANTILE:.0%} quantile of held-out volumes' distances",
    }
    return result
