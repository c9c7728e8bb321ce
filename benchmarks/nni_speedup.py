"""Does NNI 3's structured path (``TaylorPruner`` on whole heads and FFN channels, then ``ModelSpeedup``) run on
this torch and transformers? Called by ``structured_peers.py``, which records the answer in its JSON; on its own:

    python benchmarks/nni_speedup.py --task sst2 --json docs/results/nni_speedup.json
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict

import torch

from nni_bert_tickets.core.architectures import structured_layers
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command, emit, structured_arguments  # noqa: E402  (benchmarks/ is the script's folder)

_log = logging.getLogger("nni_speedup")


def nni_modelspeedup(config: ExperimentConfig, head_sparsity: float, channel_sparsity: float) -> Dict[str, Any]:
    """NNI 3 ``TaylorPruner`` (two gradient steps) on whole heads and FFN channels, then ``ModelSpeedup``."""
    import nni
    import transformers
    out: Dict[str, Any] = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                        "nni": nni.__version__}, "ran": False}
    model, tuner = prepare(dataclasses.replace(config, max_steps=2))
    layers = structured_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    d = layers[0].heads[0].out_features // getattr(layers[0].attention, layers[0].head_attrs[0])
    config_list = []
    for i, l in enumerate(layers):
        config_list += [{"op_names": [names[id(l.ffn_in)]], "target_names": ["weight"], "granularity": "out_channel",
                         "sparse_ratio": channel_sparsity},
                        {"op_names": [names[id(m)] for m in l.heads], "target_names": ["weight"],
                         "granularity": [d, l.heads[0].in_features], "sparse_ratio": head_sparsity,
                         "dependency_group_id": f"heads-{i}"}]
    stage = "TaylorPruner"
    try:
        from nni.compression.pruning import TaylorPruner
        with warnings.catch_warnings():  # NNI 3.0 re-registers torch's pytree nodes through a deprecated call
            warnings.simplefilter("ignore", (FutureWarning, UserWarning))
            from nni.compression.speedup import ModelSpeedup
        pruner = TaylorPruner(model, config_list, tuner.evaluator(model), training_steps=2)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        stage = "ModelSpeedup"
        batch = next(iter(tuner.eval_batches(tuner.eval_data[tuner.task.eval_splits[0]])))
        dummy = {k: v[:2] for k, v in batch.items() if k != "labels"}
        ModelSpeedup(model, dummy, masks).speedup_model()
        model(**dummy)
        out.update(ran=True, note="ModelSpeedup ran on this stack; no variant is built on it here yet")
    except Exception as exc:  # the finding is the error itself
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        out.update(stage=stage, error=f"{type(exc).__name__}: {exc}",
                   raised_at=f"{Path(frame.filename).name}:{frame.lineno} {frame.line}")
        _log.warning("NNI %s failed: %s", stage, out["error"])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    structured_arguments(parser)
    parser.add_argument("--json", help="write the outcome here")
    args = parser.parse_args(argv)
    config = ExperimentConfig(task=args.task, model=args.model, data_dir=args.data_dir, max_train_samples=64,
                              max_length=64, output_root="runs/nni_speedup").validate()
    outcome = nni_modelspeedup(config, args.head_sparsity, args.channel_sparsity)
    emit({"command": command(__file__, argv), **outcome}, args.json)


if __name__ == "__main__":
    main()
