"""Weight layouts that make the CPU's matrix multiplies faster for the same model.

An `nn.Linear` weight is [out, in], row-major. Its forward is `x @ weight.t()` and autograd
computes its gradient in the weight's own layout: for a row-major weight that is
`grad_out.t() @ x`, a product MKL runs slowly on this machine class. Stored column-major (the
same [out, in] tensor over transposed storage) the forward reads `weight.t()` contiguously and
the gradient becomes `x.t() @ grad_out`. Timed layer by layer on both CPUs of this machine
class, that is faster for wide layers (the default CNN's hidden layer among them) and slower for
squarer ones and for narrow heads (a 10-class head). Hence the rule: wide layers (in >= 3x out)
with at least 64 outputs; the figures are in docs/design-notes.md.

Values, names and shapes are unchanged: only the strides differ, in memory and in the
checkpoints (torch.save keeps them; a consumer that needs contiguous tensors calls
.contiguous()). Optimizer state follows its parameter's layout (torch.zeros_like), and must:
torch's fused CPU Adam reads parameter, gradient and state as flat arrays."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

WIDTH_RATIO = 3  # in_features / out_features at least this
MIN_OUT_FEATURES = 64  # narrower layers (a 10-class head) ran slower column-major


def is_wide(layer: nn.Linear) -> bool:
    return (
        layer.out_features >= MIN_OUT_FEATURES
        and layer.in_features >= WIDTH_RATIO * layer.out_features
    )


def transpose_wide_linears(model: nn.Module) -> list[str]:
    """Store each wide Linear weight column-major, in place: the Parameter objects stay. Call it
    before the optimizer has state and before a DDP wrap, which size their buffers by the
    weights' strides. Returns the layers' names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_wide(module) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()
            names.append(name)
    return names


def match_state_to_params(optimizer: Optimizer) -> None:
    """Give each optimizer state tensor its parameter's layout. A state loaded from a checkpoint
    keeps the layout it was saved in (a run saved on another device or with other layout
    settings), and torch's fused CPU Adam walks the parameter, gradient and state buffers as
    flat arrays: with mismatched layouts it silently mixes up elements."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
