"""Runs one trial of an NNI sweep, and ends the sweep when its trials cannot start (``examples/nni/trial.sh``).

    python examples/nni/trial_guard.py examples/glue.py --config ...              # as `python examples/glue.py`
    python examples/nni/trial_guard.py -m accelerate.commands.launch examples/glue.py ...   # as `python -m ...`

Before the trial it imports ``nni_bert_tickets.experiments.cli`` (everything a trial needs). If that fails, this
interpreter can run no trial at all: it says so on stderr (the trial's ``stderr`` file, linked from the web UI)
and ends the sweep at once. A trial that fails for another reason ends the sweep when it fails before any trial
of the experiment has reported a result and it is the ``FAILED_STARTS_TO_END``-th such failure (with parallel
trials a few more may already be running; they finish). Ending a sweep lowers the experiment's
``maxTrialNumber`` to the number of trials already started: NNI starts no new trial, the experiment ends (its
status is then DONE, with the failed trials listed) and the web UI stays up to show them.

Standard library only: it has to run, and explain, in an environment where nothing else is installed. The NNI
manager's REST port comes from ``trial.sh`` (``NNI_BERT_TICKETS_MANAGER_PORT``); without it (a trial on another
machine) the sweep cannot be ended from the trial, which is then only reported.
"""
from __future__ import annotations

import json
import logging
import os
import runpy
import sys
import traceback
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

FAILED_STARTS_TO_END = 2
INTERRUPTED = 130  # SIGINT: how NNI stops a trial (cancelled, or the experiment stopped), not a failure
_log = logging.getLogger("nni_bert_tickets.trial_guard")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if not argv or argv[0].startswith("-") and (argv[0] != "-m" or len(argv) < 2):
        _log.error("usage: trial_guard.py SCRIPT [ARGS...] | -m MODULE [ARGS...], got %s", argv)
        return 2
    problem = environment_problem()
    if problem is not None:
        _log.error("%s", problem)
        end_sweep("this trial's Python environment cannot import nni_bert_tickets, so no trial of the sweep can "
                  "run")
        return 3
    code = run(argv)
    if code not in (0, INTERRUPTED) and os.environ.get("NNI_TRIAL_JOB_ID"):
        _after_failure(os.environ["NNI_TRIAL_JOB_ID"])
    return code


def environment_problem() -> Optional[str]:
    """Why this interpreter cannot run a trial, or None if it can."""
    try:
        import nni_bert_tickets.experiments.cli  # noqa: F401  (the trial's whole stack: torch, transformers, nni, accelerate)
    except Exception as err:  # ImportError, or a broken install failing otherwise: no trial can start either way
        source = os.environ.get("NNI_BERT_TICKETS_TRIAL_PYTHON_SOURCE", "the interpreter running this guard")
        return (f"this Python ({sys.executable}, chosen as {source}) cannot import nni_bert_tickets: "
                f"{type(err).__name__}: {err}. Install the package into the environment that runs nnictl "
                "(`.venv/bin/pip install -e .`, then `.venv/bin/nnictl create ...`), or point "
                "NNI_BERT_TICKETS_PYTHON at an interpreter that has it.")
    return None


def run(argv: Sequence[str]) -> int:
    """``python ARGV`` in this process (the stack is imported once); returns the exit status."""
    module = argv[1] if argv[0] == "-m" else None
    rest = list(argv[2:] if module else argv[1:])
    try:
        if module:
            sys.argv = [module, *rest]
            sys.path[0] = os.getcwd()  # as `python -m` has it
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [argv[0], *rest]
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python SCRIPT` has it
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        _log.error("%s", stop.code)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return INTERRUPTED
    except BaseException:  # noqa: B902  (what an uncaught exception does to `python SCRIPT`)
        traceback.print_exc()
        return 1
    return 0


def sweep_cannot_start(trials: List[Dict[str, Any]], metrics: List[Dict[str, Any]], trial_id: str) -> bool:
    """Whether the failure of ``trial_id`` means the sweep's trials all fail at start: no trial has reported a
    result or succeeded, and at least ``FAILED_STARTS_TO_END`` trials (this one included) have failed."""
    if metrics or any(t.get("status") == "SUCCEEDED" for t in trials):
        return False
    failed = {t["trialJobId"] for t in trials if t.get("status") == "FAILED"} | {trial_id}
    return len(failed) >= FAILED_STARTS_TO_END


def end_sweep(reason: str) -> bool:
    """Stops NNI from starting more trials of this experiment (see the module's doc); True if it did."""
    rest = _Rest.from_env()
    if rest is None:
        return False
    try:
        started = len(rest.get("trial-jobs"))
        profile = rest.get("experiment")
        profile["params"]["maxTrialNumber"] = started
        rest.put("experiment?update_type=MAX_TRIAL_NUM", profile)
    except (OSError, ValueError, KeyError) as err:
        _log.error("could not end the sweep through NNI's REST API at %s: %s", rest.base, err)
        return False
    _log.error("ended the sweep: %s. NNI starts no new trial (maxTrialNumber is now %d, the trials already "
               "started); the web UI stays up. Fix the cause, then `nnictl stop %s` and create the experiment "
               "again.", reason, started, os.environ.get("NNI_EXP_ID", "<id>"))
    return True


def _after_failure(trial_id: str) -> None:
    rest = _Rest.from_env()
    if rest is None:
        return
    try:
        trials, metrics = rest.get("trial-jobs"), rest.get("metric-data")
    except (OSError, ValueError) as err:
        _log.warning("could not read the experiment's trials from %s: %s", rest.base, err)
        return
    if sweep_cannot_start(trials, metrics, trial_id):
        end_sweep(f"{FAILED_STARTS_TO_END} or more trials failed and none has reported a result, so the sweep's "
                  "trials fail at start (see each failed trial's stderr)")


class _Rest:
    def __init__(self, base: str):
        self.base = base

    @classmethod
    def from_env(cls) -> Optional["_Rest"]:
        port = os.environ.get("NNI_BERT_TICKETS_MANAGER_PORT")
        if not port:
            if os.environ.get("NNI_EXP_ID"):
                _log.warning("no NNI manager among this trial's parent processes (not the local training "
                             "service?): the sweep cannot be ended from here")
            return None
        prefix = os.environ.get("NNI_BERT_TICKETS_MANAGER_URL_PREFIX", "").strip("/")
        return cls(f"http://127.0.0.1:{int(port)}/{prefix + '/' if prefix else ''}api/v1/nni/")

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def put(self, path: str, body) -> None:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="PUT",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30):
            pass


def _setup_logging() -> None:
    if not _log.handlers:  # its own handler: the trial configures the root logger itself
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s trial_guard: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(logging.INFO)
        _log.propagate = False


if __name__ == "__main__":
    sys.exit(main())
