# Sourced by the resumable chains in scripts/: `step OUT COMMAND...` runs COMMAND unless OUT is
# complete, and stops the chain when COMMAND returns without completing OUT.
#
# A step's output is complete once its last file is written: a checkpoint's rt2edge.json (written
# last by save_pretrained and by `distill finetune`'s final publish), a dataset's meta/info.json
# (written last by `data generate` and `data dagger`), or an evaluation's --json file (written
# atomically). An interrupted `distill finetune` has none of them and resumes when run again.
complete() { [ -e "$1/rt2edge.json" ] || [ -e "$1/meta/info.json" ] || [[ $1 == *.json && -f $1 ]]; }
step() {
    local out=$1; shift
    if complete "$out"; then
        echo "== done already: $out"
        return
    fi
    echo "== $(date +%T) $out"
    "$@"
    # A stopped `distill finetune` (Ctrl-C, SIGTERM) saves its state and exits 0: stop here
    # instead of starting the next step on a checkpoint that does not exist yet.
    complete "$out" || { echo "== $out stopped before it finished: run again to resume" >&2; exit 1; }
}
