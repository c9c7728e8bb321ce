"""What sharing IMP's dense round saves on Table 3: the table computed twice, with ``share_dense_round`` off and on,
counting the fine-tunings and optimizer steps each takes, and checking that the rows are identical.

Unshared, Table 3 with L pruning levels and R rows (the rewinding points and standard pruning) trains R x (L + 1)
rounds; shared, R x L + 1 (round 0 once, with every θi snapshot taken from it). The full model's fine-tunings (its
mean and std) are the same in both and counted apart.

    python benchmarks/dense_round_share.py --json docs/results/dense_round_share.json
"""
import argparse
import json
import tempfile
from pathlib import Path

from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.tables import _full_stats, table3
from nni_bert_tickets.training.loop import FineTuner

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


class Counter:
    """Counts FineTuner.train calls and the optimizer steps they take."""

    def __init__(self):
        self.calls, self.steps = 0, 0
        self._train = FineTuner.train
        counter = self

        def train(tuner, *args, **kwargs):
            out = counter._train(tuner, *args, **kwargs)
            counter.calls, counter.steps = counter.calls + 1, counter.steps + tuner.optimizer_steps
            return out
        FineTuner.train = train

    def take(self):
        out = {"fine_tunings": self.calls, "optimizer_steps": self.steps}
        self.calls, self.steps = 0, 0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="wnli")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--target-sparsity", type=float, default=0.3)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    settings = dict(task=args.task, model=str(SHARED / "models" / "all-MiniLM-L6-v2"),
                    data_dir=str(SHARED / "data" / "glue"), max_train_samples=64, max_eval_samples=32, batch_size=8,
                    max_steps=args.max_steps, max_length=64, target_sparsity=args.target_sparsity, step=0.1, seeds=2,
                    rewind_points=[0.0, 0.05, 0.1, 0.2, 0.5], experiment="table3", log_level="WARNING")
    counter, out = Counter(), {}
    for share in (False, True):
        with tempfile.TemporaryDirectory() as root:
            config = ExperimentConfig(**settings, output_root=root, share_dense_round=share).validate()
            _full_stats(config, None)
            full = counter.take()
            table = table3(config)
            out["shared" if share else "unshared"] = {"full_model": full, "table3_imp": counter.take(),
                                                      "rows": table["rows"]}
    unshared, shared = out["unshared"], out["shared"]
    identical = [{k: v for k, v in r.items() if k != "imp_run"} for r in unshared["rows"]] == \
                [{k: v for k, v in r.items() if k != "imp_run"} for r in shared["rows"]]
    result = {
        "command": "python benchmarks/dense_round_share.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "settings": {k: v for k, v in settings.items() if k not in ("model", "data_dir")},
        "levels": len(config.levels()) - 1, "rows": len(shared["rows"]),
        "unshared": {k: v for k, v in unshared.items() if k != "rows"},
        "shared": {k: v for k, v in shared.items() if k != "rows"},
        "rows_identical": identical,
        "imp_steps_ratio": unshared["table3_imp"]["optimizer_steps"] / shared["table3_imp"]["optimizer_steps"],
        "table_steps_ratio": ((unshared["table3_imp"]["optimizer_steps"] + unshared["full_model"]["optimizer_steps"])
                              / (shared["table3_imp"]["optimizer_steps"] + shared["full_model"]["optimizer_steps"])),
        "table": shared["rows"],
    }
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    if not identical:
        raise SystemExit("the shared and unshared Table 3 differ")


if __name__ == "__main__":
    main()
