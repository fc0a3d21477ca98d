"""The ensemble trained side by side computes what its members compute one by one."""

import logging

import numpy as np
import pytest
import torch

from loglatent.config import ModelConfig
from loglatent.model import CVAE, TrainingSet, reconstruction_loss, score_kl
from loglatent.stacked import (
    Kernels,
    StackedWeights,
    _DropoutBits,
    _forward,
    _ReluDropout,
    AdamSettings,
    batch_rows,
    compute_dtype,
    ensemble_kl,
    epoch_rows,
    train_stacked,
)

CPU = torch.device("cpu")


def members(count: int, events: int = 3, minutes: int = 1440) -> list[CVAE]:
    result = []
    for seed in range(count):
        torch.manual_seed(seed)
        member = CVAE(events, [16, 8, 4], latent_dim=3, dropout=0.3, minutes=minutes)
        for table in (member.encoder_condition, member.decoder_condition):
            torch.nn.init.normal_(table.weight)  # zero at start; make them count in the comparison
        result.append(member.eval())
    return result


def test_stack_and_write_back_round_trip() -> None:
    originals = members(3)
    stack = StackedWeights(originals, CPU)
    copies = members(3)
    for copy in copies:
        for parameter in copy.parameters():
            torch.nn.init.zeros_(parameter)
    stack.write_back(copies)
    for original, copy in zip(originals, copies):
        for (name, before), after in zip(original.state_dict().items(), copy.state_dict().values()):
            assert torch.equal(before, after), name


def test_stacked_forward_equals_each_member() -> None:
    ensemble = members(3, minutes=24)
    stack = StackedWeights(ensemble, CPU)
    rng = np.random.default_rng(1)
    counts = torch.as_tensor(rng.poisson(1.0, size=(3, 5, 24)), dtype=torch.float32)
    events = torch.as_tensor(rng.integers(0, 3, size=(3, 5)))
    noise = torch.randn(3, 5, 3)
    output, mean, log_variance = _forward(
        stack.view, stack.hidden_layers, torch.log1p(counts), (events + torch.arange(3)[:, None] * 3).reshape(-1),
        iter(()), 1.0, noise)
    for index, member in enumerate(ensemble):
        expected_mean, expected_log_variance = member.encode(torch.log1p(counts[index]), events[index])
        latent = expected_mean + noise[index] * torch.exp(0.5 * expected_log_variance)
        expected_output = member.decode(latent, events[index])
        assert torch.allclose(mean[index], expected_mean, atol=1e-5)
        assert torch.allclose(log_variance[index], expected_log_variance, atol=1e-5)
        assert torch.allclose(output[index], expected_output, atol=1e-4)


def test_ensemble_kl_equals_member_kl() -> None:
    ensemble = members(4, events=5)
    rng = np.random.default_rng(2)
    counts = rng.poisson(0.3, size=(50, 1440)).astype(np.float32)
    events = rng.integers(0, 5, size=50)
    stacked = ensemble_kl(ensemble, counts, events)
    assert stacked.shape == (4, 50)
    for index, member in enumerate(ensemble):
        assert np.allclose(stacked[index], score_kl(member, counts, events, CPU), rtol=1e-4, atol=1e-6)
    assert np.array_equal(stacked, ensemble_kl(ensemble, counts, events))


@pytest.mark.parametrize("compile_kernels", [False, True])
def test_reconstruction_gradient_equals_autograd(compile_kernels: bool) -> None:
    kernels = Kernels(compile_kernels)
    torch.manual_seed(0)
    output = (torch.randn(2, 6, 30) - 1).requires_grad_()
    counts = torch.poisson(torch.full((2, 6, 30), 0.7))
    counts[0, 0, 0] = 400.0
    output.data[1, 2, 3] = 25.0  # above the log-rate bound: no gradient there
    weights = torch.rand(2, 6)
    for likelihood, terms in (("poisson", kernels.poisson_terms), ("bernoulli", kernels.bernoulli_terms)):
        per_member, gradient = terms(output.detach(), counts, weights)
        expected = (reconstruction_loss(output, counts, likelihood) * weights).sum(dim=1)
        (expected_gradient,) = torch.autograd.grad(expected.sum(), output)
        assert torch.allclose(per_member, expected, rtol=1e-5), likelihood
        assert torch.allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-5), likelihood


def test_relu_dropout_gradient() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(3, 4, 5) > 0.3).to(torch.uint8)
    kernels = Kernels(False)
    assert torch.autograd.gradcheck(lambda value: _ReluDropout.apply(value, None, keep, 2.0, kernels), (x,))
    assert torch.autograd.gradcheck(
        lambda value, rows: _ReluDropout.apply(value, rows, keep, 2.0, kernels), (x, shift))


def test_dropout_masks_keep_the_configured_share() -> None:
    bits = _DropoutBits(seed=5, dropout=0.3, dtype=torch.float32, device=CPU)
    first, second = bits.masks([400_000, 100_000])
    values = torch.cat([first, second])
    assert first.numel() == 400_000
    assert second.numel() == 100_000
    assert first.dtype == torch.uint8
    assert torch.unique(values).tolist() == [0, 1]
    assert values.float().mean().item() == pytest.approx(0.7, abs=0.003)
    assert bits.scale == pytest.approx(1 / 0.7, rel=1e-4)
    # Unit means stay as they were without dropout.
    assert (values * bits.scale).mean().item() == pytest.approx(1.0, abs=0.005)
    assert not torch.equal(bits.masks([1000])[0], bits.masks([1000])[0])


