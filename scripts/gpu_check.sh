#!/usr/bin/env bash
# The CUDA check (issue 27): the GPU tests (`pytest -m gpu`: tests/test_gpu.py, the only module
# marked gpu, named so that modules needing packages a GPU image may lack are not collected),
# then both speed presets on CUDA, printing each one's test accuracy, precision and wall time.
# Stops with exit code 2 and one line where there is no CUDA.
#
#   scripts/gpu_check.sh --prepare   here, on a CPU machine: build/gpu_check/ holds what a bare
#                                    GPU machine lacks (hydra, omegaconf and antlr4, pure Python,
#                                    copied from .venv; Fashion-MNIST's four files): ~36 MB
#   scripts/gpu_check.sh             on the GPU machine; through the device tool:
#                                    run(command="scripts/gpu_check.sh", carry=["build/gpu_check"],
#                                        timeout_s=540)
#
# PYTHON= picks the interpreter (default: .venv/bin/python where it exists, else python3, the
# one that holds PyTorch on the device machines). Results go to stdout and, where the device
# tool's $OUT is set, to $OUT/gpu_check.txt. docs/benchmarks.md says what to expect.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=build/gpu_check  # build/ is ignored by git; the device tool carries it when asked
DEBIAN_DATA=/usr/share/datasets/fashion-mnist  # where tests/conftest.py reads the real set

if [[ ${1:-} == --prepare ]]; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf "$KIT"
    mkdir -p "$KIT/site" "$KIT/fashion-mnist"
    for package in hydra omegaconf antlr4; do
        cp -r "$site/$package" "$KIT/site/"
    done
    find "$KIT/site" -name __pycache__ -prune -exec rm -rf {} +  # another Python's bytecode
    cp "$DEBIAN_DATA"/*.gz "$KIT/fashion-mnist/"
    du -sh "$KIT"
    exit 0
fi

PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # trainkit from this checkout
if [[ -d $KIT/site ]]; then
    export PYTHONPATH="$PWD/$KIT/site:$PYTHONPATH"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: error: no CUDA here ($PY: torch.cuda.is_available() is False or torch" \
        "is missing); run it on a GPU machine (docs/benchmarks.md, GPU check)" >&2
    exit 2
fi
if [[ ! -e $DEBIAN_DATA/train-images-idx3-ubyte.gz ]]; then
    if [[ ! -d $KIT/fashion-mnist ]]; then
        echo "gpu_check.sh: error: no Fashion-MNIST in $DEBIAN_DATA: run" \
            "scripts/gpu_check.sh --prepare on a machine that has it and carry $KIT" >&2
        exit 2
    fi
    mkdir -p "$(dirname "$DEBIAN_DATA")" && ln -sfn "$PWD/$KIT/fashion-mnist" "$DEBIAN_DATA" || {
        echo "gpu_check.sh: error: cannot link $KIT/fashion-mnist to $DEBIAN_DATA (not root?)" >&2
        exit 2
    }
fi

REPORT=${OUT:+$OUT/gpu_check.txt}
REPORT=${REPORT:-/dev/null}
say() { echo "$@" | tee -a "$REPORT"; }
say "$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
      f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")')"

status=0
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee -a "$REPORT" || status=1

RUNS=$(mktemp -d)
for preset in fmnist_speedrun fmnist_speedrun_90s fmnist_accuracy; do
    start=$(date +%s.%N)
    if "$PY" -m trainkit "experiment=$preset" device=cuda "hydra.run.dir=$RUNS/$preset" \
        >"$RUNS/$preset.log" 2>&1; then
        say "$("$PY" - "$RUNS/$preset/summary.json" "$preset" "$start" <<'EOF'
import json, sys, time
s, wall = json.load(open(sys.argv[1])), time.time() - float(sys.argv[3])
print(f"experiment={sys.argv[2]}: test acc {s['test']['acc']:.4f}, {s['precision']['dtype']} "
      f"({s['precision']['reason']}), wall {wall:.0f} s (the run's own "
      f"{s['wall_time_s']:.0f} s), {s['train_samples_per_s']:,.0f} train samples/s on "
      f"{s['device']}")
EOF
)"
    else
        say "experiment=$preset: failed; the end of its log:"
        tail -20 "$RUNS/$preset.log" | tee -a "$REPORT"
        status=1
    fi
done
exit $status
