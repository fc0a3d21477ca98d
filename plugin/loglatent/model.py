"""The Conditional VAE of Otomo et al. (BIG-DAMA 2018) and its ensemble.

Input: a day's 1,440 minute counts, as ``log1p(count)``, and the event id as the condition. The
one-hot condition is implemented as an embedding added to the first layer of the encoder and of
the decoder, which is the same function as a dense layer on ``[x, one_hot(event)]`` at the cost of
one row lookup. The decoder returns one value per minute: the log-rate of a Poisson distribution
over the counts (``likelihood: poisson``) or the logit of a Bernoulli distribution over "any
message in this minute" (``likelihood: bernoulli``).

The score of a day is the KL divergence of q(z|x) from N(0, I), computed in closed form from the
encoder's mean and log-variance in evaluation mode (no dropout, no sampling), so a model scores
the same input the same way every time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loglatent.config import ModelConfig
from loglatent.errors import StateError
from loglatent.histograms import MINUTES_PER_DAY

log = logging.getLogger(__name__)

# When the KL values of all distinct training rows lie within this many nats of each other, the
# encoder has collapsed to the prior: its scores cannot tell days apart.
COLLAPSED_KL_RANGE = 0.1
COLLAPSE_CHECK_ROWS = 8192
# A member whose loss in the last epoch is more than this many times the median of the members
# has not settled, for example because its loss spiked late in training.
UNSETTLED_LOSS_FACTOR = 1.5
MAX_LOG_RATE = 20.0  # exp(20) is about 5e8 messages a minute: far above any real count


class CVAE(nn.Module):
    """Encoder and decoder conditioned on the event id.

    Parameters
    ----------
    event_count
        Size of the event vocabulary (the one-hot condition's length).
    encoder_units
        Hidden layer sizes of the encoder; the decoder mirrors them.
    """

    def __init__(
        self,
        event_count: int,
        encoder_units: Sequence[int] = (512, 256, 128, 64),
        latent_dim: int = 10,
        dropout: float = 0.3,
        minutes: int = MINUTES_PER_DAY,
    ) -> None:
        super().__init__()
        units = list(encoder_units)
        self.encoder_input = nn.Linear(minutes, units[0])
        self.encoder_condition = nn.Embedding(event_count, units[0])
        self.encoder_hidden = _stack(units, dropout)
        self.mean = nn.Linear(units[-1], latent_dim)
        self.log_variance = nn.Linear(units[-1], latent_dim)

        decoder_units = units[::-1]
        self.decoder_input = nn.Linear(latent_dim, decoder_units[0])
        self.decoder_condition = nn.Embedding(event_count, decoder_units[0])
        self.decoder_hidden = _stack(decoder_units, dropout)
        self.output = nn.Linear(decoder_units[-1], minutes)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.encoder_condition.weight)
        nn.init.zeros_(self.decoder_condition.weight)

    def encode(self, inputs: torch.Tensor, events: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.dropout(torch.relu(self.encoder_input(inputs) + self.encoder_condition(events)))
        hidden = self.encoder_hidden(hidden)
        return self.mean(hidden), self.log_variance(hidden)

    def decode(self, latent: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(torch.relu(self.decoder_input(latent) + self.decoder_condition(events)))
        hidden = self.decoder_hidden(hidden)
        return self.output(hidden)

    def forward(self, inputs: torch.Tensor, events: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_variance = self.encode(inputs, events)
        latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        return self.decode(latent, events), mean, log_variance


def _stack(units: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size_in, size_out in zip(units, units[1:]):
        layers += [nn.Linear(size_in, size_out), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """Return KL(N(mean, exp(log_variance)) || N(0, I)) per row, in nats."""
    return 0.5 * torch.sum(mean.pow(2) + log_variance.exp() - log_variance - 1.0, dim=-1)


def reconstruction_loss(output: torch.Tensor, counts: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Return the negative log-likelihood of ``counts`` per row, without terms that do not depend on the model."""
    if likelihood == "poisson":
        log_rate = output.clamp(max=MAX_LOG_RATE)
        return torch.sum(log_rate.exp() - counts * log_rate, dim=-1)
    presence = (counts > 0).to(output.dtype)
    return nn.functional.binary_cross_entropy_with_logits(output, presence, reduction="none").sum(dim=-1)


def model_inputs(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return the encoder input for minute counts: ``log1p(counts)`` as float32."""
    tensor = torch.as_tensor(counts, dtype=torch.float32)
    return torch.log1p(tensor)


@dataclass(frozen=True)
class TrainingSet:
    """Distinct data points and how often each occurs.

    ``counts`` is (rows x 1,440), ``events`` the event index of each row, ``weights`` the number of
    event-days that have exactly this row. An event's silent days are one row with a large weight.
    """

    counts: np.ndarray
    events: np.ndarray
    weights: np.ndarray

    @property
    def data_points(self) -> int:
        return int(self.weights.sum())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StateError("model.device is 'cuda' but PyTorch finds no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


@torch.no_grad()
def score_kl(model: CVAE, counts: np.ndarray, events: np.ndarray, device: torch.device, batch_size: int = 8192) -> np.ndarray:
    """Return the KL divergence of each row, in nats, with the model in evaluation mode."""
    model.eval()
    results = []
    for start in range(0, len(counts), batch_size):
        inputs = model_inputs(counts[start:start + batch_size]).to(device)
        batch_events = torch.as_tensor(events[start:start + batch_size], dtype=torch.long, device=device)
        mean, log_variance = model.encode(inputs, batch_events)
        results.append(kl_divergence(mean, log_variance).double().cpu().numpy())
    return np.concatenate(results) if results else np.zeros(0)


@dataclass
class Ensemble:
    """Trained members with the metadata of their training.

    ``vocabulary`` lists (host, template id) per event index; ``train_first_day`` and
    ``train_last_day`` bound the training window (ISO days, inclusive).
    """

    version: str
    members: list[CVAE]
    vocabulary: list[tuple[str, int]]
    train_first_day: str
    train_last_day: str
    metadata: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def event_index(self) -> dict[tuple[str, int], int]:
        return {event: index for index, event in enumerate(self.vocabulary)}

    @property
    def size(self) -> int:
        return len(self.members)


def unsettled_members(final_losses: Sequence[float]) -> list[int]:
    """Return the members whose final loss is above ``UNSETTLED_LOSS_FACTOR`` times the members' median.

    With fewer than three members the median is not a useful baseline, so the list is empty.
    """
    if len(final_losses) < 3:
        return []
    limit = UNSETTLED_LOSS_FACTOR * float(np.median(final_losses))
    return [member for member, loss in enumerate(final_losses) if loss > limit]


def train_ensemble(
    data: TrainingSet,
    vocabulary: list[tuple[str, int]],
    first_day: str,
    last_day: str,
    settings: ModelConfig,
    on_epoch: Callable[[int, int], None] | None = None,
) -> Ensemble:
    """Train ``settings.ensemble_size`` members, member i from seed ``settings.seed + i``, all together.

    See ``loglatent.stacked`` for how the members are trained side by side. ``on_epoch(epoch,
    epochs)`` is called after each epoch.
    """
    from loglatent.stacked import ensemble_kl, train_stacked

    device = resolve_device(settings.device)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    seeds = [settings.seed + member for member in range(settings.ensemble_size)]

    started = time.monotonic()
    log.info("Training %d members on %d data points (%d distinct) on %s; model.epochs %d",
             settings.ensemble_size, data.data_points, len(data.counts), device, settings.epochs)
    last_report = [started]

    def progress(epoch: int, epochs: int) -> None:
        if on_epoch is not None:
            on_epoch(epoch, epochs)
        now = time.monotonic()
        if now - last_report[0] >= 30 or epoch == epochs:
            last_report[0] = now
            log.info("Epoch %d of %d after %.0f s", epoch, epochs, now - started)

    members, losses = train_stacked(data, len(vocabulary), settings, seeds, device, progress)
    seconds = time.monotonic() - started
    final_losses = [member_losses[-1] for member_losses in losses]
    log.info("Trained %d members in %.0f s: final loss %.2f to %.2f", len(members), seconds,
             min(final_losses), max(final_losses))

    unsettled = unsettled_members(final_losses)
    if unsettled:
        median = float(np.median(final_losses))
        log.warning(
            "Member(s) %s ended training at a loss of %s, more than %.1f times the members' median of %.2f: "
            "probably a loss spike late in training. Their votes count like the others'. To train them again, "
            "change model.seed or lower model.learning_rate",
            ", ".join(str(member) for member in unsettled),
            ", ".join(f"{final_losses[member]:.2f}" for member in unsettled), UNSETTLED_LOSS_FACTOR, median)

    # Up to COLLAPSE_CHECK_ROWS rows spread over the set show a collapse as well as all of them.
    sample = np.linspace(0, len(data.counts) - 1, min(len(data.counts), COLLAPSE_CHECK_ROWS)).astype(np.int64)
    kl = ensemble_kl(members, data.counts[sample], data.events[sample])
    kl_ranges = [float(np.ptp(row)) if row.size else 0.0 for row in kl]
    if max(kl_ranges) < COLLAPSED_KL_RANGE:
        log.warning(
            "The trained model scores every training day within %.3f nats of the others, so detection will "
            "find little; raise model.epochs or model.min_steps", max(kl_ranges))

    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    metadata = {
        "version": version,
        "trained_at": datetime.now(timezone.utc).isoformat(),
        "train_first_day": first_day,
        "train_last_day": last_day,
        "data_points": data.data_points,
        "distinct_data_points": len(data.counts),
        "events": len(vocabulary),
        "seeds": seeds,
        "final_loss": final_losses,
        "unsettled_members": unsettled,
        "kl_range": kl_ranges,
        "loss_per_epoch": losses,
        "training_seconds": round(seconds, 2),
        "device": str(device),
        "model": settings.model_dump(),
        "libraries": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    return Ensemble(version, [m.to("cpu") for m in members], vocabulary, first_day, last_day, metadata)


def save_ensemble(ensemble: Ensemble, models_dir: Path) -> Path:
    """Write the ensemble to ``models_dir/VERSION`` atomically and return that folder."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / ensemble.version
    staging = models_dir / f".{ensemble.version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for index, member in enumerate(ensemble.members):
        torch.save(member.state_dict(), staging / f"member-{index:02d}.pt")
    metadata = dict(ensemble.metadata, vocabulary=[list(event) for event in ensemble.vocabulary])
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=1))
    if ensemble.extras:
        np.savez(staging / "extras.npz", **ensemble.extras)  # type: ignore[arg-type]
    staging.rename(target)
    return target


