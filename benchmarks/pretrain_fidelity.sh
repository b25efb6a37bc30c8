#!/usr/bin/env bash
# Pretraining fidelity (docs/pretraining.md): every objective with equal tokens
# seen on the two unlabelled FIB cubes, the Perceiver ablation, the held-out
# masked-token MSE and the frozen-encoder transfer probe on the scarce labels.
#   bash benchmarks/pretrain_fidelity.sh [STEPS] [PROBE_STEPS]   (from the repository root)
# A finished stage leaves a .done marker, so an interrupted invocation resumes.
set -euo pipefail
steps="${1:-300}"
probe_steps="${2:-60}"
out=runs/fidelity
tu=".venv/bin/tokenunify"
mkdir -p "$out"
pre() {  # name, overrides...
    local name="$1"; shift
    [ -f "$out/$name.done" ] && return  # finished in an earlier invocation
    $tu pretrain -c configs/pretrain_fib.yaml --no-progress train.steps="$steps" train.preview_every="$steps" \
        out_dir="$out/$name" "$@" --overwrite | tee "$out/$name.log"
    touch "$out/$name.done"
}
single() { echo "schedule.kind=single" "schedule.objectives=[$1]" "schedule.shares=[1.0]"; }
pre random $(single random)
pre next $(single next)
pre next_all $(single next_all)
pre tokenunify_staged schedule.kind=staged
pre tokenunify_mixture schedule.kind=mixture
pre next_features $(single next) model.next_context=features
[ -f "$out/heldout.txt" ] || .venv/bin/python benchmarks/pretrain_heldout.py "$out"/{random,next,next_all,tokenunify_staged,tokenunify_mixture,next_features}/checkpoints/last.pt \
    | tee "$out/heldout.txt"
probe() {  # name, init checkpoint or "none"
    local name="$1" init="$2" args=()
    [ -f "$out/probe_$name.done" ] && return
    [ "$init" != none ] && args=(--init "$init")
    $tu train -c configs/fib_medulla.yaml --no-progress model.name=tokenunify model.preset=tiny "data.train_z=[0,16]" \
        "train.crop=[32,64,64]" train.steps="$probe_steps" train.val_every="$probe_steps" train.lr=0.001 \
        train.freeze_encoder=true train.max_minutes=null "predict.block=[48,128,128]" \
        out_dir="$out/probe_$name" --overwrite "${args[@]}" | tee "$out/probe_$name.log"
    touch "$out/probe_$name.done"
}
probe random_init none
for name in random next next_all tokenunify_staged tokenunify_mixture; do
    probe "$name" "$out/$name/checkpoints/last.pt"
done
grep -H "VOI" "$out"/probe_*.log | tee "$out/probe.txt"
