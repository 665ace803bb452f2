"""benchmarks/bench_cpu.py: a tiny run writes every row with both paths, their agreement and a ratio."""
import json

import torch

from helpers import load_module
from ofg_lib.models.layers import cpu_channels_last
from ofg_lib.optimizer import cpu_kernels


def test_tiny_run_times_both_paths_and_checks_their_agreement(tmp_path):
    bench = load_module("benchmarks/bench_cpu.py", "bench_cpu")
    out = tmp_path / "bench_cpu.json"
    threads, switch, kernels = torch.get_num_threads(), cpu_channels_last(), cpu_kernels()
    try:
        bench.main(["--repeats", "1", "--sizes", "32x32x32", "32x48", "--loop-sizes", "16x20x24", "24x28",
                    "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert set(rows) == {"VoxelMorph-1 forward+backward, 32x32x32", "VoxelMorph-1 forward+backward, 32x48",
                         "VoxelMorph-1-tiny forward+backward, 32x32x32",
                         "VoxelMorph-1 unsupervised training step, 32x32x32", "VoxelMorph-1 ofg training step, 32x32x32",
                         "VoxelMorph-1 unsupervised training step, 32x48", "VoxelMorph-1 ofg training step, 32x48",
                         "10-step inner loop (refine), 16x20x24", "10-step inner loop (refine), 24x28"}
    for r in rows.values():
        assert r["baseline_ms"] > 0 and r["new_ms"] > 0 and r["ratio"] == r["baseline_ms"] / r["new_ms"]
    assert rows["VoxelMorph-1 forward+backward, 32x32x32"]["max_rel_diff"] < 1e-5
    for size in ("16x20x24", "24x28"):
        r = rows[f"10-step inner loop (refine), {size}"]
        assert 0 <= r["max_field_diff"] < 0.05 and r["new_vs_float64"] <= 1.5 * r["baseline_vs_float64"] + 1e-5
    assert data["goals"] == []                      # goals are judged at 48x64x64 and 80x96x112 only
    stages = {k["stage"]: k["ms"] for k in data["kernels"]["stages"]}
    assert data["kernels"]["size"] == "16x20x24" and all(ms > 0 for ms in stages.values())
    assert {"set-up: the fixed image's statistics", "warp, its slope and the moments J, J^2, IJ",
            "Adam update"} <= set(stages)
    ops = data["profile"]["ops"]
    assert data["profile"]["size"] == "32x32x32" and 0 < sum(o["share"] for o in ops) <= 1 + 1e-9
    assert any("conv" in o["op"] for o in ops)       # the network's time is in its convolutions
    text = out.with_suffix(".md").read_text()
    assert "| row | baseline ms |" in text and "calls per pass" in text and "| stage | ms |" in text
    assert cpu_channels_last() == switch and cpu_kernels() == kernels    # the switches are left as they were


def test_the_loop_profile_names_where_the_inner_loop_spends_its_time():
    bench = load_module("benchmarks/bench_cpu.py", "bench_cpu")
    ops = bench.profile_loop((16, 16, 16), top=20)
    assert 0 < sum(o["share"] for o in ops) <= 1 + 1e-9
    assert any("grid_sampler" in o["op"] for o in ops)     # warp forward/backward is among the top ops
