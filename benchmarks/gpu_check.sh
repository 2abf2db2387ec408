#!/usr/bin/env bash
# The GPU check: on a CUDA machine, run the GPU tests, the engine benchmark, a 64 x 3 simulation, SFT/DPO
# training against plain trl, 2 GRPO steps and a small evaluation on the embedded SmolLM2, then print one
# summary table. CI has no GPU; run this whenever a CUDA machine is at hand:
#
#   bash benchmarks/gpu_check.sh            # from the repository root, aloekit installed
#
# PYTHON picks the interpreter (default python3), GPU_CHECK_OUT the folder for the log and outputs
# (default ./gpu-check; $OUT when set), GPU_CHECK_STEPS the steps to run (names separated by spaces or
# commas; default all of them: tests engine simulate train_sft grpo eval train_dpo), so that a machine lent
# for a few minutes a call can run them over several calls. Each step has its own time limit (930 s in
# all); a failed step is reported in the table and the rest still run. Exit status: 2 for an unknown step
# name (nothing run), else non-zero if any step failed.
set -u
ALL_STEPS="tests engine simulate train_sft grpo eval train_dpo"
STEPS=" $(echo "${GPU_CHECK_STEPS:-$ALL_STEPS}" | tr ',' ' ') "
for name in $STEPS; do
  case " $ALL_STEPS " in
    *" $name "*) ;;
    *) echo "gpu_check.sh: GPU_CHECK_STEPS: unknown step '$name' (steps: $ALL_STEPS)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
OUTDIR=${GPU_CHECK_OUT:-${OUT:-gpu-check}}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
ROWS=()
FAILED=0

step() {  # step NAME LIMIT_S COMMAND...: run, log, time, record the result line (only the steps asked)
  local name=$1 limit=$2; shift 2
  case $STEPS in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name: $*" | tee -a "$LOG"
  local started=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$? took=$((SECONDS - started))
  cat "$WORK/$name.err" "$WORK/$name.out" | tee -a "$LOG" | tail -n 25
  [ $rc -eq 0 ] || FAILED=1
  ROWS+=("$name|$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")|${took}s|$(summary_of "$name")")
}

summary_of() {  # the one number each step is run for, read from its output
  case $1 in
    tests) grep -E "passed|failed|error" "$WORK/tests.out" | tail -n 1 ;;
    engine) grep -E "^ +(1|64) \||64 concurrent / single" "$WORK/engine.out" | tr -s ' ' \
      | sed -E 's/^ ?([0-9]+) \| /\1 concurrent: /; s/ \| / \/ /g' | paste -sd ';' ;;  # no "|" in the table
    simulate) "$PY" - "$WORK/simulate.out" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
try:
    r = json.loads(text)
except ValueError:
    sys.exit()
calls = sum(u.get("calls", 0) for u in r.get("usage", {}).values())
print(f"{r.get('statuses')}, {calls} calls, {r.get('turns_saved')} turns")
PYEOF
    ;;
    train_sft | train_dpo) grep -E "^aloe train|^ratio" "$WORK/$1.out" | paste -sd ';' ;;
    grpo) grep -oE '"(steps|runtime_s)": [0-9.]+' "$WORK/grpo.out" | paste -sd ' ' ;;
    eval) grep -oE '"(avg|turns_saved)": [0-9.]+' "$WORK/eval.out" | paste -sd ' ' ;;
  esac
}

nvidia-smi -L 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$LOG"
# transformers < 5.19 lacks what the continuous engine needs: the GPU tests then check the static engine
# on CUDA and the engine benchmark's columns say "static (asked continuous)". Install a newer one first.
"$PY" -c "from aloekit.agents.backends.continuous import continuous_batching_available as a; \
print('continuous batching:', a() or 'available')" 2>&1 | tee -a "$LOG"

# Converting the GGUF to float weights (once) is not part of any step's time.
"$PY" -c "from aloekit.agents.backends.local import converted_model_dir, find_smollm2_gguf as f; converted_model_dir(f())" \
  2>&1 | tee -a "$LOG"
# Most important first: a step cut short by the caller's own time limit still leaves the log.
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py \
  tests/integration/test_smollm2.py tests/agents/test_continuous_engine.py tests/agents/test_decode_step.py
step engine 120 "$PY" benchmarks/bench_engine.py --concurrency 1,8,32,64
step simulate 150 "$PY" -m aloekit.cli --db "$WORK/sim.db" --json simulate --conversations 64 --turns 3 \
  --role all=local:smollm2
step train_sft 120 "$PY" benchmarks/bench_train.py --method sft --steps 10 --batches 16,32,64
step grpo 150 "$PY" -m aloekit.cli --db "$WORK/grpo.db" --json train grpo --out "$WORK/grpo" --personas 1 \
  --turns 2 --group 2 --max-steps 2 --max-completion-length 24
step eval 120 "$PY" -m aloekit.cli --db "$WORK/eval.db" --json eval --model local:smollm2 --personas 4 --turns 2
step train_dpo 120 "$PY" benchmarks/bench_train.py --method dpo --steps 10 --batches 16,32,64

{
  echo
  echo "GPU check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
  echo "step | result | wall | measured"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$LOG"
exit $FAILED
