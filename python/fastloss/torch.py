"""PyTorch front end: autograd functions and ``nn.Module`` losses whose forward and backward run
through fastloss on CPU tensors.

Install with ``pip install "fastloss[torch]"``. Tensors are handed to the kernels as NumPy views
of the same memory (no copy for float32/float64 CPU tensors with whole-element strides), and the
gradient comes from the same fused pass as the loss, so ``backward`` only scales it by
``grad_output``. InfoNCE and linear cross-entropy are the exceptions: their per-row losses share keys (a
classifier), so their backward runs the streaming backward kernel with ``grad_output`` as the
per-row weights.

Only first-order reverse mode is supported. The kernels' gradients are numbers, not torch
graphs, so a second derivative through them would silently be zero: double backward (a
gradient taken with ``create_graph=True`` and differentiated again, e.g. a Hessian-vector
product) and forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``) raise
``RuntimeError`` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from . import _losses
from ._validation import ReductionName, check_reduction

__all__ = [
    "CrossEntropyLoss",
    "InfoNCE",
    "L1Loss",
    "LinearCrossEntropyLoss",
    "MSELoss",
    "cross_entropy",
    "info_nce",
    "l1_loss",
    "linear_cross_entropy",
    "mse_loss",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _to_numpy(tensor: Any, name: str, *, floating: bool = True) -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy), after checking device and dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{name} is on {tensor.device}; fastloss runs on CPU tensors only (call .cpu())")
    if floating and tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {tensor.dtype}; fastloss.torch supports float32 and float64")
    return tensor.detach().numpy()


def _loss_tensor(loss: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(loss, np.ndarray):
        return torch.from_numpy(loss).to(dtype)
    return torch.tensor(loss, dtype=dtype)


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> torch.Tensor:
    """grad is d(loss)/d(input) for a reduction and d(sum of losses)/d(input) for "none"; chain it
    with the upstream gradient, which for "none" has one entry per loss."""
    if reduction != "none":
        return grad * grad_output
    return grad * grad_output.reshape(grad_output.shape + (1,) * (grad.dim() - grad_output.dim()))


def _first_order_only(backward: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
    """Decorates an autograd.Function's backward, which returns the kernel's gradient as a constant.

    Autograd runs backward with grad mode on only for ``create_graph=True``, i.e. when the caller
    means to differentiate the gradient again; that would silently give zero second-order terms,
    so it is refused there, before any gradient is handed out. (``once_differentiable`` would
    not do: it marks the gradients only when ``grad_output`` requires grad, which the ones that
    ``autograd.grad`` seeds a scalar loss with do not, and a gradient that does not require grad
    adds a silent zero when it is part of a larger expression.)
    """

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"fastloss.torch.{ctx.api_name}: double backward is not supported: the gradient comes from "
                "the fastloss kernel, not from torch operations, so it cannot be differentiated again "
                "(create_graph=True); use the torch.nn.functional loss for second-order derivatives"
            )
        return backward(ctx, *grad_outputs)

    return wrapper


def _apply(function: type[torch.autograd.Function], *args: Any) -> torch.Tensor:
    """``function.apply(*args)``: the forward's output, a tensor. ``Function.apply`` carries no
    annotations in torch's sources, so the call and its result are typed here, once."""
    return cast(torch.Tensor, function.apply(*args))  # type: ignore[no-untyped-call]  # untyped in torch


def _no_forward_mode(ctx: Any, *tangents: Any) -> Any:
    raise NotImplementedError(
        f"fastloss.torch.{ctx.api_name}: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) is not "
        "supported; use reverse mode (loss.backward() / torch.autograd.grad)"
    )


