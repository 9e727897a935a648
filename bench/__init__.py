"""The benchmark suite behind ``fastloss bench``.

fastloss is measured against its peers in one run, on one machine, on the same synthetic data:

- ``numpy_ref``: the NumPy formulation a user would write first (float32, temporaries, the full
  InfoNCE logits matrix);
- ``numpy_fast``: the fastest NumPy formulation we could write (BLAS dot products, in-place
  ufuncs on a reused cache-sized workspace, online log-sum-exp over blocks for InfoNCE);
- ``torch``: ``torch.nn.functional`` on CPU tensors, when PyTorch is importable
  (``linear_cross_entropy``: its reference path, the logits materialised);
- ``torch_chunked``: ``F.linear_cross_entropy``'s chunked path
  (``options=torch.nn.LinearCrossEntropyOptions()``), the ``lce`` workloads only;
- ``jax``: ``jax.jit``-compiled functions, when JAX is importable.

Modules:

- ``workloads``: the workloads (shapes, seeded data, float64 references);
- ``peers``: the implementations under test;
- ``timing``: medians of repeated ``time.perf_counter`` timings and thread control;
- ``limits``: the machine's limits in the same run (memory bandwidth by fastloss's probe,
  NumPy's float32 matmul rate), which each workload's rate is a fraction of;
- ``memory``: the peak extra memory of one call, measured in a fresh subprocess, and the
  ``linear_cross_entropy`` memory table (``--lce-memory``);
- ``report``: the table and its per-thread summary, the JSON file and the PNG chart (``--chart``);
- ``runner``: the command line (``fastloss bench``) that ties them together.

Shipped inside the package as ``fastloss._bench``; from a source checkout ``python -m bench``
runs it too.
"""
