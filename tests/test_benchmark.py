"""benchmark.py: `--quick` runs every section and prints its table; the structure is checked
(every row present, every ratio and rate a positive number), never a timing value, which
depends on the machine. Same weights -> same outputs is checked where the tables carry it."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmark import markdown_table, ratio, write_results

# section title prefix -> the first cells of its rows (each row: a prefix of its first cell)
EXPECTED = {
    "1. Train step and inference": ["train step clip-rn50", "inference clip-rn50",
                                    "train step clip-vitb16", "inference clip-vitb16"],
    "2. Hand-written backbones": ["ResNet-50 vs torchvision (to layer4)",
                                  "CLIP RN50 tower vs open_clip", "CLIP ViT-B/16 tower vs open_clip"],
    "3. Text side": ["prompt pass fwd+bwd, exact length"],
    "4. Data loading": ["1024x768 JPEG"] * 4,   # train / eval x full / reduced decode
    "5. Evaluation": ["predict_dataset, flip test on", "predict_dataset, flip test off"],
    "6. Peak memory": ["baseline clip-rn50", "promptpose clip-rn50", "baseline clip-vitb16",
                       "promptpose clip-vitb16"],
    "7. Video": ["video path, --boxes", "model alone", "video path, default search"],
}
NUMBER = r"[0-9.]+(?:e[+-]?[0-9]+)?"


def parse_tables(text):
    """{section title: (header cells, [row cells])} of every '### title' + markdown table."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("| ") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if title not in tables:
                tables[title] = (cells, [])
            else:
                tables[title][1].append(cells)
    return tables


def check_number_cell(cell, column):
    """'1.23', '4.5 (4-5)' (rate: median (min-max)) or '1.234 [1.1, 1.3]' (per-round ratio:
    median [min, max]): every number positive, the median within its range."""
    values = [float(v) for v in re.findall(NUMBER, cell)]
    assert values and all(v > 0 for v in values), f"{column}: {cell!r}"
    if len(values) == 3:
        assert values[1] <= values[0] <= values[2], f"{column}: {cell!r}"


def test_quick_run_prints_every_section(tmp_path):
    out_file = tmp_path / "BENCH.md"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), "--quick",
                          "--output", str(out_file)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    tables = parse_tables(run.stdout)
    assert len(tables) == len(EXPECTED), list(tables)
    for prefix, row_starts in EXPECTED.items():
        title = next((t for t in tables if t.startswith(prefix)), None)
        assert title is not None, f"no section {prefix!r} in\n{run.stdout}"
        header, rows = tables[title]
        assert len(rows) == len(row_starts) and all(
            row[0].startswith(start) for row, start in zip(rows, row_starts)), rows
        for row in rows:
            assert len(row) == len(header), row
            for column, cell in zip(header, row):
                if ("ratio" in column or "/s" in column or "MiB" in title) and cell and \
                        column != "model":
                    check_number_cell(cell.split(" vs ")[0], column)
    # same weights -> same outputs; the exact-length prompt pass equals the 77-token one
    _, rows = next(v for t, v in tables.items() if t.startswith("2."))
    assert all(float(row[5]) < 1e-3 for row in rows), rows
    _, rows = next(v for t, v in tables.items() if t.startswith("3."))
    assert float(re.search(r"max abs diff (\S+)", rows[0][3]).group(1)) < 1e-4
    assert "rounds" in run.stdout.splitlines()[0]  # the run's description comes first
    assert out_file.read_text().count("<!-- benchmark.py cpu: begin -->") == 1


def test_unknown_section_is_one_line_error(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), "--quick",
                          "--sections", "train,bogus"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: --sections train,bogus")


def test_without_open_clip_the_backbones_section_is_refused_before_any_work(tmp_path):
    """open_clip comes with requirements-dev.txt: without it the run stops at once, not after
    section 1's minutes, and says what to install or leave out."""
    code = (f"import sys, runpy; sys.path.insert(0, {ROOT!r}); sys.modules['open_clip'] = None; "
            f"sys.argv = ['benchmark.py', '--quick', '--sections', 'train,backbones']; "
            f"runpy.run_path({os.path.join(ROOT, 'benchmark.py')!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "| measurement" not in run.stdout
    line = run.stderr.strip().splitlines()[-1]
    assert "requirements-dev.txt" in line and "--sections train,text,data,eval,memory,video" in line


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
