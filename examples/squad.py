"""Lottery tickets for SQuAD v1.1 (exact match and F1) on the same core and training loop as GLUE.

    accelerate launch examples/squad.py --config examples/configs/paper/squad.yaml
    python examples/squad.py --model ../shared/models/all-MiniLM-L6-v2 --data-dir DIR   # DIR/squad/*.jsonl

The paper's settings: lr 3e-5, batch 16, max length 384, doc stride 128 (windows over a long context start
128 tokens apart; see the paper config), questions cut to 64 tokens.
"""
from nni_bert_tickets.experiments.cli import main

if __name__ == "__main__":
    main(description=__doc__, default_task="squad")
