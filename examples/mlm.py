"""Lottery tickets on the masked-language-model objective, and the MLM ticket transferred to GLUE.

    accelerate launch --cpu examples/mlm.py --config examples/configs/smoke/mlm.yaml        # find it
    accelerate launch --cpu examples/glue.py --config examples/configs/smoke/transfer.yaml  # transfer it

The transfer config (Figure 3) lists ``mlm`` in ``transfer_sources``: it finds or reuses the MLM ticket and
trains it on every GLUE target beside the GLUE tasks' own tickets.

Offline, WikiText-2's valid.txt trains and test.txt evaluates (masked-token accuracy); the Hub default is
``Salesforce/wikitext`` (wikitext-2-raw-v1).
"""
from nni_bert_tickets.experiments.cli import main

if __name__ == "__main__":
    main(description=__doc__, default_task="mlm")
