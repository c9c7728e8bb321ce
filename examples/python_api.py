"""The Python API end to end, offline: IMP finds a ticket at every level, one is saved, loaded back and
transferred to another task. Embedded 6-layer BERT (all-MiniLM-L6-v2), real SST-2 data, a small budget
(about a minute on a 2-core CPU; the numbers say little at this size). Run from the repository root:

    python examples/python_api.py [--out DIR]
"""
import argparse
import logging
import tempfile
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from nni_bert_tickets import IMPPruner, Ticket, bert_config_list
from nni_bert_tickets.tasks import get_task
from nni_bert_tickets.tasks.glue import load_glue, tokenize_glue
from nni_bert_tickets.training import FineTuner, TrainConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = str(SHARED / "models" / "all-MiniLM-L6-v2")  # any BERT-style checkpoint, e.g. "bert-base-uncased"
GLUE = str(SHARED / "data" / "glue")                  # <task>/<split>.jsonl; None loads nyu-mll/glue from the Hub


def main(out: Path) -> None:
    set_seed(0)
    task, tokenizer = get_task("sst2"), AutoTokenizer.from_pretrained(MODEL)
    data = load_glue(task, GLUE)  # a small budget: 256 training sentences, 256 validation sentences
    data["train"], data["validation"] = data["train"].select(range(256)), data["validation"].select(range(256))
    tuner = FineTuner(task, tokenize_glue(data, tokenizer, task, max_length=64), tokenizer,
                      TrainConfig(learning_rate=1e-4, batch_size=32, epochs=1))  # the one training loop

    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2)
    # pooler=False: this checkpoint's pooler was never trained; magnitude pruning would remove it first
    config_list = bert_config_list(model, 0.3, pooler=False)
    pruner = IMPPruner(model, config_list, tuner.evaluator(model), schedule="linear", rewind=0, head="rewind",
                       task="sst2")
    model, masks = pruner.compress()      # NNI's (model, {module: {"weight": mask}})
    pruner.unwrap_model()                 # a plain model; pruned weights are exactly 0
    for record, ticket in zip(pruner.trajectory, pruner.tickets):  # a ticket at every level passed
        print(f"round {record['round']}: sparsity {record['sparsity']:.2f}, accuracy {record['metric']:.4f}")
    path = out / "sst2-30.safetensors"
    pruner.tickets[-1].save(path)

    ticket = Ticket.load(path)            # no pickle; clear errors on bad files
    fresh = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=3)
    applied = ticket.transfer_to(fresh, task="mnli")  # the SST-2 mask on θ0 with a new head; pruned weights stay 0
    print(f"transferred to a 3-label model at sparsity {applied.sparsity:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the ticket is written (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        main(args.out)
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder))
