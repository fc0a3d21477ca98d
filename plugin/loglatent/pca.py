"""The PCA baseline: reconstruction error outside the normal subspace of the data points.

The principal components of all data points (``log1p`` of the 1,440 minute counts, as the CVAE
reads them) are split into a normal subspace, the leading components that together explain at
least ``coverage`` of the variance, and the residual subspace. A data point's score is its
squared distance from the normal subspace: what the normal components cannot reconstruct. The
same per-event DBSCAN rule as for the CVAE's KL values then turns scores into anomalies.

Distinct rows carry weights (how many event-days each stands for), so the fit works on the
weighted covariance instead of repeating rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loglatent.model import model_inputs


@dataclass(frozen=True)
class PCAModel:
    """A fitted normal subspace: ``components_`` is (k x 1440) with orthonormal rows."""

    mean_: np.ndarray
    components_: np.ndarray
    explained_variance_ratio_: np.ndarray
    coverage: float


def fit_pca(counts: np.ndarray, weights: np.ndarray | None = None, coverage: float = 0.9) -> PCAModel:
    """Fit the normal subspace to (rows x 1440) minute counts, each row standing for ``weights[i]`` data points."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    inputs = model_inputs(counts).numpy().astype(np.float64)
    weights = np.ones(len(inputs)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    mean = weights @ inputs / total
    centred = inputs - mean
    covariance = (centred * weights[:, None]).T @ centred / total
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1]
    variances, vectors = np.clip(variances[order], 0, None), vectors[:, order]
    ratio = variances / variances.sum() if variances.sum() > 0 else np.zeros_like(variances)
    # The smallest number of leading components whose share of the variance reaches coverage.
    component_count = int(np.searchsorted(np.cumsum(ratio), coverage - 1e-12) + 1)
    component_count = min(max(component_count, 1), len(ratio))
    return PCAModel(mean, vectors[:, :component_count].T.copy(), ratio[:component_count], coverage)


def reconstruction_error(model: PCAModel, counts: np.ndarray) -> np.ndarray:
    """Return each row's squared distance from the normal subspace."""
    centred = model_inputs(counts).numpy().astype(np.float64) - model.mean_
    projected = centred @ model.components_.T @ model.components_
    return np.sum((centred - projected) ** 2, axis=1)


def to_arrays(model: PCAModel) -> dict[str, np.ndarray]:
    """Return ``model`` as named arrays, for saving beside the CVAE members."""
    return {
        "pca_mean": model.mean_,
        "pca_components": model.components_,
        "pca_explained_variance_ratio": model.explained_variance_ratio_,
        "pca_coverage": np.array([model.coverage]),
    }


def from_arrays(arrays: dict[str, np.ndarray]) -> PCAModel | None:
    """Return the model saved by ``to_arrays``, or None when ``arrays`` has none."""
    if "pca_components" not in arrays:
        return None
    return PCAModel(
        arrays["pca_mean"], arrays["pca_components"], arrays["pca_explained_variance_ratio"],
        float(arrays["pca_coverage"][0]),
    )
