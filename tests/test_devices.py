"""The fine-tuning loop on each device and precision this machine has.

CPU in fp32 always runs. Where CUDA is present (the GPU notes in docs/development.md), the same test also runs in bf16
and fp16 autocast on the GPU. Whatever the device or precision, pruned weights must be exactly zero after every
optimizer step, and the survivors must train.
"""
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from nni_bert_tickets import Ticket, global_magnitude_masks, prunable_weights
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare

SETTINGS = [("cpu", "no")] + ([("cuda", "bf16"), ("cuda", "fp16")] if torch.cuda.is_available() else [])


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: start this test from none, and leave none to later tests."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("device,precision", SETTINGS, ids=[f"{d}-{p}" for d, p in SETTINGS])
def test_pruned_weights_stay_exactly_zero_on_each_device_and_precision(tmp_path, minilm_path, glue_dir, device,
                                                                       precision, fresh_accelerate_state):
    config = ExperimentConfig(task="rte", model=minilm_path, data_dir=glue_dir, max_train_samples=64,
                              max_eval_samples=32, batch_size=16, max_steps=4, learning_rate=1e-3,
                              weight_decay=0.1, seed=5, output_root=str(tmp_path)).validate()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    model, tuner = prepare(config, accelerator)
    theta0 = {k: w.detach().clone() for k, w in prunable_weights(model).items()}
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.5))
    applied = ticket.apply(model)

    violations, steps = [], []

    def pruned_are_zero(*_):
        live = prunable_weights(model)
        steps.append(1)
        violations.extend(k for k, m in ticket.masks.items() if bool((live[k][~m.to(live[k].device)] != 0).any()))

    optimizer, scheduler = tuner.optimizer_and_scheduler(model)
    optimizer.register_step_post_hook(pruned_are_zero)
    tuner.train(model, optimizer, tuner.training_step, scheduler)
    metrics = tuner.evaluate(model)
    applied.remove()

    live = prunable_weights(model)
    assert next(iter(live.values())).device.type == device  # it did run there
    assert len(steps) >= 1 and violations == []  # fp16 may skip overflowing steps; bf16 and fp32 take all 4
    assert precision == "fp16" or len(steps) == 4
    moved = sum(int(((live[k].cpu() != theta0[k]) & ticket.masks[k]).sum()) for k in ticket.masks)
    assert moved > 0  # the survivors trained
    assert torch.isfinite(torch.tensor(float(metrics["default"])))
