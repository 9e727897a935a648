"""Issue 9's speed budget: the large workloads of `fastloss bench` (float32, seeded), medians of 31
calls, as one JSON line. Run it once per install (the exact-sum build and the one before it), in
alternation, on a quiet machine: python bench/exact_budget.py THREADS"""

import json
import sys
import time

import fastloss
import numpy as np

threads = int(sys.argv[1])
fastloss.set_num_threads(threads)
rng = np.random.default_rng(0)
p = rng.standard_normal((16384, 1024), dtype=np.float32)
t = rng.standard_normal((16384, 1024), dtype=np.float32)
x = rng.standard_normal((65536, 1000), dtype=np.float32)
y = rng.integers(0, 1000, 65536)
work = {
    "mse_large": lambda: fastloss.mse(p, t),
    "mae_large": lambda: fastloss.mae(p, t),
    "ce_large": lambda: fastloss.cross_entropy(x, y),
    "mse_large_grad": lambda: fastloss.mse(p, t, return_grad=True),
    "ce_large_grad": lambda: fastloss.cross_entropy(x, y, return_grad=True),
}
out = {}
for name, f in work.items():
    f()
    f()
    ts = []
    for _ in range(31):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    out[name] = float(np.median(ts))
print(json.dumps(out))
