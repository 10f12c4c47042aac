"""Reduce one teacher forward pass to the targets the cache stores (logits, top-k + tail, hidden states)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from skdcache.cache.reader import Targets
from skdcache.cache.spec import TargetSpec
from skdcache.data.rows import Encoded, TextRows, mlm_positions, pad_batch, target_mask
from skdcache.errors import SkdError
from skdcache.stages import StageClock
from skdcache.teacher.load import LoadedTeacher


def label_permutation(config, rows: TextRows) -> torch.Tensor | None:
    """Teacher column for each dataset label, so cached logits are in the dataset's label order."""
    if rows.task != "classification":
        return None
    names = [config.id2label[i] for i in range(config.num_labels)]
    if all(n.startswith("LABEL_") for n in names) or names == rows.label_names:
        return None
    if sorted(names) != sorted(rows.label_names):
        raise SkdError(f"teacher labels {names} differ from the data's {rows.label_names}; fix --label-column")
    return torch.tensor([names.index(n) for n in rows.label_names])


def target_positions(
    tokenizer, spec: TargetSpec, ids: list[int], row: int, assistant: np.ndarray | None = None
) -> np.ndarray:
    """Positions of one row carrying a token-level loss: all non-pad (causal LM), those predicting an assistant
    token (causal LM on chat rows: `assistant` [len(ids)] bool), or the seeded masked ones (MLM)."""
    if spec.head == "causal":
        if assistant is not None:  # position t predicts token t + 1
            return np.flatnonzero(assistant[1:]).astype(np.int64)
        return np.arange(len(ids), dtype=np.int64)
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    return mlm_positions(ids, special, spec.mlm_probability, spec.mask_seed, row)


