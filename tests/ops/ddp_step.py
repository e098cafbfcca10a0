"""One DPO training step on a tiny random Llama, either in one process over 4 pairs (`single`) or under
torchrun with 2 gloo processes over 2 pairs each (`ddp`). Writes loss, gradients and updated weights to
a JSON file so the test can compare them. Uses the project's loss registry (training.losses)."""
import json
import os
import sys

import torch
import torch.nn.functional as F

from training.losses import PairBatch, resolve_loss
from training.tiny import tiny_llama

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
VOCAB, PROMPT, LENGTH, PAIRS = 64, 4, 12, 4


def data():
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, VOCAB, (PAIRS, PROMPT), generator=g)
    chosen = torch.cat([prompt, torch.randint(3, VOCAB, (PAIRS, LENGTH - PROMPT), generator=g)], 1)
    rejected = torch.cat([prompt, torch.randint(3, VOCAB, (PAIRS, LENGTH - PROMPT), generator=g)], 1)
    ref = torch.randn(PAIRS, 2, generator=g, dtype=torch.float64) - 30.0
    return chosen, rejected, ref


def response_logp(model, ids):
    logits = model(ids).logits[:, :-1].double()
    lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None])[..., 0]
    return lp[:, PROMPT - 1:].sum(-1)          # response tokens only: the prompt is masked


def loss_of(model, rows):
    chosen, rejected, ref = data()
    spec, params = resolve_loss("dpo_sigmoid", {"beta": 0.1})
    b = PairBatch(pol_chosen=response_logp(model, chosen[rows]), pol_rejected=response_logp(model, rejected[rows]),
                  ref_chosen=ref[rows, 0], ref_rejected=ref[rows, 1])
    return spec.fn(b, params).loss.mean()


def main(mode: str, out: str) -> None:
    model = tiny_llama(VOCAB, seed=0, **SHAPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    if mode == "single":
        loss = loss_of(model, list(range(PAIRS)))
        loss.backward()
        world_loss = loss.item()
        net = model
    else:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        net = DDP(model)
        per = PAIRS // world
        loss = loss_of(net, list(range(rank * per, (rank + 1) * per)))
        loss.backward()                       # DDP all-reduces (averages) the gradients across ranks
        total = loss.detach().clone()
        dist.all_reduce(total)
        world_loss = (total / world).item()
    grads = {n: p.grad.flatten()[:16].tolist() for n, p in model.named_parameters()}
    opt.step()
    weights = {n: p.detach().flatten()[:16].tolist() for n, p in model.named_parameters()}
    if mode == "single" or int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump({"loss": world_loss, "grads": grads, "weights": weights}, f)
    if mode != "single":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
