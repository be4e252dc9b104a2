"""What predicts a bottom code: held-out cross-entropy of count tables over growing contexts (minutes on a CPU).

Each table counts (context, code) over a run's training codes; a context's estimate is smoothed towards the
previous (smaller) context's, p_k(x) = (c_k(ctx, x) + a p_{k-1}(x)) / (c_k(ctx) + a), the first towards the
codes' overall histogram, and `a` is chosen per level on the validation codes from a grid. The figure is nats
per bottom token on the validation codes: how much each kind of neighbour says, before any model is designed.

    python scripts/bottom_code_counts.py runs/base
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from export.run_folder import codes_file

SMOOTHING = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)


def contexts(z) -> dict[str, np.ndarray]:
    """(N, 64, 8) bottom codes → one int array (N, 64, 8) per kind of neighbour; V stands for 'none'."""
    bottom, top = z["bottom"].astype(np.int64), z["top"].astype(np.int64)
    n, rows, cols = bottom.shape
    v = 1 + max(int(bottom.max()), int(top.max()))
    none = np.full((n, rows, 1), v)
    return {
        "position": np.broadcast_to(np.arange(rows * cols).reshape(1, rows, cols), bottom.shape),
        "family": np.broadcast_to(z["family"].astype(np.int64)[:, None, None], bottom.shape),
        "top code above": np.repeat(np.repeat(top, 2, 1), 2, 2),
        "previous in time": np.concatenate([none, bottom[:, :, :-1]], 2),
        "the one below": np.concatenate([np.full((n, 1, cols), v), bottom[:, :-1]], 1),
    }


def keys(ctx: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """A unique int64 per combination of the named contexts (flattened)."""
    out = np.zeros(ctx[names[0]].size, np.int64)
    for name in names:
        out = out * 1024 + ctx[name].reshape(-1)
    return out


def counts(train_keys: np.ndarray, codes: np.ndarray, query_keys: np.ndarray, query_codes: np.ndarray):
    """c(ctx, x) and c(ctx) over the training tokens, looked up for each query token."""
    v = int(codes.max()) + 2
    pair = np.unique(train_keys * v + codes, return_counts=True)
    ctx = np.unique(train_keys, return_counts=True)

    def look(table, q):
        i = np.clip(np.searchsorted(table[0], q), 0, len(table[0]) - 1)
        return np.where(table[0][i] == q, table[1][i], 0)

    return look(pair, query_keys * v + query_codes), look(ctx, query_keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with codes/train.npz and codes/valid.npz")
    parser.add_argument("--train-notes", type=int, default=0, help="use the first this many (0: all)")
    args = parser.parse_args()
    train, valid = (np.load(codes_file(args.run, s)) for s in ("train", "valid"))
    if args.train_notes:
        train = {k: train[k][: args.train_notes] for k in train.files}
    ctx_t, ctx_v = contexts(train), contexts(valid)
    codes_t, codes_v = train["bottom"].astype(np.int64).reshape(-1), valid["bottom"].astype(np.int64).reshape(-1)
    histogram = np.bincount(codes_t, minlength=int(codes_t.max()) + 1) + 0.5
    p = (histogram / histogram.sum())[codes_v]
    print(f"{train['bottom'].shape[0]} training / {valid['bottom'].shape[0]} validation maps")
    print("| context | nats per bottom token | smoothing |")
    print("|---|---|---|")
    print(f"| none (the codes' histogram) | {-np.log(p).mean():.3f} | - |")
    names: list[str] = []
    for name in ("position", "family", "top code above", "previous in time", "the one below"):
        names.append(name)
        pair, total = counts(keys(ctx_t, names), codes_t, keys(ctx_v, names), codes_v)
        best = min(SMOOTHING, key=lambda a: -np.log((pair + a * p) / (total + a)).mean())
        p = (pair + best * p) / (total + best)
        print(f"| + {name} | {-np.log(p).mean():.3f} | {best} |")
    # The family on top of every local context: how much it adds once the neighbours are known.
    local = ["position", "top code above", "previous in time", "the one below"]
    base = None
    for with_family in (False, True):
        chosen = local + (["family"] if with_family else [])
        q = (histogram / histogram.sum())[codes_v]
        for i in range(1, len(chosen) + 1):
            pair, total = counts(keys(ctx_t, chosen[:i]), codes_t, keys(ctx_v, chosen[:i]), codes_v)
            best = min(SMOOTHING, key=lambda a: -np.log((pair + a * q) / (total + a)).mean())
            q = (pair + best * q) / (total + best)
        nats = -np.log(q).mean()
        if base is None:
            base = nats
        else:
            print(f"| the family on top of the four local contexts | {nats:.3f} ({nats - base:+.3f}) | - |")


if __name__ == "__main__":
    main()
