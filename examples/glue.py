"""Find lottery tickets for a GLUE task with IMP.

    accelerate launch examples/glue.py --config examples/configs/quickstart.yaml
    python examples/glue.py --task rte --model bert-base-uncased --target-sparsity 0.6

Every setting is a flag and a YAML key (see ``nni_bert_tickets.config.ExperimentConfig``). Runs land in
``runs/<task>-<hash>/``; rerunning a finished run does nothing and an interrupted one resumes.
"""
import logging

from accelerate import Accelerator

from nni_bert_tickets.config import parse_args
from nni_bert_tickets.experiment import format_trajectory, run_imp


def main(argv=None):
    config = parse_args(argv, description=__doc__)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accelerator = Accelerator()
    results = run_imp(config, accelerator)
    if accelerator.is_main_process:
        print(f"\nIMP tickets for {config.task} ({results['run']}):\n{format_trajectory(results)}")
    return results


if __name__ == "__main__":
    main()