def teacher_batch(
    teacher: LoadedTeacher, enc: Encoded, rows, positions: list[np.ndarray] | None, head: str, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The teacher's padded input for `rows` [B, T] on `device`, and the mask of its target positions [B, T]
    (token heads; MLM inputs are masked there, as the cache saw them). `positions` are the batch's own rows'."""
    ids = [list(enc.ids[r]) for r in rows]
    mask = None
    if positions is not None:
        mask = target_mask(ids, positions, teacher.tokenizer.mask_token_id if head == "mlm" else None)
        mask = mask.to(device)
    types = [enc.type_ids[r] for r in rows] if enc.type_ids is not None else None
    batch = {k: v.to(device) for k, v in pad_batch(ids, types, teacher.tokenizer.pad_token_id).items()}
    return batch, mask


TOPK_FIELDS = ("topk_logprobs", "topk_ids", "tail_logmass")  # what `topk_with_tail` returns, in order


def topk_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-vocabulary log-softmax, then top-k and the log of the mass left outside it.

    Args:
        logits: [n, V] at the positions that carry a loss.
    Returns:
        values [n, k] (descending log-probs), ids [n, k], tail [n] = log(1 - sum(exp(values))).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    # log(1 - p_topk) computed as logsumexp of the rest: exact even when the top-k holds almost all mass.
    rest = logp.scatter(-1, ids, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1)
    return values, ids, tail


def _float32_projection(module: torch.nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Recompute the vocabulary projection in float32 under autocast: bf16 logits of magnitude ~20 are off by
    ~0.06, which is most of the information in a tail log-prob. The body stays in the fast dtype."""
    if output.dtype == torch.float32 or not torch.is_autocast_enabled(output.device.type):
        return None  # already exact (no autocast): keep it
    with torch.autocast(output.device.type, enabled=False):
        bias = module.bias.float() if module.bias is not None else None
        return F.linear(args[0].float(), module.weight.float(), bias)


def float32_vocab_projection(model: torch.nn.Module, head: str):
    """Give a token-level student the teacher's treatment: under autocast its vocabulary projection runs in
    float32, so the KD loss compares float32 logits on both sides (at bf16 the projection alone put 0.3% of
    error into the KD gradient at logits of ~9, 1.4% at ~37; docs/chat-data.md). Returns the hook handle
    (None for sequence heads or a projection that is not a plain Linear); a no-op without autocast."""
    projection = model.get_output_embeddings() if head != "sequence" else None
    if not isinstance(projection, torch.nn.Linear):
        return None
    return projection.register_forward_hook(_float32_projection)


@torch.inference_mode()
def teacher_forward(
    teacher: LoadedTeacher,
    batch: dict[str, torch.Tensor],
    target_mask: torch.Tensor | None,
    spec: TargetSpec,
    label_permutation: torch.Tensor | None,
    autocast_dtype: torch.dtype | None,
    full_logits: bool = False,
    uniforms: torch.Tensor | None = None,
    clock: StageClock | None = None,
) -> Targets:
    """Run the teacher on a padded batch and reduce its outputs to cache targets: the `kinds` fields the spec
    stores, on the teacher's device; token fields are flattened over the batch in row order, [n, ...].

    Args:
        batch: input_ids / attention_mask (/ token_type_ids) [B, T] on the teacher's device.
        target_mask: [B, T] bool, positions that carry a token-level loss (None for sequence heads).
        label_permutation: [C] teacher column for each dataset label (None = identity).
        full_logits: token heads: return the full-vocabulary logits at the target positions, [n, V], instead
            of top-k (the live reference the cache approximates; never stored).
        uniforms: sampled / hybrid targets: [n, N] float64 (`position_uniforms`) driving the draws.
        clock: where the forward's and the reduction's seconds are added (on an accelerator, kernels run
            asynchronously: their time lands in whichever stage next waits for the device).
    """
    clock = clock or StageClock()
    device_type = batch["input_ids"].device.type
    head = teacher.model.get_output_embeddings() if teacher.head != "sequence" else None
    fp32_head = None
    if autocast_dtype is not None and isinstance(head, torch.nn.Linear):
        fp32_head = head.register_forward_hook(_float32_projection)
    amp = torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    try:
        with clock.stage("forward"), amp:
            out = teacher.model(**batch, output_hidden_states=bool(spec.hidden_layers))
    finally:
        if fp32_head is not None:
            fp32_head.remove()
    with clock.stage("reduce"):
        return _reduce(out, teacher.head, batch, target_mask, spec, label_permutation, full_logits, uniforms)


def _reduce(out, head: str, batch, target_mask, spec: TargetSpec, label_permutation, full_logits, uniforms):
    """The targets of one forward's outputs (see `teacher_forward`), on the outputs' device."""
    hidden_layers, hidden_tokens = spec.hidden_layers, spec.hidden_tokens
    result = Targets()
    if head == "sequence":
        logits = out.logits.float()
        result.logits = logits[:, label_permutation] if label_permutation is not None else logits
    elif full_logits:
        result.logits = out.logits[target_mask].float()
    else:
        parts: dict[str, list[torch.Tensor]] = {}
        for lo, logits in target_chunks(out.logits, target_mask):
            if spec.sampled:
                reduced = sample_targets(logits, spec, uniforms[lo : lo + len(logits)])
            else:
                reduced = dict(zip(TOPK_FIELDS, topk_with_tail(logits, spec.top_k), strict=True))
            for name, values in reduced.items():
                parts.setdefault(name, []).append(values)
        for name, values in parts.items():
            setattr(result, name, torch.cat(values))
    if hidden_layers:
        # select the stored tokens of each layer before stacking: a CLS cache needs 1/T of the copies
        if hidden_tokens == "cls":
            result.hidden = torch.stack([out.hidden_states[i][:, 0].float() for i in hidden_layers], dim=1)  # [B, L, H]
        else:
            keep = batch["attention_mask"].bool()  # [B, T]
            result.hidden = torch.stack([out.hidden_states[i][keep].float() for i in hidden_layers], dim=1)  # [n, L, H]
    return result


def target_chunks(logits: torch.Tensor, target_mask: torch.Tensor, elements: int | None = None):
    """(first position, logits [c, V]) at the target positions, `elements` logits at a time (default: 16 MB of
    float32 on the CPU, 256 MB on an accelerator, where fewer, larger kernels matter more).

    Never copies all target positions' logits at once (a causal batch of 64 x 64 tokens over a 49k vocabulary
    is 800 MB per temporary): on the CPU each fresh temporary that large costs page faults, more than the
    arithmetic, and small chunks also stay in cache across log-softmax, top-k and the tail sum.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    where = target_mask.reshape(-1).nonzero().squeeze(1)
    elements = elements or (1 << 22 if logits.device.type == "cpu" else 1 << 26)
    step = max(1, elements // max(1, flat.shape[-1]))
    for lo in range(0, max(len(where), 1), step):  # an empty batch still yields one typed, empty chunk
        yield lo, flat.index_select(0, where[lo : lo + step])


def position_uniforms(rows: np.ndarray, counts: list[int], n_samples: int, seed: int) -> torch.Tensor:
    """Uniforms [sum(counts), n_samples] float64 for the draws at each target position, seeded by (seed, row)
    alone, so the draws do not depend on batching, block order, process count or live vs cached."""
    parts = [np.random.default_rng([seed, int(r)]).random((c, n_samples)) for r, c in zip(rows, counts, strict=True)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, n_samples)))


def sample_targets(logits: torch.Tensor, spec: TargetSpec, uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sparse sampled targets of one batch's target positions (Sparse Logit Sampling, ACL 2025).

    `sampled`: N draws per position from the teacher's tempered distribution p_T (T = spec.sample_temperature).
    `hybrid`: the exact top-k of p_T plus N draws from p_T restricted to the rest (the tail), whose mass is kept.
    Draws are by inverse CDF in float64 at the given uniforms, then de-duplicated into (id, count) pairs.

    Args:
        logits: [n, V] teacher logits at the target positions, a chunk at a time (`target_chunks`: the float64
            CDF is [n, V]).
        uniforms: [n, N] float64 in [0, 1) (`position_uniforms`).
    Returns:
        sample_ids [n, N] long (unique ids first, then zero padding), sample_counts [n, N] long (0 = padding),
        sample_logprobs [n, N] float32 (log p_T of each id; 0 for padding); for `hybrid` also topk_logprobs
        [n, k], topk_ids [n, k] and tail_logmass [n], all at temperature T.
    """
    out: dict[str, torch.Tensor] = {}
    logp = F.log_softmax(logits.float() / spec.sample_temperature, dim=-1)  # [n, V]
    probs = logp.double().exp()
    if spec.targets == "hybrid":
        values, ids = logp.topk(spec.top_k, dim=-1)
        out["topk_logprobs"], out["topk_ids"] = values, ids
        out["tail_logmass"] = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)
        probs.scatter_(-1, ids, 0.0)  # draw from the tail only
    cdf = probs.cumsum(dim=-1)  # [n, V] float64
    u = uniforms.to(cdf.device) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(cdf.shape[-1] - 1)  # [n, N]
    ordered, _ = draws.sort(dim=-1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = first.long().cumsum(dim=-1) - 1  # the unique id's place in its row
    counts = torch.zeros_like(ordered).scatter_add_(1, slot, torch.ones_like(ordered))
    unique = torch.zeros_like(ordered).scatter_(1, slot, ordered)
    lp = torch.where(counts > 0, logp.gather(-1, unique), torch.zeros_like(unique, dtype=logp.dtype))
    out["sample_ids"], out["sample_counts"], out["sample_logprobs"] = unique, counts, lp
    return out
