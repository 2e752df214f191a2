import torch

from prdit.train.ema import create_ema, ema_decay_at, update_ema


def test_update_is_the_exponential_moving_average_of_trainable_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)
    ema = create_ema(model)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model, decay=0.9)
    for (name, e), b, m in zip(ema.named_parameters(), before, model.parameters()):
        expected = b if name.startswith("0.") else 0.9 * b + 0.1 * m
        torch.testing.assert_close(e, expected)
    assert not any(p.requires_grad for p in ema.parameters())


def test_warmup_decay_grows_to_the_configured_value():
    assert ema_decay_at(0, 0.999, warmup=True) == 0.1
    assert ema_decay_at(10**6, 0.999, warmup=True) == 0.999
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999
