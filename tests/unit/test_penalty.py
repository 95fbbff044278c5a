"""The saturation penalty and its schedule, against values and gradients worked out by hand."""

import math

import pytest
import torch

from trainables.penalty import effective_lambda, psi, saturation_penalty


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


H = [-2.0, -0.5, 0.0, 0.5, 3.0]


@pytest.mark.parametrize(
    "activation, expected",
    [
        ("relu", [0.0, 0.0, 0.0, 0.5, 3.0]),
        ("sigmoid", [sig(z) * (1 - sig(z)) for z in H]),
        ("tanh", [1 - math.tanh(z) ** 2 for z in H]),
    ],
)
def test_psi_is_distance_to_zero_slope(activation, expected):
    got = psi(torch.tensor(H, dtype=torch.float64), activation)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "activation, derivative",
    [
        ("relu", lambda z: 1.0 if z > 0 else 0.0),
        ("sigmoid", lambda z: sig(z) * (1 - sig(z)) * (1 - 2 * sig(z))),
        ("tanh", lambda z: -2 * math.tanh(z) * (1 - math.tanh(z) ** 2)),
    ],
)
def test_psi_gradient_matches_hand_derivative(activation, derivative):
    h = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    psi(h, activation).sum().backward()
    assert h.grad.tolist() == pytest.approx([derivative(z) for z in h.tolist()], abs=1e-12)


def test_sum_and_mean_reductions_by_hand():
    # two examples; layer 1 has 3 units, layer 2 (conv-like) has 1 channel x 2 positions
    h1 = torch.tensor([[1.0, -1.0, 2.0], [0.0, 3.0, 0.5]], dtype=torch.float64)
    h2 = torch.tensor([[[4.0, -2.0]], [[1.0, 1.0]]], dtype=torch.float64)
    # relu: example 0 -> layer sums 3 and 4; example 1 -> 3.5 and 2
    total = saturation_penalty([h1, h2], "relu", "sum")
    assert total.item() == pytest.approx(((3 + 4) + (3.5 + 2)) / 2)
    mean = saturation_penalty([h1, h2], "relu", "mean")
    assert mean.item() == pytest.approx(((3 / 3 + 4 / 2) + (3.5 / 3 + 2 / 2)) / 2)


def test_penalty_gradient_is_averaged_over_the_batch():
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64, requires_grad=True)
    saturation_penalty([h], "relu", "sum").backward()
    assert h.grad.tolist() == [[0.5, 0.5], [0.5, 0.0]]


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        saturation_penalty([torch.zeros(1, 2)], "relu", "max")


def test_constant_schedule_is_constant():
    assert [effective_lambda(30.0, "constant", 10, p) for p in (0, 0.5, 50)] == [30.0] * 3


def test_linear_schedule_ramps_from_zero_then_holds():
    values = [effective_lambda(30.0, "linear", 10, p) for p in (0, 2.5, 5, 10, 12)]
    assert values == pytest.approx([0.0, 7.5, 15.0, 30.0, 30.0])


def test_linear_schedule_with_no_warmup_is_constant():
    assert effective_lambda(4.0, "linear", 0, 0.0) == 4.0
