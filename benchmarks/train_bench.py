"""Paper-scale training and scoring: loglatent's ensemble trainer against a plain reference.

Generates a labelled corpus of the shape of Otomo et al.'s data set (BIG-DAMA 2018) (120 events x 456 days x 1,440 minutes, see
``loglatent.corpus``), then, on the same data and in the same run:

- trains the ensemble with the product's trainer (``loglatent.model.train_ensemble``), scores
  every data point (KL values, per-event DBSCAN on the trailing windows, majority vote) with the
  product's code, and measures precision and recall on the labels;
- does the same with a plain reference kept in this file: one ``nn.Sequential`` CVAE after
  another, the event as a dense one-hot vector beside the counts, float32, batches of 256 data
  points in a fresh random order every epoch, Adam, the full number of epochs. Its KL values
  come from its own encoder, judged by the same DBSCAN rule and vote.

Each trainer runs in a child process of its own, so that each one's peak resident memory is
its own. The reference may be trained on fewer members or epochs (``--reference-members``,
``--reference-epochs``); its ensemble wall time is then scaled up, and the output says so.
When it has fewer members, the product's precision and recall are also given for the vote of
its first members only, so that the two are compared at the same ensemble size.

    .venv/bin/python benchmarks/train_bench.py                     # 10 x 50 each, about an hour on 2 cores
    .venv/bin/python benchmarks/train_bench.py --reference-members 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from loglatent.config import DetectionConfig, ModelConfig  # noqa: E402
from loglatent.corpus import generate  # noqa: E402
from loglatent.evaluate import Tally, _distinct_rows  # noqa: E402
from loglatent.jobs import judge_scores  # noqa: E402
from loglatent.model import TrainingSet, kl_divergence, resolve_device, train_ensemble  # noqa: E402
from loglatent.stacked import compute_dtype, ensemble_kl, epoch_rows, step_plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_bench import cpu_model  # noqa: E402

MINUTES = 1440
REFERENCE_BATCH = 256


class ReferenceCVAE(nn.Module):
    """The CVAE of Otomo et al. written the plain way: the one-hot condition concatenated to the input."""

    def __init__(self, events: int, units: tuple[int, ...] = (512, 256, 128, 64), latent: int = 10,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.events = events
        encoder: list[nn.Module] = []
        for size_in, size_out in zip((MINUTES + events, *units), units):
            encoder += [nn.Linear(size_in, size_out), nn.ReLU(), nn.Dropout(dropout)]
        self.encoder = nn.Sequential(*encoder)
        self.mean = nn.Linear(units[-1], latent)
        self.log_variance = nn.Linear(units[-1], latent)
        mirrored = units[::-1]
        decoder: list[nn.Module] = []
        for size_in, size_out in zip((latent + events, *mirrored), mirrored):
            decoder += [nn.Linear(size_in, size_out), nn.ReLU(), nn.Dropout(dropout)]
        decoder.append(nn.Linear(mirrored[-1], MINUTES))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, inputs: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(torch.cat([inputs, condition], dim=1))
        return self.mean(hidden), self.log_variance(hidden)

    def forward(self, inputs: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean, log_variance = self.encode(inputs, condition)
        latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        return self.decoder(torch.cat([latent, condition], dim=1)), mean, log_variance


def train_reference(counts: torch.Tensor, events: torch.Tensor, event_count: int, epochs: int, seed: int,
                    device: torch.device) -> ReferenceCVAE:
    """Train one reference model on every data point: Poisson likelihood plus KL, mean over the batch."""
    torch.manual_seed(seed)
    model = ReferenceCVAE(event_count).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.log1p(counts)
    condition = nn.functional.one_hot(events, event_count).float()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(counts), device=device)
        for start in range(0, len(counts), REFERENCE_BATCH):
            batch = order[start:start + REFERENCE_BATCH]
            output, mean, log_variance = model(inputs[batch], condition[batch])
            log_rate = output.clamp(max=20.0)
            reconstruction = torch.sum(log_rate.exp() - counts[batch] * log_rate, dim=1)
            loss = torch.mean(reconstruction + kl_divergence(mean, log_variance))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def reference_kl(model: ReferenceCVAE, counts: torch.Tensor, events: torch.Tensor) -> np.ndarray:
    condition = nn.functional.one_hot(events, model.events).float()
    values = []
    for start in range(0, len(counts), 8192):
        mean, log_variance = model.encode(torch.log1p(counts[start:start + 8192]), condition[start:start + 8192])
        values.append(kl_divergence(mean, log_variance).double().cpu().numpy())
    return np.concatenate(values)


def judge(kl: np.ndarray, labels: np.ndarray, detection: DetectionConfig) -> tuple[dict[str, Any], float]:
    """Return precision and recall of the vote on (members x events x days) KL values, and the seconds it took."""
    started = time.perf_counter()
    judgement = judge_scores(kl, np.arange(kl.shape[2]), detection)
    seconds = time.perf_counter() - started
    judged = slice(detection.min_cluster_days - 1, None)
    tally = Tally.of(judgement.anomalous.T[:, judged], labels[:, judged])
    return tally.as_dict(), seconds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_product(options: dict[str, Any]) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    corpus = generate(options["events"], options["devices"], options["days"], options["seed"])
    if options["dedupe"]:
        training_set, row_of = _distinct_rows(corpus.counts)
    else:
        events, days, _ = corpus.counts.shape
        training_set = TrainingSet(corpus.counts.reshape(events * days, MINUTES), np.repeat(np.arange(events), days),
                                   np.ones(events * days, dtype=np.float32))
        row_of = np.arange(events * days).reshape(events, days)
    settings = ModelConfig(ensemble_size=options["members"], epochs=options["epochs"], device=options["device"],
                           batch_size=options["batch_size"], seed=options["seed"], compile=options["compile"],
                           precision=options["precision"], min_steps=options["min_steps"])
    vocabulary = [(host, index) for index, host in enumerate(corpus.hosts)]
    epoch_ends: list[float] = []
    started = time.perf_counter()
    ensemble = train_ensemble(training_set, vocabulary, corpus.days[0], corpus.days[-1], settings,
                              on_epoch=lambda epoch, epochs: epoch_ends.append(time.perf_counter()))
    training_seconds = time.perf_counter() - started

    detection = DetectionConfig()
    started = time.perf_counter()
    kl = ensemble_kl(ensemble.members, training_set.counts, training_set.events)[:, row_of]
    kl_seconds = time.perf_counter() - started
    result, judge_seconds = judge(kl, corpus.labels, detection)
    device = resolve_device(settings.device)
    entries = len(epoch_rows(training_set.weights.astype(np.float64))[0])
    rows, steps, adam = step_plan(entries, training_set.data_points, settings)
    outcome = {
        "members": settings.ensemble_size,
        "epochs": len(ensemble.metadata["loss_per_epoch"][0]),
        "data_points": training_set.data_points,
        "distinct_rows": len(training_set.counts),
        "steps_per_epoch": steps,
        "rows_per_step": rows,
        "adam": {"learning_rate": adam.learning_rate, "beta1": adam.beta1, "beta2": adam.beta2, "eps": adam.eps},
        "labelled": int(corpus.labels.sum()),
        "training_seconds": training_seconds,
        # Seconds per epoch after the first, which also compiles the kernels.
        "epoch_seconds": float(np.median(np.diff(epoch_ends))) if len(epoch_ends) > 1 else None,
        "kl_seconds": kl_seconds,
        "judge_seconds": judge_seconds,
        "result": result,
        "final_loss": float(np.mean(ensemble.metadata["final_loss"])),
        "device": _device_name(device),
        "precision": str(compute_dtype(settings.precision, device)).removeprefix("torch."),
        "peak_rss_mb": peak_rss_mb(),
    }
    reference_members = options["reference_members"]
    if reference_members < settings.ensemble_size:
        outcome["result_at_reference_size"], _ = judge(kl[:reference_members], corpus.labels, detection)
    return outcome


def run_reference(options: dict[str, Any]) -> dict[str, Any]:
    corpus = generate(options["events"], options["devices"], options["days"], options["seed"])
    events, days, _ = corpus.counts.shape
    device = resolve_device(options["device"])
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # as train_ensemble does
    counts = torch.as_tensor(corpus.counts.reshape(events * days, MINUTES), device=device)
    event_of_row = torch.arange(events, device=device).repeat_interleave(days)
    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    kl_rows = []
    training_seconds = 0.0
    kl_seconds = 0.0
    for member in range(options["reference_members"]):
        started = time.perf_counter()
        model = train_reference(counts, event_of_row, events, options["reference_epochs"], options["seed"] + member,
                                device)
        training_seconds += time.perf_counter() - started
        logging.info("Reference member %d of %d trained in %.0f s", member + 1, options["reference_members"],
                     time.perf_counter() - started)
        started = time.perf_counter()
        kl_rows.append(reference_kl(model, counts, event_of_row).reshape(events, days))
        kl_seconds += time.perf_counter() - started
    result, judge_seconds = judge(np.stack(kl_rows), corpus.labels, DetectionConfig())
    return {
        "members": options["reference_members"],
        "epochs": options["reference_epochs"],
        "data_points": events * days,
        "training_seconds": training_seconds,
        "kl_seconds": kl_seconds,
        "judge_seconds": judge_seconds,
        "result": result,
        "device": _device_name(device),
        "precision": "float32",
        "peak_rss_mb": peak_rss_mb(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


def _exit_on_sigterm(signal_number: int, _frame: Any) -> None:
    # SystemExit leaves the Pool's with-block, which terminates the child instead of orphaning it.
    raise SystemExit(128 + signal_number)


def _in_child(function: Any, options: dict[str, Any]) -> dict[str, Any]:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return dict(pool.apply(function, (options,)))


def report(options: dict[str, Any], product: dict[str, Any], reference: dict[str, Any]) -> str:
    members, epochs = options["members"], options["epochs"]
    scale = (members / reference["members"]) * (epochs / reference["epochs"])
    product_rate = product["data_points"] * product["epochs"] * product["members"] / product["training_seconds"]
    reference_rate = (reference["data_points"] * reference["epochs"] * reference["members"]
                      / reference["training_seconds"])
    reference_wall = reference["training_seconds"] * scale
    measured = (f"{reference['members']} x {reference['epochs']} measured, scaled x{scale:g}" if scale != 1
                else "measured")
    points = product["data_points"]

    def scoring(run: dict[str, Any]) -> str:
        seconds = run["kl_seconds"] + run["judge_seconds"]
        return (f"{seconds:.2f} s ({seconds / points * 1000:.3f} s per 1,000; "
                f"KL {run['kl_seconds']:.2f}, DBSCAN and vote {run['judge_seconds']:.2f})")

    def quality(result: dict[str, Any]) -> str:
        return (f"precision {result['precision']:.3f}, recall {result['recall']:.3f} "
                f"({result['tp']} of {result['anomalies']} found, {result['fp']} false)")

    lines = [
        f"Corpus: {options['events']} events x {options['days']} days = {points:,} data points "
        f"({product['distinct_rows']:,} distinct), {product['labelled']} labelled anomalous, seed {options['seed']}.",
        f"Library: torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "product: batched members, distinct rows with weights, "
        f"{product['precision']} products, steps of {options['batch_size']} event-days",
        f"  device                {product['device']}",
        f"  ensemble              {product['members']} members x {product['epochs']} epochs",
        f"  steps                 {product['steps_per_epoch']} an epoch of {product['rows_per_step']} rows; Adam "
        f"lr {product['adam']['learning_rate']:.3g}, betas {product['adam']['beta1']:.3g} and "
        f"{product['adam']['beta2']:.4g} (square-root rule)",
        f"  training wall time    {product['training_seconds']:.1f} s "
        f"({product['epoch_seconds'] or 0:.2f} s an epoch after the first)",
        f"  throughput            {product_rate:,.0f} data points x epochs per second (all members)",
        f"  peak resident memory  {product['peak_rss_mb']:,.0f} MB",
        f"  scoring all points    {scoring(product)}",
        f"  labels                {quality(product['result'])}",
    ]
    if "result_at_reference_size" in product:
        size = reference["members"]
        label = "member 1 alone" if size == 1 else f"members 1 to {size}"
        lines.append(f"  {label:21} {quality(product['result_at_reference_size'])}")
    lines += [
        "",
        f"reference: one model after another, dense one-hot, float32, batch {REFERENCE_BATCH}",
        f"  device                {reference['device']}",
        f"  ensemble              {reference['members']} members x {reference['epochs']} epochs",
        f"  steps                 {-(-reference['data_points'] // REFERENCE_BATCH)} an epoch of {REFERENCE_BATCH} "
        "event-days; Adam lr 0.001, betas 0.9 and 0.999",
        f"  training wall time    {reference['training_seconds']:.1f} s measured "
        f"({reference['training_seconds'] / (reference['members'] * reference['epochs']):.2f} s a member-epoch); "
        f"{reference_wall:.0f} s for {members} x {epochs} ({measured})",
        f"  throughput            {reference_rate:,.0f} data points x epochs per second",
        f"  peak resident memory  {reference['peak_rss_mb']:,.0f} MB",
        f"  scoring all points    {scoring(reference)}",
        f"  labels                {quality(reference['result'])}",
        "",
        f"Speed ratio (product throughput / reference throughput): {product_rate / reference_rate:.1f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--devices", type=int, default=24)
    parser.add_argument("--days", type=int, default=456)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=ModelConfig().batch_size,
                        help="the product's event-days per step (default: model.batch_size's default)")
    parser.add_argument("--reference-members", type=int, help="members the reference trains (default: --members)")
    parser.add_argument("--reference-epochs", type=int, help="epochs the reference trains (default: --epochs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--min-steps", type=int, default=ModelConfig().min_steps,
                        help="the product's model.min_steps; 1 runs exactly --epochs epochs")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="the product's model.precision")
    parser.add_argument("--no-compile", action="store_true", help="train the product without torch.compile")
    parser.add_argument("--no-dedupe", action="store_true",
                        help="give the product every event-day as a row of its own, as the reference has them")
    parser.add_argument("--skip-reference", action="store_true", help="run the product only")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = parser.parse_args()
    try:
        ModelConfig(batch_size=args.batch_size)
    except ValueError as exc:
        parser.error(f"--batch-size: {exc}")
    options = {
        "events": args.events, "devices": args.devices, "days": args.days, "seed": args.seed,
        "members": args.members, "epochs": args.epochs, "batch_size": args.batch_size, "device": args.device,
        "compile": not args.no_compile, "precision": args.precision, "dedupe": not args.no_dedupe,
        "min_steps": args.min_steps,
        "reference_members": min(args.reference_members or args.members, args.members),
        "reference_epochs": min(args.reference_epochs or args.epochs, args.epochs),
    }
    print(f"Training the product's ensemble ({options['members']} x {options['epochs']})...", file=sys.stderr,
          flush=True)
    product = _in_child(run_product, options)
    if args.skip_reference:
        print(json.dumps(product, indent=1))
        if args.json:
            args.json.write_text(json.dumps({"options": options, "product": product}, indent=1))
        return
    print(f"Training the reference ({options['reference_members']} x {options['reference_epochs']})...",
          file=sys.stderr, flush=True)
    reference = _in_child(run_reference, options)
    print(report(options, product, reference))
    if args.json:
        args.json.write_text(json.dumps({"options": options, "product": product, "reference": reference}, indent=1))


if __name__ == "__main__":
    main()