def load_metadata(folder: Path) -> dict[str, Any]:
    """Read the metadata of the ensemble in ``folder`` without loading its members."""
    try:
        return dict(json.loads((folder / "metadata.json").read_text()))
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read the model in {folder}: {exc}; train a new one with 'loglatent train'") from None


def load_ensemble(folder: Path) -> Ensemble:
    """Read an ensemble written by ``save_ensemble``."""
    metadata = load_metadata(folder)
    # Only the model's shape matters here. Training settings stored by an older version may fail
    # today's checks, because model.batch_size, for one, once meant rows and had no upper limit.
    settings = ModelConfig.model_construct(**{**ModelConfig().model_dump(), **metadata["model"]})
    vocabulary = [(str(host), int(template_id)) for host, template_id in metadata["vocabulary"]]
    members = []
    for index in range(len(metadata["seeds"])):
        model = CVAE(len(vocabulary), settings.encoder_units, settings.latent_dim, settings.dropout)
        state = torch.load(folder / f"member-{index:02d}.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        members.append(model)
    extras: dict[str, np.ndarray] = {}
    if (folder / "extras.npz").exists():
        with np.load(folder / "extras.npz") as stored:
            extras = {name: stored[name] for name in stored.files}
    return Ensemble(
        metadata["version"], members, vocabulary, metadata["train_first_day"], metadata["train_last_day"], metadata,
        extras,
    )
