"""Shared fixtures: every ISA the machine has, and inputs in every memory layout SPEC.md accepts."""

from __future__ import annotations

import os

import fastloss
import numpy as np
import pytest
from fastloss import _core

# Sizes that straddle SIMD lane widths and tails (STYLE.md habit 4).
SIZES = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 1000)

#: .ci/sanitize.sh sets FASTLOSS_SANITIZED: under ASan the process's memory figures (RSS, peak,
#: address-space limits) are the sanitizer's (shadow memory, quarantine), not fastloss's.
not_under_sanitizers = pytest.mark.skipif(
    bool(os.environ.get("FASTLOSS_SANITIZED")),
    reason="measures the process's memory, which ASan's shadow memory and quarantine dominate",
)

LAYOUTS = ("contiguous", "strided", "reversed", "fortran", "readonly", "bigendian")


@pytest.fixture(params=list(_core.available_isas()))
def isa(request):
    """Run the test under one compiled ISA path; restore the previous one afterwards."""
    previous = _core.active_isa()
    _core.set_active_isa(request.param)
    assert _core.active_isa() == request.param
    try:
        yield request.param
    finally:
        _core.set_active_isa(previous)


@pytest.fixture
def restore_threads():
    """Put the thread count back as it was after a test that changes it."""
    previous = fastloss.get_num_threads()
    yield
    fastloss.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# layouts: each returns an array equal in value to `a` but laid out differently in memory


