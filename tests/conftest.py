import copy
import os
from pathlib import Path

# Tests never reach for the Hub: the embedded model and ../shared data, or tiny models built in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The suite runs in one worker per core (pytest-xdist, `addopts` in pyproject.toml): one thread each, and the
# trainings tests start in subprocesses inherit it (torch reads it on import, below), so two workers never fight
# over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

import nni
import pytest
import torch
from nni.compression import TorchEvaluator
from transformers import BertConfig, BertForSequenceClassification

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
GLUE = SHARED / "data" / "glue"


def tiny_bert(seed: int = 0, layers: int = 2, num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_checkpoint(path: Path, minilm_path: str, positions: int = 64, hidden: int = 32, intermediate: int = 64) -> str:
    """A 2-layer BERT (hidden 32) with the embedded model's tokenizer, saved as a pre-trained checkpoint: a run
    through the real runner and data takes seconds. ``positions``: the longest input it takes; ``hidden`` and
    ``intermediate``: its matrix sizes, where a test needs larger ones (block pruning)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=intermediate, max_position_embeddings=positions)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def toy_batches(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 64, (n, 4, 12), generator=g)
    y = (x[..., 0] % 2)
    return list(zip(x, y))


def toy_evaluator(model, steps: int = 6, weight_decay: float = 0.01, lr: float = 1e-2) -> TorchEvaluator:
    """A TorchEvaluator training with AdamW + weight decay + linear decay + clipping on fixed toy batches."""
    batches = toy_batches()

    def training_step(batch, model):
        x, y = batch
        return model(input_ids=x, labels=y).loss

    def training_func(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None):
        model.train()
        total = max_steps or steps
        order = torch.randperm(len(batches)).tolist()  # global RNG: the pruner seeds it per round
        for i in range(total):
            loss = training_step(batches[order[i % len(order)]], model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            optimizer.zero_grad()
        model.eval()

    def evaluating_func(model):
        with torch.no_grad():
            correct = sum(int((model(input_ids=x).logits.argmax(-1) == y).sum()) for x, y in batches)
        acc = correct / sum(len(y) for _, y in batches)
        return {"default": acc, "accuracy": acc}

    optimizer = nni.trace(torch.optim.AdamW)(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = nni.trace(torch.optim.lr_scheduler.LinearLR)(optimizer, 1.0, 0.0, steps)
    return TorchEvaluator(training_func, optimizer, training_step, scheduler, evaluating_func=evaluating_func)


@pytest.fixture
def minilm_path():
    if not MINILM.is_dir():
        pytest.fail(f"the embedded model is missing at {MINILM}: tests need ../shared beside the checkout")
    return str(MINILM)


@pytest.fixture
def glue_dir():
    if not GLUE.is_dir():
        pytest.fail(f"GLUE data missing at {GLUE}: tests need ../shared beside the checkout")
    return str(GLUE)


def kill_training_at_call(monkeypatch, n: int):
    """Make the ``n``-th ``FineTuner.train`` call raise KeyboardInterrupt (a simulated kill); returns the original."""
    from nni_bert_tickets.training import FineTuner
    original, calls = FineTuner.train, []

    def killed(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FineTuner, "train", killed)
    return original


def watch_imp_rounds(model, evaluator, snapshot=None):
    """Wrap ``evaluator``'s training function for an IMP run: returns ``(starts, violations)``, filled as it runs
    with the weights at the start of every round (``snapshot(model)``; by default every parameter, by its name
    without NNI's wrapper) and, after every optimizer step, each wrapped matrix's count of pruned weights that are
    not exactly 0."""
    starts, violations = [], []
    train = evaluator.training_func
    snapshot = snapshot or (lambda m: {n.replace("._nni_wrapper", ""): p.detach().clone()
                                       for n, p in m.named_parameters()})

    def pruned_are_zero(*_):
        for module in model.modules():
            wrapper = getattr(module, "_nni_wrapper", None)
            if wrapper is not None and wrapper.weight_mask is not None:
                violations.append(int((wrapper.weight[wrapper.weight_mask == 0] != 0).sum()))

    def recording(model, optimizer, *args, **kwargs):
        starts.append(snapshot(model))
        optimizer.register_step_post_hook(pruned_are_zero)  # checked after every optimizer step
        train(model, optimizer, *args, **kwargs)
    evaluator.training_func = recording
    return starts, violations


def torch_global_masks(modules, amount, prior=None):
    """torch.nn.utils.prune's global L1 masks over copies of ``modules`` (on top of ``prior`` masks, if given)."""
    from torch.nn.utils import prune
    modules = copy.deepcopy(modules)
    if prior is not None:
        for m, mask in zip(modules, prior):
            prune.custom_from_mask(m, "weight", mask)
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
    return [m.weight_mask.bool() for m in modules]
