"""The members of the ensemble side by side: trained together and scored together.

Member m's weights of a layer are slice m of one (members x inputs x outputs) tensor, so a layer
of the whole ensemble is one batched matrix product, and one Adam update covers every member.
Each member still gets its own batches, dropout masks and initial weights, so the members are
as independent as when they are trained one after another.

Each member is the same model with the same loss as ``model.CVAE`` trained on its own, computed
faster:

- **Batched members.** One batched product per layer instead of one small product per member,
  and one optimizer step for all members.
- **bf16 on hardware that has it.** Where the CPU has AMX or AVX-512 BF16 (or on CUDA), the
  matrix products run in bfloat16 with float32 accumulation; the master weights, Adam's moments,
  the loss and the KL values stay in float32 (``model.precision``).
- **Distinct rows with weights.** An epoch visits every distinct (event, day counts) row once,
  weighted by the number of event-days it stands for, instead of every event-day. A row that
  stands for more than ``MAX_ROW_WEIGHT`` event-days (an event's silent days) is split into
  pieces spread over the epoch, so that no single batch is dominated by one of them.
- **Fused steps.** ``torch.compile`` turns each element-wise step into one loop (``Kernels``):
  ReLU with dropout (and the event's condition row added) keeps one tensor for the backward
  pass; the reconstruction loss computes its gradient in the forward pass; the Adam update reads
  the bfloat16 gradients as they are and writes the bfloat16 copy of the weights for the next
  step. Dropout masks come from NumPy's PCG64 generator, several times faster than PyTorch's
  CPU ``bernoulli_``.

Scoring stacks the encoders the same way and computes the KL values of all members in float32.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from loglatent.config import MAX_BATCH_RATIO, ModelConfig
from loglatent.errors import StateError
from loglatent.model import CVAE, MAX_LOG_RATE, TrainingSet, kl_divergence, model_inputs

log = logging.getLogger(__name__)

# A distinct row that stands for more event-days than this is split into pieces of at most this
# weight. An event with 300 silent days then contributes 10 rows of weight 30 per epoch.
MAX_ROW_WEIGHT = 32.0
SCORE_BATCH_ROWS = 4096


def bf16_supported(device: torch.device) -> bool:
    """Return whether ``device`` multiplies bfloat16 matrices natively, not by emulation.

    On the CPU that takes AVX-512 BF16 or AMX (Cooper Lake, Sapphire Rapids, Zen 4 and later);
    on CUDA, compute capability 8.0 (Ampere) or later.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Return the dtype of the matrix products for ``model.precision`` on ``device``."""
    if precision == "bf16" or (precision == "auto" and bf16_supported(device)):
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class _Slot:
    name: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class StackedWeights:
    """Every member's weights in one flat float32 buffer, with a stacked view per layer.

    Layer names: ``encoder.0`` (minutes x units[0]) with its condition table
    ``encoder.condition`` (events x units[0]), ``encoder.1``... for the hidden layers, ``head``
    (units[-1] x 2 latent: mean, then log-variance), ``decoder.0`` (latent x units[-1]) with
    ``decoder.condition``, ``decoder.1``... and ``output`` (units[0] x minutes). Each weight
    ``NAME`` has a bias ``NAME.bias`` of shape (1 x outputs) per member, except the condition tables.
    """

    def __init__(self, members: Sequence[CVAE], device: torch.device) -> None:
        self.member_count = len(members)
        tensors = [_member_tensors(member) for member in members]
        self.slots: list[_Slot] = []
        offset = 0
        for name, first in tensors[0].items():
            self.slots.append(_Slot(name, offset, (self.member_count, *first.shape)))
            offset += self.member_count * first.numel()
        self.flat = torch.empty(offset, dtype=torch.float32, device=device)
        for slot in self.slots:
            stacked = torch.stack([member[slot.name] for member in tensors])
            self.view(slot.name).copy_(stacked)
        self.hidden_layers = sum(1 for slot in self.slots if slot.name.startswith("encoder.")
                                 and slot.name[8:].isdigit()) - 1

    def view(self, name: str, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Return the stacked tensor ``name`` as a view of ``flat`` (default: the master weights)."""
        slot = next(slot for slot in self.slots if slot.name == name)
        source = self.flat if flat is None else flat
        return source[slot.offset:slot.offset + slot.size].view(slot.shape)

    def write_back(self, members: Sequence[CVAE]) -> None:
        """Copy the stacked weights into the members' own parameters."""
        with torch.no_grad():
            for index, member in enumerate(members):
                for name, target in _member_tensors(member).items():
                    if not name.startswith("head"):
                        target.copy_(self.view(name)[index].to(target.device))
                head = self.view("head")[index].t().to(member.mean.weight.device)
                head_bias = self.view("head.bias")[index, 0].to(member.mean.weight.device)
                latent_dim = member.mean.out_features
                member.mean.weight.copy_(head[:latent_dim])
                member.log_variance.weight.copy_(head[latent_dim:])
                member.mean.bias.copy_(head_bias[:latent_dim])
                member.log_variance.bias.copy_(head_bias[latent_dim:])


