#!/usr/bin/env bash
# The experiments of RESULTS.md, each one command (resumable: run again to continue; finished runs
# are kept, runs of other settings refused). Usage: bash scripts/experiments.sh NAME [NAME ...]
# Runs go to runs/ (not committed); summaries, curves and selected models are copied to results/.
# One thread each: two of these can share the 2-core machine (never while benchmarking).
set -euo pipefail
cd "$(dirname "$0")/.."
P=".venv/bin/phasedlstm"
COMMON=(--threads 1 --no-progress)

freq() {  # the paper's frequency tasks (issue 10): 110 units, batch 32, Adam 1e-3, clip 10, 70 epochs,
    # fresh training data every epoch, 10,000 test sequences (the test split read every 5th epoch,
    # at the last and at every new best on validation)
    local cond=$1 models=$2 seeds=$3
    $P compare --task "freq-$cond" --models "$models" --seeds "$seeds" --epochs 70 --n-test 10000 \
        --test-every 5 --out "runs/paper/freq-$cond" "${COMMON[@]}"
}

rows() {  # the lecture's model on sequential MNIST by rows (issue 11): projection 64 -> layer (128) ->
    # mean over time -> linear -> log-softmax; Adam 1e-3, batch 128, clip 10
    local out=$1 epochs=$2 models=$3 seeds=$4; shift 4
    $P compare --task smnist-rows --models "$models" --seeds "$seeds" --epochs "$epochs" --hidden-size 128 \
        --pooling mean --batch-size 128 --out "runs/lecture/$out" "${COMMON[@]}" "$@"
}

for name in "$@"; do
    case "$name" in
        freq-async|freq-standard|freq-highres)
            c=${name#freq-}
            freq "$c" phased,lstm 0,1,2
            freq "$c" peephole,layernorm 0 ;;
        rows-027) rows rows-027-2ep 2 lstm,peephole,phased,layernorm,torch-lstm 0,1,2 --classes 0,2,7 ;;
        rows-10) rows rows-10 10 lstm,peephole,phased,layernorm,torch-lstm 0,1,2 ;;
        *) echo "unknown experiment $name" >&2; exit 2 ;;
    esac
done
