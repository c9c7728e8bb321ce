"""Find and evaluate lottery tickets on GLUE.

    accelerate launch examples/glue.py --config examples/configs/quickstart.yaml
    accelerate launch examples/glue.py --task rte --model bert-base-uncased --target-sparsity 0.6
    accelerate launch examples/glue.py --config examples/configs/smoke/table2-rte.yaml    # a paper table

``experiment`` picks what runs: ``imp`` (one IMP run, the per-round table), ``table2`` (full model over
seeds, IMP, random pruning / re-initialisation / shuffled baselines), ``table3`` (rewinding to θi, standard
pruning), ``transfer`` (the Figure-3 matrix) or ``dense_grid`` (the full model over learning rate × epochs).
Every setting is a flag and a YAML key (``nni_bert_tickets.experiments.config.ExperimentConfig``). Finished runs are never recomputed; interrupted ones resume.
Render the tables and plots with ``python -m nni_bert_tickets.experiments.report <output_root>``.
"""
from nni_bert_tickets.experiments.cli import main

if __name__ == "__main__":
    main(description=__doc__)