def _member_tensors(member: CVAE) -> dict[str, torch.Tensor]:
    """Return a member's parameters under the stacked layer names, oriented (inputs x outputs)."""
    tensors: dict[str, torch.Tensor] = {}

    def linear(name: str, layer: nn.Linear) -> None:
        tensors[name] = layer.weight.data.t()
        tensors[f"{name}.bias"] = layer.bias.data.unsqueeze(0)

    linear("encoder.0", member.encoder_input)
    tensors["encoder.condition"] = member.encoder_condition.weight.data
    hidden = [layer for layer in member.encoder_hidden if isinstance(layer, nn.Linear)]
    for index, layer in enumerate(hidden, start=1):
        linear(f"encoder.{index}", layer)
    tensors["head"] = torch.cat([member.mean.weight.data, member.log_variance.weight.data]).t()
    tensors["head.bias"] = torch.cat([member.mean.bias.data, member.log_variance.bias.data]).unsqueeze(0)
    linear("decoder.0", member.decoder_input)
    tensors["decoder.condition"] = member.decoder_condition.weight.data
    hidden = [layer for layer in member.decoder_hidden if isinstance(layer, nn.Linear)]
    for index, layer in enumerate(hidden, start=1):
        linear(f"decoder.{index}", layer)
    linear("output", member.output)
    return tensors


