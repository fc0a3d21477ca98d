import numpy as np
from sklearn.decomposition import PCA

from loglatent.pca import fit_pca, reconstruction_error


def daily_rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros((60, 1440))
    rows[:, ::60] = 1  # an hourly job
    rows[:, 480:1080] += rng.poisson(0.05, size=(60, 600))  # working-hours noise
    return rows


def test_weighted_fit_equals_repeated_rows() -> None:
    rows = daily_rows(0)[:12]
    weights = np.arange(1, 13)
    model = fit_pca(rows, weights, coverage=0.8)
    reference = PCA().fit(np.log1p(np.repeat(rows, weights, axis=0)))

    component_count = len(model.components_)
    assert np.allclose(model.mean_, reference.mean_)
    assert np.allclose(model.explained_variance_ratio_, reference.explained_variance_ratio_[:component_count])
    assert np.cumsum(reference.explained_variance_ratio_)[component_count - 1] >= 0.8
    assert component_count == 1 or np.cumsum(reference.explained_variance_ratio_)[component_count - 2] < 0.8
    # Components agree up to sign.
    for ours, theirs in zip(model.components_, reference.components_[:component_count]):
        assert abs(abs(float(ours @ theirs)) - 1) < 1e-6


def test_unusual_day_has_larger_error() -> None:
    rows = daily_rows(1)
    odd = rows[0].copy()
    odd[::60] = 0  # the hourly job stopped
    odd[120:150] = 20  # and a flood
    model = fit_pca(rows, coverage=0.9)
    errors = reconstruction_error(model, np.vstack([rows, odd[None, :]]))
    assert errors[-1] > 5 * np.max(errors[:-1])


def test_full_coverage_reconstructs_training_rows() -> None:
    rows = daily_rows(2)[:10]
    model = fit_pca(rows, coverage=1.0)
    assert np.allclose(reconstruction_error(model, rows), 0, atol=1e-8)