def test_epoch_rows_split_heavy_rows_and_keep_weights() -> None:
    weights = np.array([1.0, 30.0, 8.0, 9.0])
    rows, row_weights = epoch_rows(weights, max_weight=8.0)
    assert rows.tolist() == [0, 1, 1, 1, 1, 2, 3, 3]
    assert row_weights.max() <= 8.0
    assert np.bincount(rows, weights=row_weights).tolist() == pytest.approx(weights.tolist())


def corpus_set() -> TrainingSet:
    """Two events: a quiet one with one burst day, and an hourly job; silent days repeated."""
    rng = np.random.default_rng(3)
    rows = [np.zeros(1440, dtype=np.float32)]
    hourly = np.zeros(1440, dtype=np.float32)
    hourly[5::60] = 2
    rows.append(hourly)
    for _ in range(30):
        noisy = hourly.copy()
        noisy[rng.integers(0, 1440, size=3)] += 1
        rows.append(noisy)
    burst = np.zeros(1440, dtype=np.float32)
    burst[600:640] = 20
    rows.append(burst)
    events = np.array([0, 1] + [1] * 30 + [0])
    weights = np.array([60, 20] + [1] * 30 + [1], dtype=np.float32)
    return TrainingSet(np.stack(rows), events, weights)


def test_batch_rows_average_batch_size_event_days() -> None:
    # 54,720 event-days in 29,208 rows: 1,024 event-days a step is 547 rows, 54 steps an epoch.
    assert batch_rows(29_208, 54_720, 1024) == 547
    # Rows of 32 event-days each: 1,024 event-days are 32 of them.
    assert batch_rows(100, 3_200, 1024) == 32
    assert batch_rows(100, 3_200, 16) == 1
    # A set smaller than a batch is one step.
    assert batch_rows(10, 50, 1024) == 10


def test_adam_settings_follow_the_square_root_rule() -> None:
    settings = ModelConfig(learning_rate=1e-3, learning_rate_batch=256)
    base = AdamSettings.scaled(settings, 256, 54_720)
    assert (base.learning_rate, base.beta1, base.beta2, base.eps) == pytest.approx((1e-3, 0.9, 0.999, 1e-8))
    four = AdamSettings.scaled(settings, 1024, 54_720)
    assert (four.learning_rate, four.beta1, four.beta2, four.eps) == pytest.approx((2e-3, 0.6, 0.996, 5e-9))
    half = AdamSettings.scaled(settings, 128, 54_720)
    assert (half.learning_rate, half.beta1) == pytest.approx((1e-3 / np.sqrt(2), 0.95))
    # A data set smaller than learning_rate_batch in one step trains as the plain settings would.
    whole = AdamSettings.scaled(settings, 100, 100)
    assert (whole.learning_rate, whole.beta1) == pytest.approx((1e-3, 0.9))
    # Smaller than learning_rate_batch, but in two steps: each is half the set.
    halves = AdamSettings.scaled(settings, 50, 100)
    assert (halves.learning_rate, halves.beta1) == pytest.approx((1e-3 / np.sqrt(2), 0.95))
    # Beyond 8 times, the settings stay those of 8 times.
    capped = AdamSettings.scaled(settings, 4096, 54_720)
    assert (capped.learning_rate, capped.beta1) == pytest.approx((1e-3 * np.sqrt(8), 0.2))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_and_separates_the_burst(precision: str) -> None:
    data = corpus_set()
    settings = ModelConfig(ensemble_size=3, epochs=1, min_steps=150, batch_size=56, precision=precision,
                           encoder_units=[64, 32], latent_dim=4, device="cpu")
    trained, losses = train_stacked(data, 2, settings, [0, 1, 2], CPU)
    assert len(losses) == 3
    # 34 entries (the silent row in two pieces) and 111 event-days: 56 event-days are 17 rows,
    # so 2 steps an epoch, and 75 epochs reach the 150 steps.
    assert len(losses[0]) == 75
    for member_losses in losses:
        assert member_losses[-1] < 0.5 * member_losses[0]
    kl = ensemble_kl(trained, data.counts, data.events)
    # Every member scores the burst day (last row) far from the same event's silent days (first row).
    # 0.3 nats is three times the range below which train reports a collapsed encoder.
    assert np.all(np.abs(kl[:, -1] - kl[:, 0]) > 0.3)


def test_bf16_is_used_only_where_supported() -> None:
    assert compute_dtype("fp32", CPU) == torch.float32
    assert compute_dtype("bf16", CPU) == torch.bfloat16
    assert compute_dtype("auto", CPU) in (torch.float32, torch.bfloat16)
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        assert compute_dtype("auto", CPU) == torch.float32


def test_failed_compile_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(function: object, **options: object) -> object:
        def call(*args: object) -> object:
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    kernels = Kernels(True)
    x = torch.tensor([-1.0, 2.0])
    keep = torch.tensor([1, 1], dtype=torch.uint8)
    with caplog.at_level(logging.WARNING, logger="loglatent.stacked"):
        assert kernels.relu_dropout(x, keep, 2.0).tolist() == [0.0, 4.0]
        assert kernels.relu_dropout(x, keep, 2.0).tolist() == [0.0, 4.0]
    warnings = [record for record in caplog.records if "torch.compile failed" in record.getMessage()]
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0].getMessage()
    assert "model.compile: false" in warnings[0].getMessage()


def test_compile_error_at_setup_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(function: object, **options: object) -> object:
        raise RuntimeError("Dynamo is not supported on this Python version")

    monkeypatch.setattr(torch, "compile", unsupported)
    kernels = Kernels(True)
    keep = torch.tensor([1, 0], dtype=torch.uint8)
    assert kernels.relu_dropout(torch.tensor([-1.0, 3.0]), keep, 2.0).tolist() == [0.0, 0.0]
    assert kernels.compile is False
