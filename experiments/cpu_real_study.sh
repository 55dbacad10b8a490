#!/usr/bin/env bash
# The real-data CPU study (experiments/cpu_real.yaml) as a long background run that survives a change of machine:
#
#   experiments/cpu_real_study.sh [COMMIT]      # start, or resume, in the background; prints the log path
#
# - The code runs at ONE fixed commit (COMMIT, else the one in results/cpu_real/STUDY_COMMIT, else HEAD), checked
#   out in a git worktree beside this repository, so that every method runs the same code while this checkout
#   moves on. run.json records the commit.
# - Results go into this checkout's results/cpu_real (the worktree's results/ is a link to this one's), and each
#   finished (method, seed) piece is committed here as soon as its run.json appears (per-case CSV, summary, run
#   config, training curve, predictions; never checkpoints, which stay in the worktree's data/).
# - `xlstm-unet run-all` skips every (method, seed) whose committed run.json records the same parameters, so the
#   same command resumes the study on a fresh clone.
# - The study runs at nice 10: interactive work and the test suite take the CPU first.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cd "$repo"
mkdir -p results/cpu_real
commit=${1:-$(cat results/cpu_real/STUDY_COMMIT 2>/dev/null || git rev-parse HEAD)}
commit=$(git rev-parse "$commit^{commit}")
wt=${XLSTM_UNET_STUDY_WORKTREE:-$repo/../xlstm-unet-study}
if [ ! -d "$wt" ]; then
    git worktree add --detach "$wt" "$commit"
elif [ "$(git -C "$wt" rev-parse HEAD)" != "$commit" ]; then
    echo "worktree $wt is at $(git -C "$wt" rev-parse HEAD), not the study commit $commit" >&2
    exit 2
fi
rm -rf "$wt/results" && ln -s "$repo/results" "$wt/results"
if [ "$(cat results/cpu_real/STUDY_COMMIT 2>/dev/null)" != "$commit" ]; then
    echo "$commit" > results/cpu_real/STUDY_COMMIT
    git add results/cpu_real/STUDY_COMMIT
    git commit -q -m "cpu_real study: runs at $commit" -- results/cpu_real/STUDY_COMMIT
fi
log=$wt/study.log

commit_finished() {  # commit every finished (method, seed) folder that has changes, one commit each; then
    local pass run dir paths msg  # any method whose seed-averaged files alone changed
    for pass in seed method; do
        for run in $(find results/cpu_real -name run.json -path '*/seed*/run.json' | sort); do
            dir=$(dirname "$run")
            paths=("$dir")  # the seed's folder and its method's seed-averaged per_case.csv / summary.json
            for f in "$(dirname "$dir")"/per_case.csv "$(dirname "$dir")"/summary.json; do
                [ -f "$f" ] && paths+=("$f")
            done
            if [ $pass = seed ]; then
                [ -n "$(git status --porcelain -- "$dir")" ] || continue
                msg="cpu_real study: ${dir#results/cpu_real/} finished"
            else
                [ -n "$(git status --porcelain -- "${paths[@]}")" ] || continue
                msg="cpu_real study: $(dirname "${dir#results/cpu_real/}") seed-averaged results"
            fi
            for attempt in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
                if git add -- "${paths[@]}" && git commit -q -m "$msg" -- "${paths[@]}"; then
                    break
                fi
                sleep 5
            done
        done
    done
}

(
    cd "$wt"
    PYTHONPATH="$wt" nice -n 10 "$repo/.venv/bin/xlstm-unet" run-all experiments/cpu_real.yaml --log-output \
        > "$log" 2>&1 &
    study=$!
    while kill -0 "$study" 2>/dev/null; do
        sleep 120
        (cd "$repo" && commit_finished) >> "$log.commits" 2>&1 || true
    done
    (cd "$repo" && commit_finished) >> "$log.commits" 2>&1 || true
    echo "study finished: $(date -Is)" >> "$log"
) > /dev/null 2>&1 &
echo "study running at $commit in $wt; log: $log"
