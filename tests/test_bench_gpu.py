"""benchmarks/bench_gpu.py on CPU: a tiny smoke run of every row, and its loops checked against `refine` in float64."""
import json

import torch

from helpers import load_module
from ofg_lib.optimizer import refine


def load_bench():
    return load_module("benchmarks/bench_gpu.py", "bench_gpu")


def test_cpu_smoke_run_writes_every_row_ratio_and_agreement_and_judges_no_goal(tmp_path):
    bench = load_bench()
    out = tmp_path / "bench_gpu.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--device", "cpu", "--size", "32", "32", "32", "--repeats", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["complete"] and out.with_suffix(".md").exists()
    assert data["models"] == ["voxelmorph-1-tiny", "transmorph-tiny"]  # CPU defaults to the tiny variants
    rows = {r["name"]: r for r in data["rows"]}
    steps = [n for m in data["models"] for n in bench.step_names(m).values()]
    expected = [bench.LNCC_OURS, bench.LNCC_PAPER, bench.LOOP_OURS, bench.LOOP_PAPER, bench.LEVER_NOSYNC,
                bench.LEVER_PLAIN, bench.LEVER_UNFUSED, bench.LEVER_COMPILE, *steps]
    assert sorted(rows) == sorted(expected)

    skipped = {n for n, r in rows.items() if r["skipped"]}
    assert skipped == {bench.LEVER_COMPILE, *(bench.step_names(m)["ofg_amp"] for m in data["models"])}
    for name, r in rows.items():
        if name not in skipped:
            assert r["ms"] > 0, name
            assert r["peak_mib"] is None, name  # not measured on CPU
            assert (r["ratio"] is None) == (r["vs"] is None), name
    for name in (bench.LOOP_PAPER, bench.LEVER_NOSYNC, bench.LEVER_PLAIN, bench.LEVER_UNFUSED):
        r = rows[name]
        assert r["max_abs_diff"] >= 0 and 0 <= r["frac_over_atol"] <= 1 and r["energy_rel_diff"] >= 0, name
        assert isinstance(r["agrees"], bool), name
    assert rows[bench.LEVER_NOSYNC]["agrees"] and rows[bench.LEVER_PLAIN]["agrees"]

    assert data["ratios"] and all(v > 0 for v in data["ratios"].values())
    assert {g["goal"] for g in data["goals"]} == {"a", "b", "c", "d"}
    assert all(g["status"] == bench.NOT_JUDGED for g in data["goals"])


def test_the_benchmark_loops_compute_what_refine_computes_in_float64():
    bench = load_bench()
    moving, fixed, disp = bench.make_inputs((16, 16, 16), torch.device("cpu"), torch.float64)
    expected = refine(disp, moving, fixed)
    loops = {"published": bench.published_loop(disp, moving, fixed),
             "no sync": bench.lever_loop(bench.make_energy(moving, fixed), disp),
             "plain lncc": bench.lever_loop(bench.make_energy(moving, fixed, fixed_stats=False), disp),
             "unfused adam": bench.lever_loop(bench.make_energy(moving, fixed), disp, fused=False)}
    for name, field in loops.items():
        assert float((field - expected).abs().max()) < 1e-8, name


def test_a_run_cut_short_is_summarised_from_the_rows_it_measured(tmp_path):
    """`--summarise`: the goals of a GPU run cut by its time budget, computed from its rows; missing rows read
    'not measured', and the run stays marked incomplete."""
    b = load_bench()
    meta = {"device": "cuda", "device_name": "GPU", "torch": "x", "cuda": "13.0", "size": [160, 192, 224],
            "threads": 2, "repeats": 3, "models": ["voxelmorph-1", "transmorph"], "atol_voxels": 1e-3,
            "max_frac": 5e-3, "peak_memory": "MiB", "tf32": {}, "goals_judged": True}

    def row(name, ms, peak=None, vs=None):
        return {"section": "x", "name": name, "ms": ms, "peak_mib": peak, "vs": vs, "ratio": None,
                "max_abs_diff": None, "frac_over_atol": None, "energy_rel_diff": None, "agrees": None, "skipped": None}
    vm, tm = b.step_names("voxelmorph-1"), b.step_names("transmorph")
    rows = [row(b.LOOP_OURS, 40.0), row(b.LOOP_PAPER, 400.0), row(vm["unsup"], 50.0), row(vm["ofg"], 100.0, 10.0),
            row(vm["ofg_paper"], 900.0, 12.0), row(tm["ofg"], 310.0, 20.0)]
    path = tmp_path / "bench_gpu.json"
    path.write_text(json.dumps({**meta, "complete": False, "rows": rows, "ratios": {}, "goals": []}))
    b.main(["--summarise", str(path)])
    data = json.loads(path.read_text())
    goals = {g["text"].split(":")[0]: g for g in data["goals"]}
    assert data["complete"] is False and len(data["rows"]) == 6
    assert goals["10-step inner loop at 160x192x224"]["status"] == "not met"          # 40 > 30 ms
    assert goals["VoxelMorph-1 OFG step (published unsupervised step on H100"]["status"] == "met"   # 100 <= 121
    assert goals["TransMorph OFG step"]["status"] == "not met"                          # 310 > 300
    assert goals["voxelmorph-1"]["status"] == "met" and goals["transmorph"]["status"] == "not measured"
    assert data["ratios"]["10-step loop: published / ours"] == 10.0
    assert "(incomplete)" in path.with_suffix(".md").read_text()
