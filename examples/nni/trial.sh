#!/usr/bin/env bash
# Runs one trial of an NNI sweep: `bash examples/nni/trial.sh ARGS...` is `PYTHON examples/nni/trial_guard.py
# ARGS...`, i.e. `PYTHON ARGS...` (a script or `-m module` and its arguments) behind a guard that ends the sweep
# when its trials cannot start. It never uses the `python` that happens to be first on PATH by accident.
#
# PYTHON is, the first that applies:
#   1. $NNI_BERT_TICKETS_PYTHON, when set (an interpreter of your choice);
#   2. the Python that runs nnictl: NNI's manager is started with nnictl's own interpreter
#      (`node main.js ... --python-interpreter PYTHON`, the one NNI also runs the tuner with), and a local trial
#      is a child of that manager, so `.venv/bin/nnictl create ...` runs every trial with `.venv/bin/python`,
#      with or without an activated environment;
#   3. `python3` on PATH, where no NNI manager is among the trial's parents (NNI's remote training service
#      puts the machine's `pythonPath` first on PATH).
# The manager's command line also gives its REST port, which the guard uses to end a sweep whose trials fail.
set -euo pipefail

manager_python="" manager_port="" manager_prefix=""

args_of() {  # the command line of process $1, one argument per line (NUL-separated where /proc has it)
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\0' '\n' < "/proc/$1/cmdline"
    else
        ps -o args= -p "$1" 2>/dev/null | tr ' ' '\n'
    fi
}

parent_of() {
    if [ -r "/proc/$1/status" ]; then
        sed -n 's/^PPid:[[:space:]]*//p' "/proc/$1/status"
    else
        ps -o ppid= -p "$1" 2>/dev/null | tr -d ' '
    fi
}

find_manager() {  # walks up from this script to the NNI manager, if it is an ancestor
    local pid=$PPID depth arg previous
    for depth in 1 2 3 4 5 6 7 8; do
        [ -n "$pid" ] && [ "$pid" -gt 1 ] || return 0
        previous=""
        while IFS= read -r arg; do
            case "$previous" in
                --python-interpreter) manager_python=$arg ;;
                --port) manager_port=$arg ;;
                --url-prefix) manager_prefix=$arg ;;
            esac
            previous=$arg
        done < <(args_of "$pid")
        [ -z "$manager_python" ] || return 0
        manager_port="" manager_prefix=""
        pid=$(parent_of "$pid")
    done
}

find_manager
if [ -n "${NNI_BERT_TICKETS_PYTHON:-}" ]; then
    python=$(command -v "$NNI_BERT_TICKETS_PYTHON" || true) source="NNI_BERT_TICKETS_PYTHON=$NNI_BERT_TICKETS_PYTHON"
elif [ -n "$manager_python" ]; then
    python=$manager_python source="the Python that runs nnictl (the NNI manager's interpreter)"
else
    python=$(command -v python3 || command -v python || true)
    source="python3 on PATH (no NNI manager among this trial's parents)"
fi
if [ -z "$python" ] || ! [ -x "$python" ]; then
    echo "trial.sh: no usable Python interpreter (${python:-none found} from $source)" >&2
    exit 127
fi
export NNI_BERT_TICKETS_TRIAL_PYTHON_SOURCE=$source
export NNI_BERT_TICKETS_MANAGER_PORT=$manager_port NNI_BERT_TICKETS_MANAGER_URL_PREFIX=$manager_prefix
exec "$python" "$(dirname "${BASH_SOURCE[0]}")/trial_guard.py" "$@"
