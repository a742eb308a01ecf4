"""The optimizer step of the training loop, as lean as the optimizer allows.

For fused Adam and AdamW (trainkit's default: experiment.build_optimizer) the step is torch's
fused Adam kernel, called with the arguments `torch.optim.adam.adam` passes it, on the optimizer's
own state. `optimizer.step()` spends time in Python around that kernel (step hooks, a profiler
record, `_init_group`'s per-parameter checks): a visible share of a small MLP step on the CPU.
The state stays the optimizer's, so checkpoints, resuming and `optimizer.state_dict()` see
exactly what `optimizer.step()` would have left.
Every other optimizer, and Adam set up in a way the lean step does not cover (amsgrad,
capturable, differentiable, not fused, step hooks), steps with `optimizer.step()`.

The lean step leans on torch internals (the fused kernels, the step-hook dicts, the param
group's `decoupled_weight_decay` key), which change between torch versions. `lean_step_works`
checks them once per process, by taking the same steps both ways on a small net and comparing
the results bit for bit; where anything is missing or differs, every optimizer steps with
`optimizer.step()`, which gives the same training (tests/test_optim_step.py forces this)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.optim import Adam, AdamW, Optimizer
from torch.optim import optimizer as optimizer_module

# torch's fused kernels, by the param group's decoupled_weight_decay (AdamW's, or Adam's).
FUSED_KERNELS = {False: "_fused_adam_", True: "_fused_adamw_"}


def step_function(optimizer: Optimizer) -> Callable[[], None]:
    """What the loop calls for one optimizer step: `optimizer.step()` or its lean equivalent.
    Either looks `optimizer.step` up at each call, not now: an LR scheduler made later (the lr
    finder's) wraps it, and warns if the wrapped step never ran."""
    lean = type(optimizer) in (Adam, AdamW) and all(map(lean_group, optimizer.param_groups))
    if lean and lean_step_works():
        return LeanAdamStep(optimizer)
    return lambda: optimizer.step()


@functools.cache
def lean_step_works() -> bool:
    """Whether this torch has what the lean step calls, and the lean step gives exactly what
    `optimizer.step()` gives: three steps of Adam and AdamW (two param groups, one with weight
    decay, a column-major weight) on a tiny net, both ways, weights and state compared bit for
    bit. Checked once per process, at little cost."""
    try:
        return all(same_steps(kind) for kind in (Adam, AdamW))
    except Exception:  # a private call missing or changed: KeyError, AttributeError, ...
        return False


def same_steps(kind: type[Optimizer]) -> bool:
    results = []
    for lean in (False, True):
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(3, 4, generator=gen).t().contiguous().t()  # column-major
        bias = torch.randn(3, generator=gen)
        params = [weight.requires_grad_(), bias.requires_grad_()]
        groups = [{"params": [weight], "weight_decay": 0.1}, {"params": [bias]}]
        optimizer = kind(groups, lr=0.1, weight_decay=0.0, fused=True)
        step = LeanAdamStep(optimizer) if lean else optimizer.step
        for _ in range(3):
            for p in params:
                p.grad = torch.empty_like(p).normal_(generator=gen)  # in p's layout
            step()
        state = optimizer.state_dict()["state"]
        results.append([*params, *(v for s in state.values() for v in s.values())])
    return all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def lean_group(group: dict) -> bool:
    """Whether the lean step updates this Adam param group exactly as Adam.step would."""
    tensor_hyper = isinstance(group["lr"], torch.Tensor) or any(
        isinstance(beta, torch.Tensor) for beta in group["betas"]
    )
    unusual = group["amsgrad"] or group["capturable"] or group["differentiable"]
    known = "decoupled_weight_decay" in group  # which kernel: AdamW's or Adam's
    return bool(group["fused"]) and known and not unusual and not tensor_hyper


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
        self.steps = SharedSteps()

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
            self.steps.advance([state for _, _, states in updates for state in states])
            for group, params, states in updates:
                if params:
                    update(group, params, states)


class SharedSteps:
    """Adam's per-parameter step counts (state["step"], 0-dim tensors) as views of one tensor,
    so that one add advances them all: torch adds 1 to each in turn, which adds up to a visible
    share of an MLP step on the CPU. Each stays a tensor of its own to the optimizer, its
    state_dict and its checkpoints. Whenever the states given differ from the ones it holds (a
    parameter without a gradient this step, a resumed optimizer's new state), it advances them
    one by one and takes over those instead."""

    def __init__(self) -> None:
        self.counts = torch.zeros(0)
        self.views: list[torch.Tensor] = []

    def advance(self, states: list[dict]) -> None:
        """Add 1 to the step count of each of `states`."""
        if not states:  # no parameter has a gradient: optimizer.step() does nothing either
            return
        held = self.views and len(states) == len(self.views)
        if held and all(s["step"] is view for s, view in zip(states, self.views, strict=True)):
            self.counts.add_(1)
            return
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        if len({(step.device, step.dtype) for step in steps}) == 1:
            self.counts = torch.stack(steps)
            self.views = list(self.counts.unbind())
            for state, view in zip(states, self.views, strict=True):
                state["step"] = view


def hooked(optimizer: Optimizer) -> bool:
    """Whether step hooks are registered, on this optimizer or on all (torch keeps no public
    list of them)."""
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or getattr(optimizer_module, "_global_optimizer_pre_hooks", None)
        or getattr(optimizer_module, "_global_optimizer_post_hooks", None)
    )


def storage_order(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The dimension order in which `tensor`'s storage is row-major, where it is not already:
    a column-major matrix (layout.transpose_wide_linears) or a channels-last conv weight.
    None for a tensor already row-major or in any other layout."""
    if tensor.is_contiguous():
        return None
    order = {2: (1, 0), 4: (0, 2, 3, 1)}.get(tensor.dim())
    return order if order and tensor.permute(order).is_contiguous() else None


def arranged(tensors: list[torch.Tensor], orders: list) -> list[torch.Tensor]:
    return [t if o is None else t.permute(o) for t, o in zip(tensors, orders, strict=True)]


def update(group: dict, params: list[torch.Tensor], states: list[dict]) -> None:
    """The fused Adam/AdamW update of `params`, their step counts already advanced: torch's
    kernel with the arguments torch's functional Adam gives it, one call per device and dtype.

    Adam is elementwise, so every tensor may be updated through any one permutation of its
    dimensions, the same for a parameter, its gradient and its state: each is permuted to the
    order its storage is row-major in, as the fused CPU kernel ran slower on the
    column-major tensors themselves. The kernel is called directly: the functional Adam's
    grouping and checks cost a visible share of an MLP step, and the tests hold the result to
    `optimizer.step()`'s bit for bit."""
    beta1, beta2 = group["betas"]
    kernel = getattr(torch, FUSED_KERNELS[group["decoupled_weight_decay"]])
    kinds: dict[tuple, list[int]] = {}
    for i, param in enumerate(params):
        kinds.setdefault((param.device, param.dtype), []).append(i)
    for indices in kinds.values():
        orders = [storage_order(params[i]) for i in indices]
        kernel(
            arranged([params[i] for i in indices], orders),
            arranged([params[i].grad for i in indices], orders),
            arranged([states[i]["exp_avg"] for i in indices], orders),
            arranged([states[i]["exp_avg_sq"] for i in indices], orders),
            [],  # max_exp_avg_sqs: amsgrad only
            [states[i]["step"] for i in indices],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            amsgrad=False,
            maximize=group["maximize"],
        )
