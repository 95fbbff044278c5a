"""GPU smoke test: a trial trains and is attacked on CUDA, with TF32 off; skipped without CUDA."""

import pytest
import torch

from tests.conftest import make_cfg
from trainables.data import load_dataset
from trainables.evaluate import evaluate_robustness
from trainables.train import new_state, release_cuda, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine"),
]


def test_train_and_attack_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    before = torch.cuda.memory_allocated()
    data = load_dataset("digits", None, False).to(device)
    cfg = make_cfg(training={"epochs": 3})
    state = new_state(cfg, data, device)
    history = list(train(cfg, data, state))
    assert next(state.model.parameters()).is_cuda and history[-1]["clean_acc"] > 0.5
    x, y = data.x_test[:100], data.y_test[:100]
    metrics, _, results = evaluate_robustness(
        state.model, x, y, make_cfg(evaluation={"eps": [0.1]}), state.model
    )
    assert 0 <= metrics["worst_case_acc/eps_0.1"] <= metrics["robust_acc/fgsm/eps_0.1"]
    del state, data, x, y, results  # views and per-example masks would keep CUDA memory
    release_cuda()  # what the trainable does when a trial ends
    assert torch.cuda.memory_allocated() == before
