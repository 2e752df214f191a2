#!/usr/bin/env bash
# One prepared GPU check (issue 29); benchmarks/README.md, "GPU check", says what it measures and how to run it.
#
#   benchmarks/gpu_check.sh --prepare [OFFICIAL_GIT_DIR]  here (network): wheels of prdit's dependencies that the
#                                                         GPU image lacks into .whl/, and the official code's models
#                                                         package (from a fetched mirror) into .official/
#   benchmarks/gpu_check.sh --dry-run                     here, on the CPU: the same steps at tiny sizes
#   benchmarks/gpu_check.sh                               on the GPU machine: at most 9 minutes
#
# Results: $RESULTS (default results/gpu)/*.json, summary.md and gpu_check.log; where $OUT is set (the device
# tool), also $OUT/summary.md, $OUT/gpu_check.log and $OUT/gpu_results.tar.gz (every JSON file).
#
# Maintainers with the project's device tool (it sends the session's own checkout, not a helper's worktree):
# fetch github:Fredy-Zhang/PRDiT, then `benchmarks/gpu_check.sh --prepare /work/.mirror/Fredy-Zhang+PRDiT/repo`
# here, then one call: run(command="benchmarks/gpu_check.sh", carry=[".whl", ".official"], timeout_s=600) and
# give_back. The call costs about 12 of the 15 device minutes (start, 9 to run, transfers): run nothing before it.
# Unpack gpu_results.tar.gz into benchmarks/results/gpu/ and copy summary.md into benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Dependencies of prdit that the GPU image (python 3.12, torch 2.11) does not have; pinned to this machine's versions.
WHEELS="pydantic==2.13.4 pydantic_core==2.46.4 annotated_types==0.7.0 typing_inspection==0.4.2 nibabel==5.4.2"

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .whl
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS || exit 1
    if [ -n "${2:-}" ]; then
        rm -rf .official && mkdir -p .official
        git --git-dir="$2" archive HEAD models | tar -x -C .official || exit 1
    fi
    du -sh .whl .official 2>/dev/null
    exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1 && [ "${1:-}" != "--dry-run" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prdit-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/prdit-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${OFFICIAL_SRC:-}" ] && [ -d .official/models ]; then
    export OFFICIAL_SRC="$PWD/.official"
fi
RESULTS=${RESULTS:-results/gpu}
mkdir -p "$RESULTS"
"$PYTHON" -m benchmarks.gpu_check --out "$RESULTS" "$@" 2>&1 | tee "$RESULTS/gpu_check.log"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    cp "$RESULTS/summary.md" "$RESULTS/gpu_check.log" "$OUT"/ 2>/dev/null
    tar -czf "$OUT/gpu_results.tar.gz" --exclude phantom_work -C "$RESULTS" .
fi
exit "$status"
