"""PyTorch front end: autograd functions and ``nn.Module`` losses whose forward and backward run
through fastloss on CPU tensors.

Install with ``pip install "fastloss[torch]"``. Tensors are handed to the kernels as NumPy views
of the same memory (no copy for float32/float64 CPU tensors with whole-element strides), and the
gradient comes from the same fused pass as the loss, so ``backward`` only scales it by
``grad_output``. InfoNCE and linear cross-entropy are the exceptions: their per-row losses share keys (a
classifier), so their backward runs the streaming backward kernel with ``grad_output`` as the
per-row weights.

The functionals take ``torch.nn.functional``'s parameters in its order (``size_average`` and
``reduce`` mapped as torch maps them), so positional calls port unchanged; fastloss's extras
(``z_loss``, ``softcap``, ``reduction="batchmean"``) are keyword-only or extra values. Under
``torch.no_grad()`` (or with inputs that do not require grad) they compute the loss alone.

float16 and bfloat16 tensors are computed in float32 (bfloat16 through a float32 copy, since NumPy
has no bfloat16 of its own); their gradients are returned in their dtype, reduced losses too,
while ``reduction="none"`` returns the float32 losses (as the NumPy API does).

Only first-order reverse mode is supported. The kernels' gradients are numbers, not torch
graphs, so a second derivative through them would silently be zero: double backward (a
gradient taken with ``create_graph=True`` and differentiated again, e.g. a Hessian-vector
product) and forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``) raise
``RuntimeError`` instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from . import _losses
from ._reduction import ExactSum
from ._validation import ReductionName, check_int, check_label_smoothing, check_reduction

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

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(tensor: Any, name: str) -> torch.Tensor:
    """`tensor`, checked to be a CPU torch.Tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{name} is on {tensor.device}; fastloss runs on CPU tensors only (call .cpu())")
    return tensor


def _to_numpy(tensor: Any, name: str, *, floating: bool = True) -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy), after checking device and dtype.

    bfloat16 is the exception: NumPy has no bfloat16 without ml_dtypes (not a dependency), so the
    tensor is converted to float32, which holds every bfloat16 value exactly and is what the
    kernels compute bfloat16 in anyway. The float32 gradients go back to bfloat16 in autograd,
    which casts a gradient to its input's dtype."""
    _check_tensor(tensor, name)
    if floating and tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; fastloss.torch supports float16, bfloat16, float32 and float64"
        )
    detached = tensor.detach()
    if detached.dtype == torch.bfloat16:
        detached = detached.float()
    return cast(np.ndarray, detached.numpy())


def _loss_tensor(loss: Any, dtype: torch.dtype) -> torch.Tensor:
    """The loss as a tensor: a reduction (a Python float) in the input's dtype, as torch returns
    it; "none"'s losses (an ndarray) in their computation dtype (float32 for float16/bfloat16,
    as the NumPy API returns them: rounded once, from the kernel)."""
    if isinstance(loss, np.ndarray):
        return torch.from_numpy(loss)
    return torch.tensor(loss, dtype=dtype)


