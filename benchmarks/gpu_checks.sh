#!/usr/bin/env bash
# Every check that needs a GPU, in one run: tests on the GPU, benchmarks, full training runs.
#   OUT=gpu_results bash benchmarks/gpu_checks.sh [tests] [cnn_bench] [p2g_bench] [hopfield]
#       [report] [cnn_runs] [p2g_runs] [progress_bench]
# (no argument = the first five; cnn_runs and p2g_runs are the CLIs' own runs, which the report
# also trains; progress_bench: what progress inside an epoch costs the scan path). Results land in $OUT as few files: log.txt (everything printed),
# *.jsonl / *.md results and runs.tar.gz (summaries, metrics and plots; no checkpoints).
# Data (../shared does not travel to a GPU machine): the Intel zip from $INTEL_ZIP (default
# .device_data/intel48_kaggle_layout.zip) and the course P2G TSVs from $P2G_DIR (default
# .device_data/p2g), git-ignored copies of ../shared/data/{intel48_kaggle_layout.zip,p2g}.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
INTEL_ZIP="${INTEL_ZIP:-.device_data/intel48_kaggle_layout.zip}"
P2G_DIR="${P2G_DIR:-.device_data/p2g}"
CNN_EPOCHS="${CNN_EPOCHS:-40}"          # smaller only to try the script itself on a CPU
P2G_EPOCHS="${P2G_EPOCHS:-20}"
REPORT_ARGS="${REPORT_ARGS:-}"          # --quick only to try the script itself on a CPU
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HW2JAX_CACHE="${HW2JAX_CACHE:-/tmp/hw2jax-cache}"
RUNS=/tmp/hw2jax-gpu-runs
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(tests cnn_bench p2g_bench hopfield report)
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/log.txt"; local rc=${PIPESTATUS[0]}; log "exit $rc"; }

log "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
run "$PY" -c 'import jax, flax, optax, orbax.checkpoint as o; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'

for step in "${steps[@]}"; do
  case "$step" in
    tests)
      # The suite on the GPU backend (CPU-only subprocess tests pin JAX_PLATFORMS=cpu themselves).
      run "$PY" -m pytest -q -x -p no:cacheprovider tests -m "not slow" --durations=10
      ;;
    cnn_bench)
      run "$PY" -m benchmarks.cnn_speed --repeats=5 --out="$OUT/cnn_speed.jsonl"
      ;;
    cnn_runs)
      [[ -f "$INTEL_ZIP" ]] || { log "missing $INTEL_ZIP: copy ../shared/data/intel48_kaggle_layout.zip there"; continue; }
      start=$(date +%s)
      run "$PY" -m experiments.cnn --data_path="$INTEL_ZIP" --lr=0.1,0.01,0.001 \
          --epochs="$CNN_EPOCHS" --workdir="$RUNS/vanilla" --fresh
      run "$PY" -m experiments.cnn --data_path="$INTEL_ZIP" --model=bn_gap --lr=0.01 \
          --epochs="$CNN_EPOCHS" --workdir="$RUNS/bn_gap" --fresh
      log "wall time of the four ${CNN_EPOCHS}-epoch runs (incl. data loading, compilation): $(( $(date +%s) - start )) s"
      cat "$RUNS/vanilla/table_2_1.md" > "$OUT/cnn_table_2_1.md"
      "$PY" - "$RUNS" >> "$OUT/cnn_table_2_1.md" <<'EOF'
import json, sys
s = json.load(open(f"{sys.argv[1]}/bn_gap/summary.json"))
f = s["final"]
print(f"| bn_gap | 0.01 | {f['val_accuracy']:.4f} | {f['test_accuracy']:.4f} | 0.7279 | 0.7440 | "
      f"{s['status']} | bn_gap/curves.png |")
EOF
      tar --exclude=checkpoints -czf "$OUT/runs.tar.gz" -C "$RUNS" .
      ;;
    p2g_bench)
      [[ -d "$P2G_DIR" ]] || { log "missing $P2G_DIR: copy ../shared/data/p2g there"; continue; }
      run "$PY" -m benchmarks.p2g_speed --data_path="$P2G_DIR" --out="$OUT/p2g_speed.json"
      run "$PY" -m benchmarks.p2g_speed --data_path="$P2G_DIR" --torch=false --widths=1
      run "$PY" -m benchmarks.p2g_speed --data_path="$P2G_DIR" --torch=false --unroll=4
      ;;
    progress_bench)
      [[ -d "$P2G_DIR" ]] || { log "missing $P2G_DIR: copy ../shared/data/p2g there"; continue; }
      run "$PY" -m benchmarks.progress_cost --workloads=cnn_scan,p2g --cnn_scan_images=12630 \
          --p2g_data_path="$P2G_DIR" --p2g_words=0 --repeats=5
      ;;
    p2g_runs)
      [[ -d "$P2G_DIR" ]] || { log "missing $P2G_DIR: copy ../shared/data/p2g there"; continue; }
      start=$(date +%s)
      run "$PY" -m experiments.p2g --data_path="$P2G_DIR" --epochs="$P2G_EPOCHS" --beam=5 \
          --topp=0.8 --workdir="$RUNS/p2g_noattention" --fresh
      run "$PY" -m experiments.p2g --data_path="$P2G_DIR" --epochs="$P2G_EPOCHS" --beam=5 \
          --topp=0.8 --attention --workdir="$RUNS/p2g_attention" --fresh
      log "wall time of the two P2G runs: $(( $(date +%s) - start )) s"
      cat "$RUNS/p2g_noattention/tables.md" "$RUNS/p2g_attention/tables.md" > "$OUT/p2g_tables.md"
      tar --exclude=checkpoints -czf "$OUT/runs.tar.gz" -C "$RUNS" .
      ;;
    hopfield)
      run "$PY" -m experiments.hopfield --check --workdir="$RUNS/hopfield_check"
      run "$PY" -m benchmarks.hopfield_speed --out="$OUT/hopfield_speed.jsonl"
      run "$PY" -m benchmarks.hopfield_speed --dtype=bfloat16 --out="$OUT/hopfield_speed.jsonl"
      ;;
    report)
      # The seed's own runs (Q1, Q2, Q3) cold in one invocation, then the Q2.4 ablations (the
      # same command with every part: the others resume as finished), each timed.
      [[ -f "$INTEL_ZIP" && -d "$P2G_DIR" ]] || { log "missing $INTEL_ZIP or $P2G_DIR"; continue; }
      # A cache of its own: cold like a fresh machine (Intel conversion and XLA compilation).
      rm -rf /tmp/hw2jax-report-cache
      export HW2JAX_CACHE=/tmp/hw2jax-report-cache
      args=(--workdir="$RUNS/report" --intel_data_path="$INTEL_ZIP" --p2g_data_path="$P2G_DIR" $REPORT_ARGS)
      start=$(date +%s)
      run "$PY" -m experiments.report "${args[@]}" --parts=q1,q2,q3 --fresh
      log "report wall time, Q1+Q2+Q3 cold (process start, data conversion, compilation): $(( $(date +%s) - start )) s"
      start=$(date +%s)
      run "$PY" -m experiments.report "${args[@]}"
      log "report wall time, Q2.4 ablations (+ resuming the rest): $(( $(date +%s) - start )) s"
      cp "$RUNS/report/REPORT.md" "$RUNS/report/report.json" "$OUT/"
      tar --exclude=checkpoints -czf "$OUT/report.tar.gz" -C "$RUNS" report
      ;;
    *) log "unknown step $step";;
  esac
done
log "done"
