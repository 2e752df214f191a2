import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import prdit.evaluation.critic as critic_module
from prdit.errors import CheckpointError, DataError
from prdit.evaluation.critic import (
    Critic3D,
    CriticConfig,
    gradient_penalty,
    load_critic,
    split_indices,
    train_critic,
    wasserstein_estimate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _textures(rng, n, shift=0.0):
    """Smooth random textures in [-0.5, 0.5] (model space), optionally shifted."""
    return np.stack([np.tanh(2 * gaussian_filter(rng.normal(size=(16, 16, 16)), 1.0)) * 0.5 + shift for _ in range(n)]).astype(np.float32)


class _Linear(torch.nn.Module):
    def __init__(self, norm: float):
        super().__init__()
        weight = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        self.weight = weight * norm / weight.norm()

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1)


@pytest.mark.parametrize("norm, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)])
def test_gradient_penalty_of_a_linear_critic(norm, expected):
    real, fake = torch.randn(3, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4)
    penalty = gradient_penalty(_Linear(norm), real, fake, torch.Generator().manual_seed(0))
    assert penalty.item() == pytest.approx(expected, abs=1e-5)  # |grad| = |w| everywhere


def test_critic_gives_one_score_per_volume_and_checks_its_size():
    assert Critic3D(16, width=4)(torch.zeros(3, 1, 16, 16, 16)).shape == (3,)
    with pytest.raises(ValueError, match="power of two"):
        Critic3D(24)


def test_split_is_seeded_disjoint_and_checked():
    train, val = split_indices(10, 6, 3, seed=1, name="real")
    assert len(train) == 6 and len(val) == 3 and not set(train) & set(val)
    again = split_indices(10, 6, 3, seed=1, name="real")
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert [len(part) for part in split_indices(10, None, None, 0, "real")] == [8, 2]
    with pytest.raises(DataError, match="--train_size"):
        split_indices(5, 4, 2, seed=0, name="fake_0")


def test_shifted_fake_set_is_farther_than_a_matched_one(rng):
    real, matched, shifted = _textures(rng, 40), _textures(rng, 40), _textures(rng, 40, shift=0.5)
    config = CriticConfig(image_size=16, steps=60, batch_size=8, width=8, seed=0)
    distances = {}
    for name, fake in (("matched", matched), ("shifted", shifted)):
        critic = train_critic(real[:30], fake[:30], config, progress=False)
        distances[name] = wasserstein_estimate(critic, real[30:], fake[30:])
    assert distances["shifted"] > 0.5
    assert distances["shifted"] > 5 * abs(distances["matched"])


def test_resumed_training_reproduces_an_uninterrupted_run(rng, tmp_path, monkeypatch):
    real, fake = _textures(rng, 8), _textures(rng, 8, shift=0.2)
    config = CriticConfig(image_size=16, steps=12, batch_size=4, width=4, seed=3)
    straight = train_critic(real, fake, config, progress=False)

    checkpoint = tmp_path / "critic.pt"
    save = critic_module._save

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(critic_module, "_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_critic(real, fake, config, checkpoint, checkpoint_every=5, progress=False)
    monkeypatch.setattr(critic_module, "_save", save)
    assert torch.load(checkpoint, weights_only=True)["step"] == 5
    with pytest.raises(CheckpointError, match="unfinished|stopped at step 5"):
        load_critic(checkpoint)

    resumed = train_critic(real, fake, config, checkpoint, checkpoint_every=5, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    loaded, state = load_critic(checkpoint)
    assert state["step"] == 12 and wasserstein_estimate(loaded, real, fake) == pytest.approx(wasserstein_estimate(resumed, real, fake))

    with pytest.raises(CheckpointError, match="another --save_path"):
        train_critic(real, fake, CriticConfig(image_size=16, steps=12, batch_size=4, width=4, seed=4), checkpoint, progress=False)
