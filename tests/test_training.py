"""The one optimisation loop (tissuekd.training) every study trains with."""

from __future__ import annotations

import re

import torch
from conftest import REPO

from tissuekd.training import optimise, shuffled_batches


def fit_line(total_steps=None, skip_odd=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    model = torch.nn.Linear(3, 1)
    steps = []

    def loss_of(rows):
        if skip_odd and rows[0] % 2 == 1:  # the loss declines some batches: no step for them
            return None
        return ((model(x[rows]).squeeze(1) - y[rows]) ** 2).mean()

    optimise(model.parameters(), 30, lambda _: shuffled_batches(64, 8, gen), loss_of, lr=0.05, weight_decay=0.0,
             total_steps=total_steps, after_step=steps.append)
    with torch.no_grad():
        return model, steps, float(((model(x).squeeze(1) - y) ** 2).mean())


def test_the_loop_fits_counts_its_steps_and_skips_what_the_loss_declines():
    _, steps, mse = fit_line()
    assert mse < 0.01 and steps == list(range(1, 30 * 8 + 1))  # 8 batches of 8 per epoch, one step each
    _, skipped, _ = fit_line(skip_odd=True)
    assert len(skipped) < len(steps) and skipped == list(range(1, len(skipped) + 1))


def test_the_same_seed_gives_the_same_weights_and_a_schedule_changes_them():
    a, _, _ = fit_line(total_steps=240, seed=1)
    b, _, _ = fit_line(total_steps=240, seed=1)
    c, _, _ = fit_line(total_steps=None, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_weight_decay_is_decoupled_adamws():
    """A parameter with a zero gradient is only decayed: w <- w (1 - lr * wd) per step."""
    used, idle = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.full((2,), 3.0))
    optimise([used, idle], 1, lambda _: range(5), lambda _: (used**2).sum() + 0 * idle.sum(), lr=0.1,
             weight_decay=0.5)
    assert torch.allclose(idle.detach(), torch.full((2,), 3.0 * (1 - 0.1 * 0.5) ** 5))


def test_shuffled_batches_take_one_permutation_and_a_limit():
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat(list(shuffled_batches(10, 3, gen)))
    assert sorted(rows.tolist()) == list(range(10))
    assert len(torch.cat(list(shuffled_batches(10, 3, gen, limit=4)))) == 4


def test_no_study_writes_its_own_optimisation_loop():
    """AdamW, the one-cycle schedule and the gradient scaler appear only in tissuekd/training.py
    (bench/ times a bare model step on purpose: the model-only limit a loop is compared with)."""
    for path in (REPO / "src" / "tissuekd").rglob("*.py"):
        if path.name == "training.py" or path.parent.name == "bench":
            continue
        text = path.read_text()
        assert not re.search(r"optim\.AdamW|OneCycleLR|grad_scaler\(\)|\.backward\(", text), path