def contiguous(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def strided(a: np.ndarray) -> np.ndarray:
    """Every other element along the last axis of a twice-as-wide array (0-d: unchanged)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    wide[..., 1::2] = a  # junk of the right dtype; never read
    out = wide[..., ::2]
    assert not out.flags.c_contiguous or a.size <= 1
    return out


def reversed_(a: np.ndarray) -> np.ndarray:
    """Negative strides on every axis."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    flip = (slice(None, None, -1),) * a.ndim
    out = np.ascontiguousarray(a[flip])[flip]
    assert all(s <= 0 for s in out.strides)
    return out


def fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def readonly(a: np.ndarray) -> np.ndarray:
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


def bigendian(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder(">"))


LAYOUT_FUNCS = {
    "contiguous": contiguous,
    "strided": strided,
    "reversed": reversed_,
    "fortran": fortran,
    "readonly": readonly,
    "bigendian": bigendian,
}


def to_layout(a, name: str):
    """Value-preserving copy/view of `a` in layout `name` (None stays None)."""
    if a is None:
        return None
    out = LAYOUT_FUNCS[name](np.asarray(a))
    assert np.array_equal(out, a)
    return out


@pytest.fixture(params=LAYOUTS)
def layout(request):
    """A function that puts an array into one of the layouts SPEC.md accepts."""
    return lambda a: to_layout(a, request.param)


# ---------------------------------------------------------------------------------------------
# the `emulated` subset (pyproject.toml's markers; .ci/emulate.sh runs `-m emulated` under
# emulated CPUs, where a test runs 6-50 times slower than natively)
#
# Chosen here, in one place, by test function and parameters, so that it runs every kernel (MSE,
# MAE, cross-entropy with index and probability targets, InfoNCE in-batch/unpaired/paired and
# its backward pass, vector exp/log), every reduction, every gradient, and every tail size of
# SIZES (rows, classes, keys, feature dims, vector lengths), through the isa fixture. Left out:
# input dtype/layout conversions done before the kernel (the numbers are the same kernels'),
# the torch comparisons (the float64 references check the same values, and importing torch
# costs 10 s emulated), and the large cases (seconds natively) beyond the one in-batch size
# larger than a key tile. {file: {test function: keep(params) or None for every case}}
_EMULATED = {
    "test_regression.py": {
        "test_known_values": None,
        "test_known_values_weighted": None,
        "test_mae_of_equal_inputs_is_zero": None,
        "test_sizes": None,  # mse/mae x f32/f64 x 1-D/2-D x SIZES x weighting, every reduction
        "test_rows_straddle_threads": None,
        "test_three_dims": None,
        "test_nan_inf_propagate": None,
        "test_float32_overflowing_element_is_inf": None,
        "test_layouts": lambda p: p["layout"] in ("contiguous", "strided", "reversed"),
    },
    "test_cross_entropy.py": {
        "test_known_values": None,
        "test_known_values_label_smoothing": None,
        "test_known_values_probability_targets": None,
        "test_classes": None,  # index and probability targets x every option x SIZES classes
        "test_rows": None,
        "test_single_sample": None,
        "test_all_ignored": None,
        "test_ignore_index_inside_class_range": None,
        "test_extreme_logits": None,
        "test_extreme_logits_exact_cases": None,
        "test_large_uniform_logits_give_log_c": None,
        "test_nan_inf_propagate": None,
        "test_minus_inf_logit": None,
        "test_layouts": lambda p: p["layout"] in ("contiguous", "strided", "reversed"),
    },
    "test_info_nce.py": {
        "test_known_values_in_batch": None,
        "test_known_values_with_negatives": None,
        "test_symmetric_known_values": None,
        "test_batchmean_equals_mean": None,
        # SIZES queries; 1000 (several key tiles and query blocks) once per dtype
        "test_in_batch": lambda p: p["n"] != 1000 or not (p["normalize"] or p["symmetric"]),
        "test_negatives": None,
        "test_feature_dims": None,
        "test_long_queue": lambda p: p["n"] == 9,  # 4099 / 1031 negatives: many key tiles
        "test_unpaired_equals_paired_with_a_repeated_queue": None,
        "test_normalize_zero_vector": None,
        "test_normalize_tiny_norms": None,
        "test_tiny_temperature": None,
        "test_large_values": None,
        "test_nan_propagates": None,
        "test_inf_propagates": None,
    },
    "test_gradients.py": {
        "test_regression_grad_matches_reference": None,
        "test_mae_grad_is_zero_where_pred_equals_target": None,
        "test_mae_grad_at_equal_inputs_is_plus_zero": lambda p: p["layout"] in ("contiguous", "strided"),
        "test_cross_entropy_grad_matches_reference": None,
        "test_info_nce_grad_matches_reference": None,
    },
    "test_exact.py": {
        "test_sum_is_the_correctly_rounded_true_sum": None,
        "test_weighted_sum_is_the_correctly_rounded_true_sum": None,
        "test_heavy_cancellation_free_sum_of_huge_and_tiny_terms": None,
        "test_special_values": None,
    },
    "test_minus_inf_tiles.py": {
        "test_minus_inf_negatives_add_nothing": None,
        "test_float32_logits_that_overflow_to_minus_inf": None,
        "test_cross_entropy_rows_of_minus_inf_logits": None,
    },
    "test_vecmath.py": {
        "test_exp_error_over_its_range": None,
        "test_exp_flushes_below_the_normal_range_and_saturates_above": None,
        "test_exp_float64_limits": None,
        "test_log_error_over_its_range": None,
        "test_log_special_values": None,
        "test_every_tail_length": None,
    },
    "test_same_bits.py": {
        "test_bits_match_the_native_golden": None,
    },
    "test_fast_path.py": {
        "test_regression_fast_path_equals_general_path": None,
        "test_cross_entropy_fast_path_equals_general_path": None,
    },
}
# Which path auto-detection picked and what the CPU has: the point of running emulated.
_EMULATED_FILES = ("test_dispatch.py",)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    modules = {}
    expected_isa = os.environ.get("FASTLOSS_EXPECT_ISA")
    for item in items:
        filename = item.path.name
        name = getattr(item, "originalname", item.name)
        if filename in _EMULATED_FILES:
            item.add_marker(pytest.mark.emulated)
            continue
        if name not in _EMULATED.get(filename, {}):
            continue
        modules[filename] = item.module
        if "isa" not in item.fixturenames:
            raise pytest.UsageError(
                f"the emulated subset names {item.nodeid}, which does not use the isa fixture"
            )
        keep = _EMULATED[filename][name]
        # Under emulation only the path detection picked: the other paths' machine code is the
        # same as natively, where the whole suite runs it.
        if expected_isa and item.callspec.params["isa"] != expected_isa:
            continue
        if keep is None or keep(item.callspec.params):
            item.add_marker(pytest.mark.emulated)
    for filename, module in modules.items():
        stale = sorted(name for name in _EMULATED[filename] if not hasattr(module, name))
        if stale:
            raise pytest.UsageError(f"the emulated subset names tests {filename} no longer has: {stale}")