def _poisson_terms(output: torch.Tensor, counts: torch.Tensor,
                   weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each member's weighted Poisson loss and its gradient with respect to ``output``."""
    log_rate = output.float()
    bounded = torch.clamp(log_rate, max=MAX_LOG_RATE)
    rate = torch.exp(bounded)
    target = counts.float()
    per_row = torch.sum(rate - target * bounded, dim=-1)
    gradient = torch.where(log_rate <= MAX_LOG_RATE, rate - target, 0.0) * weights.unsqueeze(-1)
    return torch.sum(per_row * weights, dim=-1), gradient.to(output.dtype)


def _bernoulli_terms(output: torch.Tensor, counts: torch.Tensor,
                     weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each member's weighted Bernoulli loss on "any message in the minute", and its gradient."""
    logit = output.float()
    presence = (counts > 0).float()
    per_row = torch.sum(torch.clamp_min(logit, 0) - presence * logit + torch.log1p(torch.exp(-logit.abs())), dim=-1)
    gradient = (torch.sigmoid(logit) - presence) * weights.unsqueeze(-1)
    return torch.sum(per_row * weights, dim=-1), gradient.to(output.dtype)


def _relu_dropout(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.relu(x) * keep * scale


def _shifted_relu_dropout(x: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.relu(x + shift) * keep * scale


def _relu_dropout_backward(grad: torch.Tensor, output: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.where(output > 0, grad * scale, 0.0).to(grad.dtype)


def _adam_step(parameters: list[torch.Tensor], gradients: list[torch.Tensor], first_moments: list[torch.Tensor],
               second_moments: list[torch.Tensor], copies: list[torch.Tensor], step_size: torch.Tensor,
               second_correction: torch.Tensor, beta1: float, beta2: float, eps: float) -> None:
    """Apply one Adam update in place, as ``torch.optim.Adam`` does, and refresh the low-precision copies.

    ``step_size`` is lr / (1 - beta1^t) and ``second_correction`` sqrt(1 - beta2^t), passed as
    tensors so that a new step does not compile anew. Gradients may be bfloat16.
    """
    for parameter, gradient, first, second, copy in zip(parameters, gradients, first_moments, second_moments,
                                                        copies):
        gradient = gradient.float()
        first.mul_(beta1).add_(gradient, alpha=1 - beta1)
        second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        parameter.sub_(step_size * first / (second.sqrt() / second_correction + eps))
        copy.copy_(parameter)


class Kernels:
    """The element-wise steps of a training step, compiled into fused loops by ``torch.compile``.

    Compiled, each step reads and writes its tensors once instead of once per operation. The Adam
    update, for one, reads the bfloat16 gradients as they are and also writes the bfloat16 copy
    of the weights that the next step multiplies with.
    Compiling needs a C++ compiler on the CPU (Triton on CUDA) and takes seconds the first time;
    where it fails, the same functions run uncompiled after one warning.
    """

    def __init__(self, compile_kernels: bool) -> None:
        self.compile = compile_kernels
        self._compiled: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        function = _KERNELS[name]
        if not self.compile:
            return function
        def call(*args: Any) -> Any:
            if self.compile:
                try:
                    compiled = self._compiled.get(name)
                    if compiled is None:
                        compiled = self._compiled[name] = torch.compile(function, dynamic=True)
                    return compiled(*args)
                except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the same function
                    self.compile = False
                    log.warning("torch.compile failed (%s: %s); training continues uncompiled and slower. "
                                "Install a C++ compiler (g++) or set model.compile: false to skip the attempt",
                                type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            return function(*args)

        return call


_KERNELS: dict[str, Callable[..., Any]] = {
    "poisson_terms": _poisson_terms,
    "bernoulli_terms": _bernoulli_terms,
    "relu_dropout": _relu_dropout,
    "shifted_relu_dropout": _shifted_relu_dropout,
    "relu_dropout_backward": _relu_dropout_backward,
    "adam_step": _adam_step,
}


class _ReluDropout(torch.autograd.Function):
    """``relu(x + shift) * keep * scale``, where ``keep`` is 1 for a kept unit and 0 for a dropped one.

    ``keep`` is uint8, so a step's masks take one byte a unit, and ``scale`` is 1 / (1 - dropout).
    ``shift`` (the event's row of a condition table, or None) is added inside the same loop. The
    derivative is ``scale`` where the output is positive and 0 elsewhere, so the output is the
    one tensor the backward pass keeps, and x and shift get the same gradient.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, shift: torch.Tensor | None,
                keep: torch.Tensor, scale: float, kernels: Kernels) -> torch.Tensor:
        if shift is None:
            output: torch.Tensor = kernels.relu_dropout(x, keep, scale)
        else:
            output = kernels.shifted_relu_dropout(x, shift, keep, scale)
        ctx.save_for_backward(output)
        ctx.scale, ctx.kernels, ctx.shifted = scale, kernels, shift is not None  # type: ignore[attr-defined]
        return output

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (output,) = ctx.saved_tensors  # type: ignore[attr-defined]
        gradient = ctx.kernels.relu_dropout_backward(grad, output, ctx.scale)  # type: ignore[attr-defined]
        return gradient, gradient if ctx.shifted else None, None, None, None  # type: ignore[attr-defined]


def epoch_rows(weights: np.ndarray, max_weight: float = MAX_ROW_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """Return (row, weight) entries that visit each distinct row once, heavy rows in pieces.

    A row of weight w > ``max_weight`` becomes ceil(w / max_weight) entries of equal weight.
    The weights of a row's entries add up to its weight.
    """
    pieces = np.maximum(1, np.ceil(weights / max_weight)).astype(np.int64)
    rows = np.repeat(np.arange(len(weights)), pieces)
    return rows, (weights / pieces)[rows].astype(np.float32)


def batch_rows(entries: int, data_points: float, batch_size: int) -> int:
    """Return the rows a step takes so that a step averages ``batch_size`` event-days over the epoch."""
    return max(1, min(entries, round(entries * batch_size / data_points)))


def step_plan(entries: int, data_points: float, settings: ModelConfig) -> tuple[int, int, AdamSettings]:
    """Return the rows a step takes, the steps an epoch makes and Adam's settings for such steps."""
    batch = batch_rows(entries, data_points, settings.batch_size)
    steps = -(-entries // batch)
    return batch, steps, AdamSettings.scaled(settings, data_points / steps, data_points)


@dataclass(frozen=True)
class AdamSettings:
    """Adam's learning rate, betas and eps for steps of one size."""

    learning_rate: float
    beta1: float
    beta2: float
    eps: float

    @classmethod
    def scaled(cls, settings: ModelConfig, step_days: float, data_points: float) -> AdamSettings:
        """Return Adam's settings for steps of ``step_days`` event-days by the square-root rule.

        ``model.learning_rate`` and Adam's defaults (betas 0.9 and 0.999, eps 1e-8) apply to steps
        of ``model.learning_rate_batch`` event-days, or of the whole data set where it is smaller.
        For steps k times as large, the rule of Malladi et al. ("On the SDEs and Scaling Rules for
        Adaptive Gradient Algorithms", NeurIPS 2022) multiplies the learning rate by sqrt(k) and
        1 - beta by k, and divides eps by sqrt(k). Adam then follows approximately the same course
        per epoch with k times fewer steps.
        """
        ratio = step_days / min(settings.learning_rate_batch, data_points)
        ratio = min(ratio, MAX_BATCH_RATIO)
        return cls(settings.learning_rate * math.sqrt(ratio), 1 - 0.1 * ratio, 1 - 0.001 * ratio,
                   1e-8 / math.sqrt(ratio))


class _DropoutBits:
    """Dropout masks from NumPy's PCG64 generator: 16-bit uniform integers against a threshold.

    A mask holds 1 (uint8) for a kept unit and 0 for a dropped one. The share of dropped units is
    ``dropout`` rounded to a multiple of 1/65,536, and ``scale``, by which kept units are
    multiplied, is 1 / (1 - that share) rounded to the dtype of the products.
    """

    def __init__(self, seed: int, dropout: float, dtype: torch.dtype, device: torch.device) -> None:
        self.generator = np.random.default_rng(seed)
        self.threshold = np.int16(min(round(dropout * 65536) - 32768, 32767))
        kept = 1.0 - (int(self.threshold) + 32768) / 65536
        self.scale = float(torch.tensor(1.0 / kept if kept > 0 else 0.0, dtype=dtype))
        self.device = device

    def masks(self, sizes: Sequence[int]) -> list[torch.Tensor]:
        total = sum(sizes)
        # Each raw 64-bit draw of the generator contains four 16-bit uniform integers.
        uniform = self.generator.bit_generator.random_raw(-(-total // 4)).view(np.int16)[:total]
        keep = torch.from_numpy((uniform >= self.threshold).view(np.uint8)).to(self.device)
        return list(torch.split(keep, list(sizes)))


def _forward(
    weights: Callable[[str], torch.Tensor],
    hidden_layers: int,
    inputs: torch.Tensor,
    events: torch.Tensor,
    keep: Iterator[torch.Tensor],
    scale: float,
    noise: torch.Tensor | None,
    kernels: Kernels | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the stacked CVAE on (members x rows x minutes) ``inputs``, or (rows x minutes) shared by all members.

    ``events`` contains each row's position in the (members x events) condition tables, flattened.
    ``keep`` yields one dropout mask per hidden layer (see ``_DropoutBits``), or nothing in
    evaluation mode, and ``scale`` is 1 / (1 - dropout). ``noise``
    is the standard normal draw of the latent, or None to stop after the encoder.
    Returns (decoder output or an empty tensor, mean, log-variance); mean and log-variance are float32.
    """

    def layer(name: str, hidden: torch.Tensor) -> torch.Tensor:
        weight = weights(name)
        if hidden.dim() == 2:
            # One input for every member: a single product with the members' weights side by side.
            members, size_in, size_out = weight.shape
            side_by_side = weight.permute(1, 0, 2).reshape(size_in, members * size_out)
            result = (hidden @ side_by_side).view(len(hidden), members, size_out).transpose(0, 1)
            return result + weights(f"{name}.bias")
        return torch.baddbmm(weights(f"{name}.bias"), hidden, weight)

    def condition(name: str, like: torch.Tensor) -> torch.Tensor:
        table = weights(name)
        return nn.functional.embedding(events, table.reshape(-1, table.shape[-1])).view_as(like)

    def activate(hidden: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        mask = next(keep, None)
        if mask is None:
            return torch.relu(hidden if shift is None else hidden + shift)
        return _ReluDropout.apply(hidden, shift, mask.view_as(hidden), scale, kernels)

    hidden = layer("encoder.0", inputs)
    hidden = activate(hidden, condition("encoder.condition", hidden))
    for index in range(1, hidden_layers + 1):
        hidden = activate(layer(f"encoder.{index}", hidden))
    head = layer("head", hidden).float()
    latent_dim = head.shape[-1] // 2
    mean, log_variance = head[..., :latent_dim], head[..., latent_dim:]
    if noise is None:
        return head.new_empty(0), mean, log_variance
    latent = (mean + noise * torch.exp(0.5 * log_variance)).to(inputs.dtype)
    hidden = layer("decoder.0", latent)
    hidden = activate(hidden, condition("decoder.condition", hidden))
    for index in range(1, hidden_layers + 1):
        hidden = activate(layer(f"decoder.{index}", hidden))
    return layer("output", hidden), mean, log_variance


def train_stacked(
    data: TrainingSet, event_count: int, settings: ModelConfig, seeds: Sequence[int], device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[CVAE], list[list[float]]]:
    """Train one member per seed, all together, and return them with each one's mean loss per epoch.

    Member i starts from the weights ``CVAE(...)`` draws under ``torch.manual_seed(seeds[i])``.
    The batch orders, dropout masks and latent draws come from generators seeded with
    ``seeds[0]``, which draw separate values for each member. An epoch visits every entry of
    ``epoch_rows`` once per member, in an order of its own, ``batch_rows(...)`` entries a step,
    so that a step averages ``batch_size`` event-days. A step's loss is the weighted mean over
    the event-days that its entries stand for, and Adam's settings follow ``AdamSettings.scaled``. When
    ``epochs`` epochs make fewer than ``min_steps`` steps, training runs more epochs until it
    reaches ``min_steps``. ``progress(epoch, epochs)`` is called after each epoch.
    """
    members = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            members.append(CVAE(event_count, settings.encoder_units, settings.latent_dim, settings.dropout))
    # NOTE: the CUDA path (device generators, bfloat16 products, Triton kernels) has not yet run
    # on a GPU; the CPU path is the one measured and tested.
    stack = StackedWeights(members, device)
    dtype = compute_dtype(settings.precision, device)
    member_count = len(members)

    if len(data.counts) == 0:
        raise StateError("no data points to train on; ingest logs first ('loglatent ingest')")
    rows, row_weights = epoch_rows(data.weights.astype(np.float64))
    entries = len(rows)
    batch, steps, adam = step_plan(entries, data.data_points, settings)
    epochs = max(settings.epochs, -(-settings.min_steps // steps))
    log.info("Training %d members together on %s in %s: %d rows an epoch (%d distinct, %d data points), "
             "%d steps an epoch of %d rows, %d epochs; Adam lr %.3g, betas %.3g and %.5g",
             member_count, device, str(dtype).removeprefix("torch."), entries, len(data.counts), data.data_points,
             steps, batch, epochs, adam.learning_rate, adam.beta1, adam.beta2)

    inputs = model_inputs(data.counts).to(device=device, dtype=dtype)
    # The targets are stored in the dtype of the products too: bfloat16 is exact up to 256
    # messages a minute and within 0.4% above, finer than the bfloat16 output they are compared with.
    counts = torch.as_tensor(data.counts, device=device).to(dtype)
    row_index = torch.as_tensor(rows, device=device)
    row_weight = torch.as_tensor(row_weights, device=device)
    member_offset = torch.arange(member_count, device=device).unsqueeze(1) * event_count
    events = torch.as_tensor(data.events, dtype=torch.long, device=device)

    # Adam's state, and the weights in the dtype of the products, side by side with the master weights.
    first_moment = torch.zeros_like(stack.flat)
    second_moment = torch.zeros_like(stack.flat)
    low = stack.flat.to(dtype, copy=True)
    names = [slot.name for slot in stack.slots]
    master_views = [stack.view(name) for name in names]
    first_views = [stack.view(name, first_moment) for name in names]
    second_views = [stack.view(name, second_moment) for name in names]
    low_views = [stack.view(name, low) for name in names]
    beta1, beta2, adam_eps = adam.beta1, adam.beta2, adam.eps
    adam_steps = 0
    order_generator = torch.Generator(device="cpu").manual_seed(seeds[0])
    noise_generator = torch.Generator(device=device).manual_seed(seeds[0] + 1)
    kernels = Kernels(settings.compile)
    bits = _DropoutBits(seeds[0] + 2, settings.dropout, dtype, device)
    units = list(settings.encoder_units)
    widths = units + units[::-1]

    losses = torch.zeros((epochs, member_count), dtype=torch.float64, device=device)
    step_sizes = [min(batch, entries - start) for start in range(0, entries, batch)]

    def step_masks(size: int) -> list[torch.Tensor]:
        return bits.masks([member_count * size * width for width in widths])

    # A helper thread draws the next step's dropout masks while this step trains. It draws them
    # in the same order as the loop would, so the masks are the same.
    with ThreadPoolExecutor(1, thread_name_prefix="loglatent-dropout") as helper:
        upcoming = helper.submit(step_masks, step_sizes[0])
        for epoch in range(epochs):
            order = torch.argsort(torch.rand((member_count, entries), generator=order_generator), dim=1).to(device)
            for index, start in enumerate(range(0, entries, batch)):
                picked = order[:, start:start + batch]
                size = picked.shape[1]
                chosen = row_index[picked]
                weight = row_weight[picked]
                weight = weight / weight.sum(dim=1, keepdim=True)
                flat_rows = chosen.reshape(-1)

                leaves = {name: view.detach().requires_grad_() for name, view in zip(names, low_views)}
                masks = iter(upcoming.result())
                if adam_steps + 1 < epochs * steps:
                    upcoming = helper.submit(step_masks, step_sizes[(index + 1) % len(step_sizes)])
                noise = torch.randn((member_count, size, settings.latent_dim), generator=noise_generator, device=device)
                output, mean, log_variance = _forward(
                    leaves.__getitem__, stack.hidden_layers,
                    inputs.index_select(0, flat_rows).view(member_count, size, -1),
                    (events[chosen] + member_offset).reshape(-1), masks, bits.scale, noise, kernels)
                target = counts.index_select(0, flat_rows).view(member_count, size, -1)
                terms = kernels.poisson_terms if settings.likelihood == "poisson" else kernels.bernoulli_terms
                reconstruction, output_gradient = terms(output.detach(), target, weight)
                kl = torch.sum(kl_divergence(mean, log_variance) * weight, dim=1)
                # The reconstruction's gradient is already known: start the backward pass from it.
                torch.autograd.backward([output, kl.sum()], [output_gradient, None])
                per_member = reconstruction + kl.detach()
                adam_steps += 1
                with torch.no_grad():
                    gradients = [leaves[name].grad for name in names]
                    step_size = torch.tensor(adam.learning_rate / (1 - beta1 ** adam_steps), device=device)
                    correction = torch.tensor(math.sqrt(1 - beta2 ** adam_steps), device=device)
                    kernels.adam_step(master_views, gradients, first_views, second_views, low_views, step_size,
                                      correction, beta1, beta2, adam_eps)
                    losses[epoch] += per_member.detach()
            if progress is not None:
                progress(epoch + 1, epochs)

    stack.write_back(members)
    for member in members:
        member.eval()
    per_epoch = (losses / steps).cpu().numpy()
    return members, [[float(value) for value in per_epoch[:, index]] for index in range(member_count)]


@torch.no_grad()
def ensemble_kl(members: Sequence[CVAE], counts: np.ndarray, events: np.ndarray,
                device: torch.device | None = None) -> np.ndarray:
    """Return the (members x rows) KL values of the rows, in nats, computed in float32."""
    device = device or torch.device("cpu")
    if len(counts) == 0:
        return np.zeros((len(members), 0))
    stack = StackedWeights(members, device)
    member_count = len(members)
    event_count = members[0].encoder_condition.num_embeddings
    offsets = torch.arange(member_count, device=device).unsqueeze(1) * event_count
    result = np.empty((member_count, len(counts)))
    for start in range(0, len(counts), SCORE_BATCH_ROWS):
        chunk = model_inputs(counts[start:start + SCORE_BATCH_ROWS]).to(device)
        size = len(chunk)
        batch_events = torch.as_tensor(events[start:start + size], dtype=torch.long, device=device)
        flat_events = (batch_events.unsqueeze(0) + offsets).reshape(-1)
        _, mean, log_variance = _forward(
            stack.view, stack.hidden_layers, chunk, flat_events, iter(()), 1.0, None)
        result[:, start:start + size] = kl_divergence(mean, log_variance).double().cpu().numpy()
    return result
