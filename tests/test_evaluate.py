import json

import numpy as np
import pytest

from loglatent.cli import main
from loglatent.corpus import generate
from loglatent.evaluate import MethodRun, SeedResult, Tally, summarise


def test_tally_by_hand() -> None:
    flags = np.array([[True, True, False, False, True]])
    labels = np.array([[True, False, True, False, True]])
    tally = Tally.of(flags, labels)
    assert (tally.tp, tally.fp, tally.fn) == (2, 1, 1)
    assert tally.precision == pytest.approx(2 / 3)
    assert tally.recall == pytest.approx(2 / 3)
    assert tally.f1 == pytest.approx(2 / 3)
    assert Tally().precision == 0.0


def test_summary_counts_judged_days_only() -> None:
    corpus = generate(events=10, devices=2, days=100, seed=2)
    perfect = corpus.labels.copy()
    noisy = corpus.labels.copy()
    noisy[:, :6] = True  # days before the first verdict must not count
    noisy[0, 50] = not noisy[0, 50]
    result = SeedResult(2, corpus, first_judged=6)
    result.runs["cvae"] = MethodRun("cvae", perfect, None, 0.0)
    result.runs["pca"] = MethodRun("pca", noisy, None, 0.0)
    summary = summarise([result], ["cvae", "pca"])

    assert summary["cvae"]["precision"] == 1.0
    assert summary["cvae"]["recall"] == 1.0
    assert summary["cvae"]["data_points"] == 10 * 94
    assert summary["cvae"]["anomalies"] == corpus.labels.sum()
    changed = Tally.of(noisy[:, 6:], corpus.labels[:, 6:])
    assert changed.tp + changed.fp + changed.fn == corpus.labels.sum() + 1
    assert summary["pca"]["precision"] == pytest.approx(changed.precision)
    assert summary["pca"]["recall"] == pytest.approx(changed.recall)
    for name, entry in summary["cvae"]["by_class"].items():
        assert entry["recall"] in (0.0, 1.0), name


def test_evaluate_command_baselines(tmp_path, capsys) -> None:
    out = tmp_path / "table.json"
    main(["evaluate", "--events", "10", "--devices", "2", "--days", "100", "--runs", "2",
          "--methods", "pca,burst", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "Mean over 2 corpora (seeds 0, 1)" in printed
    assert "\npca " in printed
    assert "\nburst " in printed
    document = json.loads(out.read_text())
    assert set(document["methods"]) == {"pca", "burst"}
    for entry in document["methods"].values():
        assert 0.0 <= entry["precision"] <= 1.0
        assert 0.0 <= entry["recall"] <= 1.0
        assert set(entry["seeds"]) == {"0", "1"}
        mean = np.mean([seed["precision"] for seed in entry["seeds"].values()])
        assert entry["precision"] == pytest.approx(mean)
    assert document["corpus"] == {"events": 10, "devices": 2, "days": 100, "seeds": [0, 1]}


def test_evaluate_command_cvae_plots(tmp_path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  min_steps: 20\n  batch_size: 64\n")
    plots = tmp_path / "plots"
    main(["--config", str(config), "evaluate", "--events", "5", "--devices", "1", "--days", "90", "--runs", "1",
          "--methods", "cvae", "--members", "3", "--epochs", "1", "--plot", str(plots), "--plot-events", "0,4"])
    printed = capsys.readouterr()
    assert "cvae" in printed.out
    assert "3 members x 1 epochs, at least 20 steps" in printed.err
    files = sorted(path.name for path in plots.iterdir())
    assert files == ["seed0-event000-cron.png", "seed0-event004-silent.png"]
    assert (plots / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods", "cvae,lof"], "unknown method lof"),
        (["--plot-events", "7", "--events", "5"], "event 7 is outside 0 to 4"),
        (["--plot-events", "x"], "'x' is not an event number"),
    ],
)
def test_evaluate_rejects_bad_options(arguments, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *arguments])
    assert exit_info.value.code == 4
    assert message in capsys.readouterr().err


def test_unwritable_json_fails_first(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--methods", "pca", "--json", str(tmp_path / "missing" / "table.json")])
    assert exit_info.value.code == 4
    assert "not found; create it first" in capsys.readouterr().err
