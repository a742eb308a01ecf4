"""The optimizer step of the training loop, as lean as the optimizer allows.

For fused Adam and AdamW (trainkit's default: experiment.build_optimizer) the step is torch's
functional Adam (`torch.optim.adam.adam`, the same fused kernel with the same arguments) called on
the optimizer's own state. `optimizer.step()` spends ~0.1 ms per call in Python around that kernel
(step hooks, a profiler record, `_init_group`'s per-parameter checks): 8-10% of a 1.3 ms MLP step at
batch 128 on 2 CPU cores. The state stays the optimizer's, so checkpoints, resuming and
`optimizer.state_dict()` see exactly what `optimizer.step()` would have left.
Every other optimizer, and Adam set up in a way the lean step does not cover (amsgrad,
capturable, differentiable, not fused, step hooks), steps with `optimizer.step()`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Adam, AdamW, Optimizer
from torch.optim import optimizer as optimizer_module
from torch.optim.adam import adam


def step_function(optimizer: Optimizer) -> Callable[[], None]:
    """What the loop calls for one optimizer step: `optimizer.step` or its lean equivalent."""
    if type(optimizer) in (Adam, AdamW) and all(map(lean_group, optimizer.param_groups)):
        return LeanAdamStep(optimizer)
    return optimizer.step


def lean_group(group: dict) -> bool:
    """Whether the lean step updates this Adam param group exactly as Adam.step would."""
    tensor_hyper = isinstance(group["lr"], torch.Tensor) or any(
        isinstance(beta, torch.Tensor) for beta in group["betas"]
    )
    unusual = group["amsgrad"] or group["capturable"] or group["differentiable"]
    return bool(group["fused"]) and not unusual and not tensor_hyper


class LeanAdamStep:
    """One fused Adam/AdamW step on the optimizer's state, read afresh every call (a resumed run
    loads new state tensors). It is `optimizer.step()` on its first call (an LR scheduler
    learns there that the optimizer stepped, and the state gets created), whenever a parameter
    with a gradient has no state yet, whenever step hooks are registered, and whenever a param
    group has become one the lean step does not cover (`lean_group`). Unlike
    `optimizer.step()`, it leaves no "Optimizer.step" record in torch.profiler traces."""

    def __init__(self, optimizer: Adam) -> None:
        self.optimizer = optimizer
        self.stepped = False

    def __call__(self) -> None:
        opt = self.optimizer
        lean = self.stepped and not hooked(opt) and all(map(lean_group, opt.param_groups))
        self.stepped = True
        if not lean:
            opt.step()
            return
        updates = []
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            states = [opt.state.get(p) for p in params]  # .get: no empty entries created
            if not all(states):
                opt.step()
                return
            updates.append((group, params, states))
        with torch.no_grad():
            for group, params, states in updates:
                if params:
                    update(group, params, states)


def hooked(optimizer: Optimizer) -> bool:
    """Whether step hooks are registered, on this optimizer or on all (torch keeps no public
    list of them)."""
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or getattr(optimizer_module, "_global_optimizer_pre_hooks", None)
        or getattr(optimizer_module, "_global_optimizer_post_hooks", None)
    )


def update(group: dict, params: list[torch.Tensor], states: list[dict]) -> None:
    beta1, beta2 = group["betas"]
    adam(
        params,
        [p.grad for p in params],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [],  # max_exp_avg_sqs: amsgrad only
        [s["step"] for s in states],
        fused=True,
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
    )
