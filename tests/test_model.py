import math
from pathlib import Path

import numpy as np
import pytest
import torch

from loglatent.config import ModelConfig
from loglatent.model import (
    CVAE,
    TrainingSet,
    kl_divergence,
    load_ensemble,
    reconstruction_loss,
    save_ensemble,
    score_kl,
    train_ensemble,
    unsettled_members,
)
from loglatent.stacked import train_stacked


def test_kl_closed_form_by_hand() -> None:
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    log_variance = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    expected_first = 0.5 * ((1 + 1 - 0 - 1) + (0 + 4 - math.log(4.0) - 1))
    assert kl_divergence(mean, log_variance).tolist() == pytest.approx([expected_first, 0.0])


def test_poisson_loss_by_hand() -> None:
    log_rate = torch.tensor([[0.0, math.log(2.0)]])
    counts = torch.tensor([[1.0, 3.0]])
    # sum(rate - count * log_rate) = (1 - 0) + (2 - 3 log 2)
    assert reconstruction_loss(log_rate, counts, "poisson").item() == pytest.approx(3 - 3 * math.log(2.0))


def test_condition_embedding_equals_one_hot_layer() -> None:
    torch.manual_seed(0)
    model = CVAE(event_count=3, encoder_units=[8, 4], latent_dim=2, dropout=0.0, minutes=6)
    torch.nn.init.normal_(model.encoder_condition.weight)
    inputs = torch.rand(2, 6)
    events = torch.tensor([0, 2])
    one_hot = torch.nn.functional.one_hot(events, 3).float()
    dense = torch.cat([model.encoder_input.weight, model.encoder_condition.weight.T], dim=1)
    expected = torch.cat([inputs, one_hot], dim=1) @ dense.T + model.encoder_input.bias
    actual = model.encoder_input(inputs) + model.encoder_condition(events)
    assert torch.allclose(actual, expected, atol=1e-6)


def small_set() -> TrainingSet:
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.2, size=(40, 1440)).astype(np.float32)
    counts[0] = 0
    events = np.arange(40) % 4
    weights = np.ones(40, dtype=np.float32)
    weights[0] = 30
    return TrainingSet(counts, events, weights)


SMALL = ModelConfig(epochs=2, min_steps=1, ensemble_size=2, encoder_units=[32, 16], latent_dim=3, device="cpu")


def test_scores_repeat_exactly() -> None:
    data = small_set()
    (model,), _ = train_stacked(data, 4, SMALL, [1], torch.device("cpu"))
    first = score_kl(model, data.counts, data.events, torch.device("cpu"))
    second = score_kl(model, data.counts, data.events, torch.device("cpu"))
    assert np.array_equal(first, second)
    assert np.all(first >= 0)


def test_same_seed_same_model() -> None:
    data = small_set()
    _, losses_a = train_stacked(data, 4, SMALL, [3, 4], torch.device("cpu"))
    _, losses_b = train_stacked(data, 4, SMALL, [3, 4], torch.device("cpu"))
    _, losses_c = train_stacked(data, 4, SMALL, [5, 6], torch.device("cpu"))
    assert losses_a == losses_b
    assert losses_a != losses_c


def test_ensemble_round_trip(tmp_path: Path) -> None:
    data = small_set()
    vocabulary = [("r1", 1), ("r1", 2), ("r2", 1), ("r2", 7)]
    ensemble = train_ensemble(data, vocabulary, "2024-01-01", "2024-02-09", SMALL)
    folder = save_ensemble(ensemble, tmp_path)
    loaded = load_ensemble(folder)

    assert loaded.vocabulary == vocabulary
    assert loaded.metadata["seeds"] == [0, 1]
    assert loaded.metadata["train_first_day"] == "2024-01-01"
    assert "torch" in loaded.metadata["libraries"]
    assert len(loaded.metadata["final_loss"]) == 2
    for original, restored in zip(ensemble.members, loaded.members):
        before = score_kl(original, data.counts, data.events, torch.device("cpu"))
        after = score_kl(restored, data.counts, data.events, torch.device("cpu"))
        assert np.array_equal(before, after)


def test_small_data_runs_min_steps() -> None:
    data = small_set()  # 40 distinct rows (the silent row weighs 30, under the 32 that splits a row): one step an epoch
    settings = SMALL.model_copy(update={"epochs": 2, "min_steps": 5})
    _, losses = train_stacked(data, 4, settings, [0], torch.device("cpu"))
    assert len(losses[0]) == 5


def test_collapsed_model_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    data = small_set()
    untrained = SMALL.model_copy(update={"epochs": 1, "min_steps": 1, "ensemble_size": 1, "learning_rate": 1e-9})
    with caplog.at_level("WARNING", logger="loglatent.model"):
        ensemble = train_ensemble(data, [("r1", 1), ("r1", 2), ("r2", 1), ("r2", 7)], "2024-01-01", "2024-02-09", untrained)
    assert ensemble.metadata["kl_range"][0] < 0.1
    assert "raise model.epochs or model.min_steps" in caplog.text


def test_unsettled_members_are_loss_outliers() -> None:
    assert unsettled_members([182.0, 181.2, 396.3, 183.0]) == [2]
    assert unsettled_members([182.0, 181.2, 183.0, 184.9]) == []
    assert unsettled_members([182.0, 400.0, 410.0, 181.0, 183.0]) == [1, 2]
    # Two members are too few to tell which one is off.
    assert unsettled_members([100.0, 400.0]) == []
