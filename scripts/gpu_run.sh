#!/usr/bin/env bash
# The one script for a GPU session (issue 14): versions, setup, the full-size benchmark, a short reproduce of
# notebooks 02-05 (params/gpu_short.yaml), and every result copied to $OUT. Hard budget: TOTAL_S seconds for
# everything; each part runs under `timeout` with at most what is left, and a part cut short keeps what it wrote
# (the benchmark rewrites its table after every row; each finished notebook is already in place).
#
#     bash scripts/gpu_run.sh                              # results in results/gpu_run/
#     OUT=/tmp/gpu TOTAL_S=420 bash scripts/gpu_run.sh     # elsewhere, a tighter budget
#     NOTEBOOKS="02 05" BENCH_REPEATS=3 bash scripts/gpu_run.sh
#     DEVICE=cpu SIZE="32 32 32" PROFILE=cpu NOTEBOOKS=02 bash scripts/gpu_run.sh   # rehearse the plumbing on CPU
#     PY=python3 SETUP_S=0 bash scripts/gpu_run.sh        # a machine without network: packages already importable
#
# Parts, in this order: setup, the benchmark, the notebooks in NOTEBOOKS, the 3-D confirmation of issue 19
# (CONVERGE3D_S seconds: scripts/converge_parallel.py on configs/studies/converge3d.yaml, training stopped at
# CONVERGE3D_TRAIN_S; report in $OUT/converge3d; 0 skips it), then the notebooks in NOTEBOOKS_LAST.
#
# Exit status 0 when every part finished, 1 otherwise; the log is $OUT/gpu_run.log.
set -uo pipefail  # not -e: a failed part must not stop the parts after it, nor the copy at the end
cd "$(dirname "$0")/.."

OUT=${OUT:-results/gpu_run}
TOTAL_S=${TOTAL_S:-480}            # the whole script, seconds
SETUP_S=${SETUP_S:-240}            # make setup (installs the CUDA build of torch on a fresh machine)
BENCH_S=${BENCH_S:-200}            # benchmarks/bench_gpu.py at 160x192x224
BENCH_REPEATS=${BENCH_REPEATS:-5}
NOTEBOOKS=${NOTEBOOKS-02 03 04 05}  # empty: none
NOTEBOOKS_LAST=${NOTEBOOKS_LAST-}   # run after the 3-D confirmation
CONVERGE3D_S=${CONVERGE3D_S:-0}     # the 3-D confirmation (issue 19); 0: skipped
CONVERGE3D_TRAIN_S=${CONVERGE3D_TRAIN_S:-180}
CONVERGE3D_SPEC=${CONVERGE3D_SPEC:-configs/studies/converge3d.yaml}
PROFILE=${PROFILE:-gpu_short}      # params/$PROFILE.yaml
DEVICE=${DEVICE:-cuda}             # cpu only to rehearse this script
SIZE=${SIZE:-160 192 224}
RESERVE_S=30                       # kept back for timeout's grace period and the copy at the end
PY=${PY:-.venv/bin/python}         # python3 where the packages are importable without a venv (SETUP_S=0)
export PYDEVD_DISABLE_FILE_VALIDATION=1  # as the Makefile does

mkdir -p "$OUT"
STATUS=()

# part NAME WANT_S CMD...: run CMD under timeout for at most min(WANT_S, what is left); record how it ended.
part() {
    local name=$1 want=$2 left=$((TOTAL_S - RESERVE_S - SECONDS)) t0=$SECONDS rc
    shift 2
    if ((want > left)); then want=$left; fi
    if ((want < 10)); then
        echo "== $name: skipped, no time given or left"
        STATUS+=("$name: skipped (no time given or left)")
        return 1
    fi
    echo "== $name (at most ${want} s; ${SECONDS} s used of ${TOTAL_S})"
    timeout -s INT -k 15 "$want" "$@"  # SIGINT first: papermill then shuts its kernel down
    rc=$?
    if ((rc == 124 || rc == 137)); then
        STATUS+=("$name: cut off at ${want} s")
    else
        STATUS+=("$name: exit $rc in $((SECONDS - t0)) s")
    fi
    return $rc
}

copy_results() {
    local src=results/$PROFILE dst f
    dst=$(cd "$OUT" && pwd)/reproduce
    mkdir -p "$dst"
    cp "params/$PROFILE.yaml" "$OUT/"
    if [[ -d $src ]]; then  # executed notebooks, comparison.md/json, run summaries; not checkpoints
        (cd "$src" && find . -type f \( -name '*.ipynb' -o -name '*.json' -o -name '*.md' -o -name '*.yaml' \) \
            -print0 | xargs -0 -r cp --parents -t "$dst/")
    fi
    # an interrupted or failed notebook is left as .NN_name.partial.ipynb: give it a visible name
    find "$dst" -name '.*.partial.ipynb' | while read -r f; do
        mv "$f" "$(dirname "$f")/$(basename "$f" | cut -c2-)"
    done
}

finish() {
    copy_results
    echo
    echo "== summary (${SECONDS} s used of ${TOTAL_S})"
    printf '  %s\n' "${STATUS[@]}"
    [[ -f $OUT/bench_gpu.md ]] && cat "$OUT/bench_gpu.md"
    find "$OUT/reproduce" -name comparison.md -exec sh -c 'echo "== $1"; cat "$1"' _ {} \;
    echo "== files in $OUT"
    find "$OUT" -type f | sort
    for s in "${STATUS[@]}"; do [[ $s == *"exit 0 in"* ]] || exit 1; done
    exit 0
}

main() {
    echo "== gpu_run: $(date -u +%FT%TZ), revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi not found"; fi

    if ((SETUP_S > 0)); then
        part "setup" "$SETUP_S" make setup
    else
        echo "== setup: skipped (SETUP_S=0), using $PY"
    fi
    "$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn",
torch.backends.cudnn.version(), "| GPU:", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
    if [[ $DEVICE == cuda ]] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
        echo "torch sees no GPU (a CPU build of torch, or no driver): nothing more to run"
        STATUS+=("cuda: not available")
        finish
    fi

    # shellcheck disable=SC2086  # SIZE is three words
    part "bench_gpu" "$BENCH_S" "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --size $SIZE \
        --repeats "$BENCH_REPEATS" --out "$OUT/bench_gpu.json"

    # One notebook per call, so that one failing does not stop the others. This is what `make reproduce
    # PROFILE=gpu_short` runs after `make setup`, but the Makefile has no way to pass --only.
    for nb in $NOTEBOOKS; do
        part "notebook $nb" "$TOTAL_S" "$PY" scripts/notebooks.py reproduce --profile "$PROFILE" --only "$nb"
    done
    if ((CONVERGE3D_S > 0)); then
        part "converge3d" "$CONVERGE3D_S" "$PY" scripts/converge_parallel.py "$CONVERGE3D_SPEC" \
            --train-s "$CONVERGE3D_TRAIN_S" --report "$OUT/converge3d"
    fi
    for nb in $NOTEBOOKS_LAST; do
        part "notebook $nb" "$TOTAL_S" "$PY" scripts/notebooks.py reproduce --profile "$PROFILE" --only "$nb"
    done
    finish
}

main 2>&1 | tee -a "$OUT/gpu_run.log"
exit "${PIPESTATUS[0]}"
