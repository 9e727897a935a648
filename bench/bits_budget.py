"""Issue "Same bits on every CPU path"'s budget: the large workloads of `fastloss bench` (float32,
seeded, the bench's shapes), medians of 15 calls, as one JSON line, on the path FASTLOSS_ISA
forces. Run it once per install (before and after), in alternation, on a quiet machine:
FASTLOSS_ISA=avx512 python bench/bits_budget.py THREADS"""

import json
import sys
import time

import fastloss
import numpy as np

threads = int(sys.argv[1])
fastloss.set_num_threads(threads)
rng = np.random.default_rng(0)
x = rng.standard_normal((65536, 1000), dtype=np.float32)
y = rng.integers(0, 1000, 65536)
q = rng.standard_normal((256, 128), dtype=np.float32)
k = rng.standard_normal((256, 128), dtype=np.float32)
queue = rng.standard_normal((65536, 128), dtype=np.float32)
qb = rng.standard_normal((4096, 256), dtype=np.float32)
kb = rng.standard_normal((4096, 256), dtype=np.float32)
work = {
    "ce_large": lambda: fastloss.cross_entropy(x, y),
    "ce_large_grad": lambda: fastloss.cross_entropy(x, y, return_grad=True),
    "infonce_moco": lambda: fastloss.info_nce(q, k, queue),
    "infonce_moco_grad": lambda: fastloss.info_nce(q, k, queue, return_grad=True),
    "infonce_inbatch": lambda: fastloss.info_nce(qb, kb),
}
out = {"isa": fastloss._core.active_isa()}
for name, f in work.items():
    f()
    ts = []
    for _ in range(15):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    out[name] = float(np.median(ts))
print(json.dumps(out))
