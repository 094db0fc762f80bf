"""The GPU acceptance command's own plumbing, on the CPU (``--dry-run``): every step runs and
passes, and its figures reach the JSON and the Markdown."""
import json
import subprocess
import sys

import pytest

COMMAND = [sys.executable, "-m", "search.bench.gpu_acceptance"]


@pytest.mark.slow
def test_the_dry_run_passes_every_step_and_writes_their_figures(tmp_path):
    out = tmp_path / "acceptance"
    finished = subprocess.run([*COMMAND, str(out), "--dry-run"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "6 of 6 steps passed" in finished.stdout
    report = json.loads((out / "acceptance.json").read_text())
    steps = {step["step"]: step for step in report["steps"]}
    assert list(steps) == ["cuda-tests", "layers-bf16", "models", "search", "pick", "ddp-train"]
    assert all(step["verdict"] == "passed" for step in steps.values())
    assert steps["cuda-tests"]["figures"]["skipped"] > 0  # no GPU here: collected, and skipped
    assert {row["name"] for row in steps["layers-bf16"]["figures"]["rows"]} >= {"HiLo (ws 2, a 0.9)", "MSA"}
    assert all(row["ours_img_s"] > 0 and row["official_img_s"] > 0 for row in steps["models"]["figures"]["rows"])
    search = steps["search"]["figures"]
    assert search["by_status"]["complete"] >= 1 and 0 < search["device_seconds"] and search["front"]
    assert steps["pick"]["figures"]["provider"] == "CPUExecutionProvider"
    assert steps["pick"]["figures"]["max_abs_difference"] < 1e-3
    assert steps["ddp-train"]["figures"]["processes"] == 1 and len(steps["ddp-train"]["figures"]["epochs"]) == 1
    markdown = (out / "acceptance.md").read_text()
    assert "| search | passed |" in markdown and "## Whole models" in markdown


def test_a_used_folder_and_an_unknown_step_are_refused_in_one_line(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    used = subprocess.run([*COMMAND, str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert used.returncode == 2 and used.stderr.count("\n") == 1 and "expected a new or empty folder" in used.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]
    unknown = subprocess.run([*COMMAND, str(tmp_path / "new"), "--only", "everything"], capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "--only 'everything' is unknown" in unknown.stderr
    assert not (tmp_path / "new").exists()
