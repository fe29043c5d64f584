"""benchmark.py: every section runs in --quick mode and prints its table; the results file
keeps hand-written notes. No timing is asserted (the numbers depend on the machine)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark import markdown_table, ratio, write_results  # noqa: E402

EXPECTED_ROWS = [
    "train step clip-rn50", "inference clip-rn50", "train step clip-vitb16", "inference clip-vitb16",
    "ResNet-50 vs torchvision (to layer4)", "CLIP RN50 trunk vs open_clip (no attnpool)",
    "CLIP RN50 tower vs open_clip", "CLIP ViT-B/16 tower vs open_clip",
    "prompt pass fwd+bwd, exact length", "text path (prompt learner + prompt encoder",
    "1024x768 JPEG", "synthetic 320x240, train (augmented)", "synthetic 320x240, eval",
    "predict_dataset, flip test on", "predict_dataset, flip test off",
    "predict_batch, text cached vs recomputed",
    "baseline clip-rn50", "promptpose clip-vitb16",
    "channels_last vs contiguous, PromptPose clip-rn50 train step",
    "AdamW step fused vs default", "bf16 autocast vs fp32",
]


def table_rows(text):
    """{first cell: [cells]} of every markdown table row in text (header rows included)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_quick_run_prints_every_section(tmp_path):
    out_file = tmp_path / "BENCH.md"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), "--quick",
                          "--input-size", "64", "--batch-size", "2", "--reps", "1",
                          "--output", str(out_file)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = table_rows(run.stdout)
    for expected in EXPECTED_ROWS:
        assert any(k.startswith(expected) for k in rows), f"no row {expected!r} in\n{run.stdout}"
    for title in ("### 1.", "### 2.", "### 3.", "### 4.", "### 5.", "### 6.", "### 7."):
        assert title in run.stdout
    # correctness carried by the tables: same weights -> same outputs, exact-length = 77 tokens
    for key, cells in rows.items():
        if key.endswith("vs open_clip") or key.startswith("ResNet-50 vs torchvision"):
            assert float(cells[5]) < 1e-3, cells
    exact = next(cells for key, cells in rows.items() if key.startswith("prompt pass"))
    assert float(re.search(r"max abs diff (\S+)", exact[3]).group(1)) < 1e-4
    assert out_file.read_text().count("<!-- benchmark.py cpu: begin -->") == 1


def test_write_results_replaces_only_its_block(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nnotes written by a person\n")
    cpu = type("Device", (), {"type": "cpu"})()
    cuda = type("Device", (), {"type": "cuda"})()
    write_results(str(path), cpu, "first cpu table")
    write_results(str(path), cuda, "gpu table")
    write_results(str(path), cpu, "second cpu table")
    text = path.read_text()
    assert "notes written by a person" in text and "gpu table" in text
    assert "second cpu table" in text and "first cpu table" not in text
    assert text.count("<!-- benchmark.py cpu: begin -->") == 1


def test_ratio_is_per_round_and_table_is_markdown():
    text, med = ratio([2.0, 3.0, 10.0], [1.0, 1.0, 4.0])  # per-round ratios 2, 3, 2.5
    assert med == 2.5 and text == "2.500 [2.000, 3.000]"
    assert markdown_table(["a", "b"], [[1, 2]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
