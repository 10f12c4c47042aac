"""The student's vocabulary projection under bf16 autocast: how much error it puts into the KD loss and gradient.

    python benchmarks/perf/student_precision.py                 # V = 49,152, H = 576, 256 positions (~10 s CPU)
    python benchmarks/perf/student_precision.py --vocab 8192 --scales 5,20,40

States h [n, H] (bf16-rounded, as a bf16 body hands them over) are projected by W [V, H] scaled so the logits'
standard deviation is a third of each --scales value (5 and 20 give largest logits of about 9 and 37), and
scored with skdcache's top-k KD loss (k = 16, T = 2) against fixed teacher targets. The projection is run in
float64 (the reference), float32 (what `train` and SkdTrainer do under autocast, as precompute does for the
teacher) and bf16 (a plain autocast forward); printed: the KD loss's relative error and the relative error of
its gradient with respect to W and h. The numbers in docs/chat-data.md ("Precision under autocast") come from
the default run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from skdcache.distill.losses import topk_kd_loss
from skdcache.teacher.reduce import topk_with_tail

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def measure(vocab: int, hidden: int, n: int, scale: float, seed: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """(largest |logit|, dtype -> (KD loss relative error, gradient relative error)), against float64."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g).bfloat16().double()
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / hidden**0.5
    w *= scale / (3 * float((h @ w.T).std()))
    teacher = torch.randn(n, vocab, generator=g) * scale / 3 + (h @ w.T).float() * 0.5
    values, ids, tail = topk_with_tail(teacher, 16)
    out = {}
    for name, dtype in DTYPES.items():
        wp, hp = w.clone().requires_grad_(True), h.clone().requires_grad_(True)
        logits = F.linear(hp.to(dtype), wp.to(dtype))
        logits = logits if dtype == torch.float64 else logits.float()
        cast = torch.float64 if dtype == torch.float64 else torch.float32
        loss = topk_kd_loss(logits, ids, values.to(cast), tail.to(cast), 2.0)
        loss.backward()
        out[name] = (float(loss.detach()), torch.cat([wp.grad.flatten(), hp.grad.flatten()]))
    ref_loss, ref_grad = out.pop("float64")
    return float((h @ w.T).abs().max()), {
        k: (abs(v[0] - ref_loss) / abs(ref_loss), float((v[1] - ref_grad).norm() / ref_grad.norm()))
        for k, v in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--scales", default="5,20", help="3 x the logits' std, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| largest logit | projection | KD loss rel. error | KD gradient rel. error |")
    print("|---|---|---|---|")
    for scale in (float(s) for s in args.scales.split(",")):
        top, errors = measure(args.vocab, args.hidden, args.positions, scale, args.seed)
        for name, (loss_err, grad_err) in errors.items():
            print(f"| {top:.1f} | {name} | {loss_err:.1e} | {grad_err:.1e} |")


if __name__ == "__main__":
    main()