def _legacy_reduction(size_average: Any, reduce: Any) -> str:
    """torch's mapping of the deprecated ``size_average`` / ``reduce`` (``None`` means True),
    with its UserWarning, worded as torch words it (``torch.nn._reduction.legacy_get_string``)."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = "mean" if size_average and reduce else "sum" if reduce else "none"
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{reduction}' instead.",
        stacklevel=4,  # the caller of the functional or of the module's constructor
    )
    return reduction


def _torch_reduction(size_average: Any, reduce: Any, reduction: Any) -> ReductionName:
    """The reduction a torch loss call means: the legacy pair, when either is given, overrides
    ``reduction`` (as in torch); torch's deprecated ``"elementwise_mean"`` is ``"mean"``, with
    torch's warning; then the name is checked (``"batchmean"`` is fastloss's extra)."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    elif isinstance(reduction, str) and reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
            stacklevel=3,
        )
        reduction = "mean"
    return check_reduction(reduction)


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
    annotations in torch's sources, so the call and its result are typed here, once.

    Under ``torch.no_grad()`` the tensors go in detached: a forward still sees
    ``needs_input_grad`` True there for a tensor that requires grad, and would compute (or
    refuse) a gradient no one can ask for; detached, it computes the loss alone, as torch does."""
    if not torch.is_grad_enabled():
        args = tuple(arg.detach() if isinstance(arg, torch.Tensor) else arg for arg in args)
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
        input: torch.Tensor,  # noqa: A002
        target: torch.Tensor,
        weight: torch.Tensor | None,
        reduction: ReductionName,
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
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if weight is None:
            if not needs_grad:
                return _loss_tensor(loss_fn(pred, tgt, reduction=reduction), input.dtype)
            loss, grad = loss_fn(pred, tgt, reduction=reduction, return_grad=True)
            ctx.save_for_backward(torch.from_numpy(grad))
            return _loss_tensor(loss, input.dtype)
        return _RegressionFunction._weighted(ctx, pred, tgt, weight, loss_fn, needs_grad, input)

    @staticmethod
    def _weighted(
        ctx: Any,
        pred: np.ndarray,
        tgt: np.ndarray,
        weight: torch.Tensor,
        loss_fn: Any,
        needs_grad: bool,
        input: torch.Tensor,  # noqa: A002
    ) -> torch.Tensor:
        """torch's elementwise ``weight`` (torch/nn/functional.py: ``e * weight``, "mean" =
        ``sum(e * weight) / sum(weight)``) through fastloss's row weights: each element one row
        of one element, so that the row weight is the element's weight and sample_weight's
        "mean" (weighted sum / (sum(w) * 1)) is torch's."""
        w = _to_numpy(weight, "weight", floating=False)
        if tuple(weight.shape) != tuple(input.shape):
            raise ValueError(
                f"weight: expected the shape of input {tuple(input.shape)} (one weight per element, "
                f"as torch.nn.functional.{ctx.api_name}); got {tuple(weight.shape)}"
            )
        if ctx.reduction == "batchmean":
            raise ValueError(
                "reduction='batchmean' is not defined with an elementwise weight (torch's weighted "
                "mean is sum(weight * loss) / sum(weight)); use 'mean', 'sum' or 'none'"
            )
        shape = tuple(input.shape)
        flat_pred, flat_tgt, flat_w = pred.reshape(-1, 1), tgt.reshape(-1, 1), w.reshape(-1)
        try:
            loss, grad = loss_fn(
                flat_pred, flat_tgt, reduction=ctx.reduction, sample_weight=flat_w, return_grad=True
            )
        except ValueError as error:
            # The weights' rules (finite, >= 0, not subnormal) are sample_weight's: said of weight.
            message = str(error)
            if not message.startswith("sample_weight"):
                raise
            raise ValueError("weight" + message[len("sample_weight") :]) from None
        if needs_grad:
            ctx.save_for_backward(torch.from_numpy(grad.reshape(shape)))
        if isinstance(loss, np.ndarray):
            loss = loss.reshape(shape)
        ctx.weight_grad = None
        if ctx.needs_input_grad[2]:
            # d(sum(w e))/dw = e; d(sum(w e) / sum(w))/dw = (e - mean) / sum(w), in float64.
            element = loss_fn(flat_pred, flat_tgt, reduction="none").astype(np.float64).reshape(shape)
            if ctx.reduction == "mean":
                with np.errstate(divide="ignore", invalid="ignore"):
                    element = np.asarray((element - loss) / float(ExactSum.of(flat_w)))
            ctx.weight_grad = (torch.from_numpy(element), weight.dtype)
        return _loss_tensor(loss, input.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        d_input = d_weight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            (grad,) = ctx.saved_tensors
            d_input = _scaled(grad, grad_output, ctx.reduction)
        weight_grad = getattr(ctx, "weight_grad", None)  # set by _weighted only
        if weight_grad is not None:
            element, dtype = weight_grad
            d_weight = (element * grad_output.to(torch.float64)).to(dtype)
        # The element loss depends on pred - target, so the target's gradient is the negative.
        return (
            d_input if ctx.needs_input_grad[0] else None,
            -d_input if ctx.needs_input_grad[1] and d_input is not None else None,
            d_weight,
            None,
            None,
        )


_REGRESSION_NAMES = {_losses.mse: "mse_loss", _losses.mae: "l1_loss"}


def mse_loss(
    input: torch.Tensor,  # noqa: A002
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.mse_loss`` computed by fastloss, with torch's parameters in its order.

    ``size_average``/``reduce`` (deprecated) override ``reduction`` as in torch; ``reduction`` may
    also be ``"batchmean"`` (sum / ``input.shape[0]``). ``weight`` (torch's elementwise weight,
    the shape of ``input``: finite and >= 0 here) multiplies each element's loss, and "mean" is
    then ``sum(weight * loss) / sum(weight)``. Input and target have one shape (no broadcasting;
    a 0-d pair is one element). Gradients flow to ``input``, ``target`` and ``weight``."""
    red = _torch_reduction(size_average, reduce, reduction)
    return _apply(_RegressionFunction, input, target, weight, red, _losses.mse)


def l1_loss(
    input: torch.Tensor,  # noqa: A002
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.l1_loss`` computed by fastloss: the parameters and rules of
    :func:`mse_loss`, with the element loss ``|input - target|``."""
    red = _torch_reduction(size_average, reduce, reduction)
    return _apply(_RegressionFunction, input, target, weight, red, _losses.mae)


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
        soft = isinstance(target, torch.Tensor) and target.is_floating_point()
        tgt = _to_numpy(target, "target", floating=soft)
        class_weight = None if weight is None else _to_numpy(weight, "weight")
        ctx.api_name = "cross_entropy"
        ctx.reduction = reduction
        # reduction is checked by _losses.cross_entropy itself (the cast only narrows the str).
        red = cast(ReductionName, reduction)
        # A probability target is differentiated as torch does: d loss / d q_c =
        # (1 - label_smoothing) w_c (lse - x_c), written by the kernel in the same pass.
        want_logits, want_target = ctx.needs_input_grad[0], soft and ctx.needs_input_grad[1]
        if not (want_logits or want_target):
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
        red = check_reduction(reduction)
        partial, out, grad, d_target = _losses.cross_entropy_pass(
            logits,
            tgt,
            class_weight,
            check_int(ignore_index, "ignore_index"),
            check_label_smoothing(label_smoothing),
            red,
            bool(want_logits),
            return_target_grad=bool(want_target),
        )
        ctx.save_for_backward(
            None if grad is None else torch.from_numpy(grad),
            None if d_target is None else torch.from_numpy(d_target),
        )
        return _loss_tensor(out if out is not None else partial.result(red), input.dtype)

    jvp = staticmethod(_no_forward_mode)

    @staticmethod
    @_first_order_only
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grad, d_target = ctx.saved_tensors
        if ctx.reduction == "none" and grad_output.dim() > 1:
            # K-dimensional: one loss per (n, d1, ..., dK), broadcast over the class axis 1.
            grad_output = grad_output.unsqueeze(1)
        return (
            None if grad is None else _scaled(grad, grad_output, ctx.reduction),
            None if d_target is None else _scaled(d_target, grad_output, ctx.reduction),
            None,
            None,
            None,
            None,
        )


def cross_entropy(
    input: torch.Tensor,  # noqa: A002
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy`` for ``(N, C)``, ``(C,)`` and K-dimensional
    ``(N, C, d1, ..., dK)`` logits, computed by fastloss, with torch's parameters in its order
    (``size_average``/``reduce``, deprecated, override ``reduction`` as in torch; ``reduction``
    may also be ``"batchmean"``, sum / N).

    Gradients flow to ``input`` (the logits) and to a probability ``target`` that requires grad
    (as torch differentiates it); class weights and class indices are constants. The gradient of
    K-dimensional logits is a channels-last tensor (strides of ``(N, d1, ..., dK, C)``).
    """
    _check_tensor(target, "target")
    red = _torch_reduction(size_average, reduce, reduction)
    return _apply(_CrossEntropyFunction, input, target, weight, ignore_index, red, label_smoothing)


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
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: torch.nn.LinearCrossEntropyOptions | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.linear_cross_entropy`` (``(N, H)`` or unbatched ``(H,)`` input,
    ``(V, H)`` weight) computed by fastloss, with torch 2.13's signature, plus the keyword-only
    ``z_loss``, ``softcap`` and ``reduction="batchmean"`` (see :func:`fastloss.linear_cross_entropy`).

    ``ignore_index=None`` (torch's default) means -100 for class indices; with probability
    targets (a floating ``target``) it must stay None, as in torch. ``options``
    (``torch.nn.LinearCrossEntropyOptions``, torch's chunking and accumulation settings) is
    accepted and has no effect: fastloss always streams the logits in tiles and accumulates
    exactly, so there is nothing to choose (and torch's chunked path gives the reference's values).

    Gradients flow to ``input``, ``linear_weight`` and ``linear_bias`` (one dtype); targets and
    class weights are constants. The backward pass recomputes the logits tile by tile from the
    saved log-sum-exps."""
    _check_tensor(input, "input")
    _check_tensor(target, "target")
    if options is not None and not isinstance(options, torch.nn.LinearCrossEntropyOptions):
        raise TypeError(
            f"options must be None or a torch.nn.LinearCrossEntropyOptions; got {type(options).__name__}"
        )
    if target.is_floating_point() and ignore_index is not None:
        raise ValueError(
            "ignore_index cannot be specified when target contains probabilities (leave it None, as in torch)"
        )
    index = -100 if ignore_index is None else ignore_index
    red = _torch_reduction(None, None, reduction)
    unbatched = input.dim() == 1
    if unbatched:
        # torch's (H,) input with a () index or (V,) probability target: one row.
        input, target = input.unsqueeze(0), target.unsqueeze(0)  # noqa: A001
    loss = _apply(
        _LinearCrossEntropyFunction,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        red,
        index,
        label_smoothing,
        z_loss,
        softcap,
    )
    return loss.squeeze(0) if unbatched and loss.dim() == 1 else loss


class MSELoss(torch.nn.Module):
    """Drop-in for ``torch.nn.MSELoss`` (CPU): ``size_average``/``reduce`` (deprecated) resolve to
    ``reduction`` at construction, with torch's warning, as in torch."""

    def __init__(
        self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.reduction = _torch_reduction(size_average, reduce, reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return mse_loss(input, target, reduction=self.reduction)


class L1Loss(torch.nn.Module):
    """Drop-in for ``torch.nn.L1Loss`` (CPU), constructed as :class:`MSELoss` is."""

    def __init__(
        self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.reduction = _torch_reduction(size_average, reduce, reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return l1_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` with ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dK)``
    logits, with its constructor's parameters in its order."""

    weight: torch.Tensor | None  # a buffer (register_buffer below): declared for type checkers

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = _torch_reduction(size_average, reduce, reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
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
    linear_weight, target, linear_bias=None)``.

    Unlike ``torch.nn.LinearCrossEntropyLoss``, which owns its classifier (an ``nn.Linear`` built
    from ``in_features`` and ``num_classes``), this module takes the classifier in ``forward``, so
    it serves a tied or external head (e.g. a language model's embedding matrix).
    ``ignore_index=None`` is torch's default: -100 for class indices, unset for probabilities."""

    weight: torch.Tensor | None  # a buffer (register_buffer below): declared for type checkers

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
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
