"""Run each teacher once over the rows and write its targets to the cache, resumably.

data -> tokenize (the teacher's own tokenizer) -> length-bucketed batches -> teacher forward
-> reduce to targets -> background writer (one block = whole shards) -> completion marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skdcache.cache.fingerprint import cache_key, model_weights_hash, tokenizer_hash
from skdcache.cache.format import DATASET_FILE, plan_layout
from skdcache.cache.manifest import Manifest, read_manifest
from skdcache.cache.remote import RemoteRoot
from skdcache.cache.roots import CacheRoot, open_root
from skdcache.cache.store import WriterLock, ensure_writable_root, remove_empty_tree, write_json
from skdcache.cache.writer import CacheWriter
from skdcache.data.chat import render_chat
from skdcache.data.rows import DataSpec, TextRows, load_rows, tokenize
from skdcache.device import pick_device
from skdcache.distributed import barrier, from_rank0_object, rank_and_size
from skdcache.errors import CacheError, GroupIncomplete, SkdError
from skdcache.fields import check_ranges
from skdcache.models import check_model_path
from skdcache.stages import StageClock
from skdcache.teacher.blocks import block_progress, capture, run_block, token_positions
from skdcache.teacher.load import TeacherFiles, TeacherSpec, load_teacher, open_teacher
from skdcache.teacher.metric import evaluate_teacher
from skdcache.teacher.options import TargetOptions, check_teacher, preflight, target_spec
from skdcache.teacher.provenance import dataset_record, new_manifest
from skdcache.teacher.reduce import label_permutation

log = logging.getLogger("skdcache")


@dataclass
class PrecomputeResult:
    name: str
    path: Path
    status: str  # "cached" | "cached (remote)" | "computed" | "resumed" | "repaired" | "verified"
    seconds: float
    manifest: Manifest
    stages: dict[str, dict[str, float]] | None = None  # StageClock.summary() of a run that computed blocks

    def row(self) -> dict[str, str]:
        """One line of the `skdcache precompute` summary table."""
        metric = self.manifest.metric
        return {
            "teacher": self.name,
            "status": self.status,
            "seconds": f"{self.seconds:.1f}",
            "metric": f"{metric['name']}={metric['value']:.4f}" if metric else "-",
            "path": str(self.path),
        }


def precompute_teacher(
    teacher: TeacherSpec | TeacherFiles,
    rows: TextRows,
    root: Path,
    opts: TargetOptions,
    eval_rows: TextRows | None = None,
    remote: RemoteRoot | None = None,
) -> PrecomputeResult:
    """Compute (or find) one teacher's cache for `rows`; safe to interrupt and call again.

    With a `remote` root, `root` is its local mirror: a group already published is reused without a
    download, and a group computed (or completed earlier but never published) here is published.
    """
    files = teacher if isinstance(teacher, TeacherFiles) else open_teacher(teacher, opts.trust_remote_code)
    if rows.messages is not None:  # chat rows: rendered with this teacher's template (or --chat-template)
        rows = render_chat(rows, files.tokenizer, rows.spec.chat_template)
        eval_rows = render_chat(eval_rows, files.tokenizer, rows.spec.chat_template) if eval_rows is not None else None
    try:
        result = _precompute_local(files, rows, root, opts, eval_rows, remote)
    except OSError as exc:  # ENOSPC can land anywhere: group metadata, markers, the manifest (blocks say more)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheError(
                f"disk full while writing {files.spec.name}'s cache under {root}; free space (or pass another "
                "--cache) and rerun: finished blocks are kept"
            ) from exc
        raise
    if remote is not None and result.status != "cached (remote)" and rank_and_size()[0] == 0:
        if result.status != "cached" or not remote.has_complete(rows.fingerprint, result.path.name):
            remote.publish(result.path)
    return result


def _precompute_local(
    files: TeacherFiles,
    rows: TextRows,
    root: Path,
    opts: TargetOptions,
    eval_rows: TextRows | None,
    remote: RemoteRoot | None,
) -> PrecomputeResult:
    """key -> look for the cache -> lock -> load the teacher -> plan the blocks -> write them -> finish."""
    t0, spec = time.perf_counter(), files.spec
    check_teacher(spec, files.config, files.head, rows, opts)
    targets = target_spec(files.head, files.config, opts)
    weights_hash, tok_hash = model_weights_hash(files.model_dir), tokenizer_hash(files.tokenizer)
    key = cache_key(weights_hash, tok_hash, targets, rows.label_names)
    group_path = root / rows.fingerprint / key

    def result(status: str, manifest: Manifest, stages: dict | None = None) -> PrecomputeResult:
        return PrecomputeResult(spec.name, group_path, status, time.perf_counter() - t0, manifest, stages)

    status, manifest, damaged = _look(spec.name, group_path, rows.fingerprint, key, opts, remote)  # 1. look
    if status is not None:
        return result(status, manifest)
    rank, world = rank_and_size()
    if world > 1 and opts.repair:
        raise SkdError("--repair runs in one process; drop --nproc / torchrun for it")
    with WriterLock(group_path) if rank == 0 else contextlib.nullcontext():
        # 2. another writer may have finished it between the look above and the lock: then it is only read
        now = _existing_manifest(group_path) if rank == 0 and not opts.repair else None
        if from_rank0_object(now is not None and now.state == "complete"):
            return result("cached", now if rank == 0 else read_manifest(group_path))
        device = pick_device(opts.device)
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        teacher = load_teacher(spec, device, opts.trust_remote_code, weights_hash, files=files)  # 3. load
        perm = label_permutation(teacher.config, rows)  # refuses other label names before anything is written
        perm = perm.to(device) if perm is not None else None
        enc = tokenize(files.tokenizer, rows, opts.max_length)  # 4. plan: tokens, target positions, layout
        positions = token_positions(files.head, enc, files.tokenizer, targets)
        counts = np.array([len(p) for p in positions]) if positions is not None else None
        n_labels = rows.num_labels or files.config.num_labels
        cfg = files.config
        layout, index = plan_layout(
            targets, len(rows), n_labels, cfg.vocab_size, cfg.hidden_size, counts, enc.lengths, opts.rows_per_block
        )
        if manifest is not None:  # resuming or repairing: keep the codings it was written with (v1: none)
            layout = layout.with_codings_of(manifest.layout)
        manifest = new_manifest(teacher, files, rows, targets, layout, tok_hash, key)
        clock = StageClock()  # 5. write: every rank its share of the missing blocks
        writer = _open_writer(root, rows, group_path, manifest, layout, index, clock, damaged)
        done = writer.done()
        todo = [b for b in range(layout.n_blocks) if b not in done and b % world == rank]
        status = "repaired" if damaged else "resumed" if done else "computed"
        on_batch, bar = block_progress(spec.name, layout, done, todo, opts.progress)

        def compute(block: int) -> dict[str, np.ndarray]:
            rows_of_block = range(*layout.block_rows(block))
            bs = opts.batch_size
            return run_block(teacher, enc, positions, targets, layout, rows_of_block, bs, device, perm, on_batch, clock)

        capture(todo, compute, writer, spec.name)
        bar.close()
        barrier()  # 6. finish: every rank's blocks are durable before rank 0 declares the cache complete
        if rank == 0:
            metric = None
            if eval_rows is not None:
                metric = evaluate_teacher(teacher, eval_rows, opts.max_length, opts.batch_size, device, perm)
            manifest = writer.finish(metric)
        barrier()
        if rank != 0:
            manifest = read_manifest(group_path)
    return result(status, manifest, clock.summary())


def _look(
    name: str, group_path: Path, dataset_fp: str, key: str, opts: TargetOptions, remote: RemoteRoot | None
) -> tuple[str | None, Manifest | None, set[int]]:
    """(status, manifest, damaged blocks): a status when the cache is there to use as it is ("cached (remote)",
    "cached", "verified"), else None with the manifest of an unfinished or damaged group to resume or repair."""
    if remote is not None and not opts.repair:  # rank 0 decides, so all ranks take the same path
        published = from_rank0_object(remote.has_complete(dataset_fp, key) if rank_and_size()[0] == 0 else None)
        if published is not None:
            return "cached (remote)", published, set()
    manifest = _existing_manifest(group_path)
    if manifest is None or manifest.state != "complete":
        return None, manifest, set()
    if not opts.repair:
        return "cached", manifest, set()
    damaged = _damaged_blocks(group_path)
    if not damaged:
        return "verified", manifest, set()
    log.warning("%s: recomputing damaged blocks %s", name, sorted(damaged))
    return None, manifest, damaged


def _open_writer(root, rows, group_path, manifest, layout, index, clock, damaged: set[int]) -> CacheWriter:
    """Rank 0 creates (or reopens) the group and drops damaged blocks; the other ranks open what it made."""
    rank = rank_and_size()[0]
    if rank == 0:
        write_json(root / rows.fingerprint / DATASET_FILE, dataset_record(rows))
        writer = CacheWriter(group_path, manifest, layout, index, clock)
        for block in damaged:
            writer.invalidate(block)
    barrier()
    if rank != 0:
        writer = CacheWriter(group_path, manifest, layout, index, clock)
    return writer


def _damaged_blocks(group_path: Path) -> set[int]:
    """Blocks that fail verification; every block when the cache cannot even be opened."""
    from skdcache.cache.reader import TeacherCache

    try:
        return set(TeacherCache(group_path, allow_incomplete=True).verify_blocks())
    except Exception:  # an unreadable index array: recompute everything rather than trust any of it
        manifest = read_manifest(group_path)
        return set(range(manifest.layout["n_blocks"]))


def _existing_manifest(group_path: Path) -> Manifest | None:
    """The manifest of a cache group, or None when there is none yet or its creation was cut short."""
    if not (group_path / "zarr.json").exists():
        return None
    try:
        return read_manifest(group_path)
    except GroupIncomplete:
        return None  # the writer recreates a group whose creation crashed before the manifest


def load_eval_rows(data: DataSpec, opts: TargetOptions) -> TextRows | None:
    from skdcache.data.tables import available_splits

    if not opts.eval_split or opts.eval_split == data.split:
        return None  # unlabelled rows are loaded too: causal teachers are scored by next-token accuracy
    if opts.eval_split not in available_splits(data):
        return None
    return load_rows(dataclasses.replace(data, split=opts.eval_split, limit=None))


def precompute(
    data: DataSpec,
    team: list[TeacherSpec],
    cache_root: str | Path | CacheRoot | None = None,
    opts: TargetOptions | None = None,
) -> list[PrecomputeResult]:
    """Python API of `skdcache precompute`: every teacher of `team` over the rows of `data`.

    `cache_root` is anything `open_root` accepts: a path, ``~/x``, ``file:///x`` or a remote URL.
    """
    opts = opts or TargetOptions()
    opts.check()
    check_ranges(data, {"source": "--data"})
    if not team:
        raise SkdError("no teacher given; pass --teacher NAME=PATH (repeatable) or --config team.toml")
    names = [t.name for t in team]
    if len(set(names)) != len(names):
        raise SkdError(f"teacher names must be unique, got {names}")
    for spec in team:
        check_model_path(spec.source, f"--teacher {spec.name}=")
    where = open_root(cache_root)
    remote = where.remote() if where.is_remote else None
    if remote is not None and rank_and_size()[0] == 0:
        remote.check_writable()
    rows = load_rows(data)
    eval_rows = load_eval_rows(data, opts)
    teachers = [open_teacher(spec, opts.trust_remote_code) for spec in team]  # config + tokenizer, no weights
    for teacher in teachers:  # every teacher's model and options checked before the cache root is touched
        preflight(teacher, rows, opts)
    created = not where.path.exists()
    root = ensure_writable_root(where.path)
    results = []
    try:
        for teacher in teachers:
            result = precompute_teacher(teacher, rows, root, opts, eval_rows, remote)
            log.info("%s: %s in %.1fs -> %s", result.name, result.status, result.seconds, result.path)
            results.append(result)
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty cache root behind
            remove_empty_tree(root)
        raise
    return results
