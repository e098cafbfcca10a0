"""training.schedule.cosine_with_warmup equals transformers' get_cosine_schedule_with_warmup step by step, and
their state dicts load into each other (checkpoints written before the switch resume)."""
import torch
from transformers import get_cosine_schedule_with_warmup

from training.schedule import cosine_with_warmup


def _lrs(make, warmup: int, total: int) -> tuple[list[float], dict]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = make(opt, warmup, total)
    lrs = []
    for _ in range(total + 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, sched.state_dict()


def test_same_multipliers_and_state_as_transformers():
    for warmup, total in ((0, 7), (3, 10), (10, 10), (2, 1)):
        ours, ours_state = _lrs(cosine_with_warmup, warmup, total)
        theirs, their_state = _lrs(get_cosine_schedule_with_warmup, warmup, total)
        assert ours == theirs
        assert ours_state == their_state
    assert _lrs(cosine_with_warmup, 2, 4)[0][:5] == [0.0, 0.25, 0.5, 0.25, 0.0]   # 0.5 x (0, 1/2, 1, cos, 0)


def test_resumes_from_a_transformers_state_dict():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_cosine_schedule_with_warmup(opt, 2, 10)
    for _ in range(5):
        opt.step()
        theirs.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = cosine_with_warmup(opt2, 2, 10)
    ours.load_state_dict(theirs.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for o, sched in ((opt, theirs), (opt2, ours)):
        o.step()
        sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