class _RegressionFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        target: torch.Tensor,
        reduction: str,  # noqa: A002
        loss_fn: Any,
    ) -> torch.Tensor:
        pred = _to_numpy(input, "input")
        tgt = _to_numpy(target, "target")
        if input.dtype != target.dtype:
            raise TypeError(
                f"input and target must have the same dtype; got {input.dtype} and {target.dtype}"
            )
        ctx.api_name = _REGRESSION_NAMES[loss_fn]
        ctx.reduction = reduction
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return _loss_tensor(loss_fn(pred, tgt, reduction=reduction), input.dtype)
        loss, grad = loss_fn(pred, tgt, reduction=reduction, return_grad=True)
        ctx.save_for_backward(torch.from_numpy(grad))
        return _loss_tensor(loss, input.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        d_input = _scaled(grad, grad_output, ctx.reduction)
        # The element loss depends on pred - target, so the target's gradient is the negative.
        return (
            d_input if ctx.needs_input_grad[0] else None,
            -d_input if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


_REGRESSION_NAMES = {_losses.mse: "mse_loss", _losses.mae: "l1_loss"}


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:  # noqa: A002
    """``torch.nn.functional.mse_loss`` computed by fastloss (also ``reduction="batchmean"``)."""
    return _apply(_RegressionFunction, input, target, reduction, _losses.mse)


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:  # noqa: A002
    """``torch.nn.functional.l1_loss`` computed by fastloss (also ``reduction="batchmean"``)."""
    return _apply(_RegressionFunction, input, target, reduction, _losses.mae)


class _CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,  # noqa: A002
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
    ) -> torch.Tensor:
        logits = _to_numpy(input, "input")
        soft = target.is_floating_point()
        if soft and target.requires_grad:
            raise NotImplementedError(
                "fastloss.torch.cross_entropy: gradients w.r.t. probability targets are not supported"
            )
        tgt = _to_numpy(target, "target", floating=soft)
        class_weight = None if weight is None else _to_numpy(weight, "weight")
        ctx.api_name = "cross_entropy"
        ctx.reduction = reduction
        # reduction is checked by _losses.cross_entropy itself (the cast only narrows the str).
        red = cast(ReductionName, reduction)
        if not ctx.needs_input_grad[0]:
            return _loss_tensor(
                _losses.cross_entropy(
                    logits,
                    tgt,
                    reduction=red,
                    weight=class_weight,
                    ignore_index=ignore_index,
                    label_smoothing=label_smoothing,
                ),
                input.dtype,
            )
        loss, grad = _losses.cross_entropy(
            logits,
            tgt,
            reduction=red,
            weight=class_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            return_grad=True,
        )
        ctx.save_for_backward(torch.from_numpy(grad))
        return _loss_tensor(loss, input.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output, ctx.reduction), None, None, None, None, None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,  # noqa: A002
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy`` for ``(N, C)`` / ``(C,)`` logits, computed by fastloss.

    Gradients flow to ``input`` (the logits); class weights and targets are constants.
    """
    return _apply(_CrossEntropyFunction, input, target, weight, ignore_index, reduction, label_smoothing)


def _temperature_value(temperature: Any) -> float | Any:
    """A Python number as given (checked by the loss); a tensor of one element as its value."""
    if not isinstance(temperature, torch.Tensor):
        return temperature
    if temperature.numel() != 1:
        raise ValueError(
            f"temperature: a tensor temperature must hold one element (0-d or shape (1,)); got shape "
            f"{tuple(temperature.shape)}"
        )
    if not temperature.dtype.is_floating_point:
        raise TypeError(f"temperature: a tensor temperature must be floating point; got {temperature.dtype}")
    return float(temperature.detach().cpu().reshape(()))


def _label_array(labels: Any, name: str) -> Any:
    """Labels as NumPy (a CPU tensor's view); anything else goes to the loss's checks as given."""
    if isinstance(labels, torch.Tensor):
        return _to_numpy(labels, name, floating=False)
    return labels


class _InfoNceFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        positive_key: torch.Tensor,
        negative_keys: torch.Tensor | None,
        temperature: Any,
        reduction: str,
        negative_mode: str,
        normalize: bool,
        symmetric: bool,
        query_labels: Any,
        key_labels: Any,
        decoupled: bool,
    ) -> torch.Tensor:
        arrays = [_to_numpy(query, "query"), _to_numpy(positive_key, "positive_key")]
        negatives = None if negative_keys is None else _to_numpy(negative_keys, "negative_keys")
        reduction = check_reduction(reduction)
        problem = _losses.InfoNceProblem(
            arrays[0],
            arrays[1],
            negatives,
            temperature=_temperature_value(temperature),
            negative_mode=negative_mode,
            normalize=normalize,
            symmetric=symmetric,
            query_labels=_label_array(query_labels, "query_labels"),
            key_labels=_label_array(key_labels, "key_labels"),
            decoupled=decoupled,
        )
        row_loss = problem.forward(keep_for_backward=any(ctx.needs_input_grad[:4]))
        ctx.api_name = "info_nce"
        ctx.problem = problem
        ctx.reduction = reduction
        ctx.temperature = temperature if isinstance(temperature, torch.Tensor) else None
        if reduction == "none":
            return torch.from_numpy(row_loss.astype(problem.dtype))
        ctx.divisor = problem.partial(row_loss).divisor(reduction)
        return torch.tensor(problem.partial(row_loss).result(reduction), dtype=query.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        problem = ctx.problem
        if ctx.reduction == "none":
            row_grad = grad_output.detach().to(torch.float64).cpu().numpy()
        else:
            scale = float(grad_output)
            if ctx.divisor:
                scale /= ctx.divisor
            row_grad = np.full(problem.rows, scale)
        wants_temperature = ctx.needs_input_grad[3]
        (d_query, d_positive, d_negatives), d_temperature = problem.backward_with_temperature(
            row_grad, temperature=wants_temperature
        )
        temperature_grad = None
        if wants_temperature and d_temperature is not None:
            tau = ctx.temperature
            temperature_grad = torch.tensor(d_temperature, dtype=tau.dtype).reshape(tau.shape).to(tau.device)
        return (
            torch.from_numpy(d_query),
            torch.from_numpy(d_positive),
            None if d_negatives is None else torch.from_numpy(d_negatives),
            temperature_grad,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def info_nce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negative_keys: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.07,
    reduction: str = "mean",
    negative_mode: str = "unpaired",
    normalize: bool = False,
    symmetric: bool = False,
    *,
    query_labels: Any = None,
    key_labels: Any = None,
    decoupled: bool = False,
) -> torch.Tensor:
    """:func:`fastloss.info_nce` on tensors, differentiable w.r.t. query and keys.

    ``temperature`` may be a tensor of one element; if it requires grad (a learnable temperature,
    e.g. CLIP's ``1 / logit_scale.exp()``), it receives
    ``sum_i row_grad_i * dL_i/dtau = -(1/tau) sum_i row_grad_i (sum_{j in D(i)} p_ij z_ij -
    mean_{p in P(i)} z_ip)``, computed in the backward pass from the saved log-sum-exps and
    summed exactly. ``query_labels`` / ``key_labels`` (integer tensors or arrays) and
    ``decoupled`` are :func:`fastloss.info_nce`'s; labels are constants.
    """
    return _apply(
        _InfoNceFunction,
        query,
        positive_key,
        negative_keys,
        temperature,
        reduction,
        negative_mode,
        normalize,
        symmetric,
        query_labels,
        key_labels,
        decoupled,
    )


class _LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,  # noqa: A002
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        reduction: str,
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
    ) -> torch.Tensor:
        x = _to_numpy(input, "input")
        w = _to_numpy(linear_weight, "linear_weight")
        b = None if linear_bias is None else _to_numpy(linear_bias, "linear_bias")
        for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
            if tensor is not None and tensor.dtype != input.dtype:
                raise TypeError(
                    f"input and {name} must have the same dtype; got {input.dtype} and {tensor.dtype}"
                )
        soft = target.is_floating_point()
        if soft and target.requires_grad:
            raise NotImplementedError(
                "fastloss.torch.linear_cross_entropy: gradients w.r.t. probability targets are not supported"
            )
        tgt = _to_numpy(target, "target", floating=soft)
        class_weight = None if weight is None else _to_numpy(weight, "weight")
        reduction = check_reduction(reduction)
        problem = _losses.LinearCrossEntropyProblem(
            x,
            w,
            tgt,
            linear_bias=b,
            weight=class_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )
        row_loss = problem.forward(keep_for_backward=any(ctx.needs_input_grad[:3]))
        ctx.api_name = "linear_cross_entropy"
        ctx.problem = problem
        ctx.reduction = reduction
        ctx.partial = problem.partial(row_loss)
        if reduction == "none":
            return torch.from_numpy(row_loss.astype(problem.dtype))
        return torch.tensor(ctx.partial.result(reduction), dtype=input.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        problem = ctx.problem
        row_grad = _losses.reduction_row_grad(ctx.partial, ctx.reduction, problem.rows)
        if ctx.reduction == "none":
            row_grad *= grad_output.detach().to(torch.float64).cpu().numpy()
        else:
            row_grad *= float(grad_output)
        d_input, d_weight, d_bias = problem.backward(row_grad)
        needs = ctx.needs_input_grad
        return (
            torch.from_numpy(d_input) if needs[0] else None,
            torch.from_numpy(d_weight) if needs[1] else None,
            torch.from_numpy(d_bias) if needs[2] and d_bias is not None else None,
        ) + (None,) * 7


def linear_cross_entropy(
    input: torch.Tensor,  # noqa: A002
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.linear_cross_entropy`` (``(N, H)`` input, ``(V, H)`` weight) computed by
    fastloss, plus ``z_loss``, ``softcap`` and ``reduction="batchmean"`` (see
    :func:`fastloss.linear_cross_entropy`). Gradients flow to ``input``, ``linear_weight`` and
    ``linear_bias`` (one dtype, float32 or float64); targets and class weights are constants.
    The backward pass recomputes the logits tile by tile from the saved log-sum-exps."""
    return _apply(
        _LinearCrossEntropyFunction,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        reduction,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
    )


class MSELoss(torch.nn.Module):
    """Drop-in for ``torch.nn.MSELoss`` (CPU, float32/float64)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return mse_loss(input, target, self.reduction)


class L1Loss(torch.nn.Module):
    """Drop-in for ``torch.nn.L1Loss`` (CPU, float32/float64)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return l1_loss(input, target, self.reduction)


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` with ``(N, C)`` / ``(C,)`` logits."""

    weight: torch.Tensor | None  # a buffer (register_buffer below): declared for type checkers

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing
        )


class InfoNCE(torch.nn.Module):
    """InfoNCE with ``info-nce-pytorch``'s interface and defaults (temperature 0.1, rows
    L2-normalised; the functional :func:`info_nce`, like :func:`fastloss.info_nce`, defaults to
    0.07 without normalisation); ``normalize=False``, ``symmetric=True`` (CLIP) and
    ``decoupled=True`` (DCL) are available too. ``temperature`` may be a tensor: an
    ``nn.Parameter`` is registered as the module's and learned. ``forward`` takes the labels
    (SupCon positives in-batch, false-negative elimination with negatives) as keywords."""

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        reduction: str = "mean",
        negative_mode: str = "unpaired",
        normalize: bool = True,
        symmetric: bool = False,
        decoupled: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = check_reduction(reduction)
        self.negative_mode = negative_mode
        self.normalize = normalize
        self.symmetric = symmetric
        self.decoupled = decoupled

    def forward(
        self,
        query: torch.Tensor,
        positive_key: torch.Tensor,
        negative_keys: torch.Tensor | None = None,
        *,
        query_labels: Any = None,
        key_labels: Any = None,
    ) -> torch.Tensor:
        return info_nce(
            query,
            positive_key,
            negative_keys,
            self.temperature,
            self.reduction,
            self.negative_mode,
            self.normalize,
            self.symmetric,
            query_labels=query_labels,
            key_labels=key_labels,
            decoupled=self.decoupled,
        )


class LinearCrossEntropyLoss(torch.nn.Module):
    """The loss of :func:`linear_cross_entropy` with its options held: ``forward(input,
    linear_weight, target, linear_bias=None)``."""

    weight: torch.Tensor | None  # a buffer (register_buffer below): declared for type checkers

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(
        self,
        input: torch.Tensor,  # noqa: A002
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        linear_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )
