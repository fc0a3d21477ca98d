"""The training benchmark runs end to end at a tiny size and prints its comparison."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_train_bench_prints_comparison(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_bench.py"), "--events", "10", "--devices", "2",
         "--days", "84", "--members", "2", "--epochs", "2", "--min-steps", "1", "--reference-members", "1",
         "--reference-epochs", "1", "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("Speed ratio (product throughput / reference throughput): ")
    assert re.search(r"\d+\.\dx$", lines[-1])
    assert "840 data points" in result.stdout
    assert "1 x 1 measured, scaled x4" in result.stdout
    assert "member 1 alone" in result.stdout
    assert result.stdout.count("precision ") >= 3
    assert (tmp_path / "bench.json").exists()
