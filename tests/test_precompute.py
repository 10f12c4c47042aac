"""precompute end to end: cached targets equal a direct forward, sharing, resume after kill -9, bad input."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from conftest import LABELS, make_model, spread, write_split

from skdcache import CacheError, DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.data.rows import mlm_positions

MAX_LENGTH = 24
TOP_K = 8
# shared models and datasets sit beside the clone (../shared), as benchmarks/quality/run.py expects;
# SKDCACHE_SHARED points elsewhere. Tests that need them skip when they are absent.
SHARED = Path(os.environ.get("SKDCACHE_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def _opts(**kw) -> TargetOptions:
    base = dict(max_length=MAX_LENGTH, top_k=TOP_K, batch_size=16, rows_per_block=32, progress=False)
    return TargetOptions(**{**base, **kw})


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _close_fp16(cached: torch.Tensor, reference: torch.Tensor) -> None:
    """Cached fp16 values against an fp32 reference: fp16 keeps 11 significant bits."""
    torch.testing.assert_close(cached.float(), reference.float(), rtol=2e-3, atol=2e-4)


def _group_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _no_group_written(root: Path) -> bool:
    return not list(root.rglob("zarr.json")) and not list(root.rglob("_blocks"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_split(d / "train.csv", 150, seed=11, pair=True)
    write_split(d / "validation.csv", 40, seed=12, pair=True)
    return d


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    permuted = {0: "positive", 1: "negative", 2: "neutral"}
    made = {
        "clf": make_model(root / "clf", "sequence", num_labels=3, seed=1),
        "reg": make_model(root / "reg", "sequence", num_labels=1, seed=2),
        "mlm": make_model(root / "mlm", "mlm", seed=3),
        "causal": make_model(root / "causal", "causal", seed=4),
        "perm": make_model(root / "perm", "sequence", num_labels=3, seed=5, id2label=permuted),
    }
    return {name: spread(path, 12.0) for name, path in made.items()}


def _direct_sequence_logits(model_dir: Path, texts: list[str], pairs: list[str] | None, max_length: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tok(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits, batch, model


@pytest.mark.parametrize("kind", ["single", "pair", "regression"])
def test_sequence_logits_equal_direct_forward(tmp_path: Path, data: Path, teachers: dict, kind: str):
    """Cached logits (single sentences, pairs with segment ids, regression) equal the HF model's own forward."""
    pair_column = "text2" if kind == "pair" else None
    label_column = "score" if kind == "regression" else "label"
    teacher = teachers["reg" if kind == "regression" else "clf"]
    spec = DataSpec(str(data), text_pair_column=pair_column, label_column=label_column)
    [result] = precompute(spec, [TeacherSpec("t", str(teacher))], tmp_path / "cache", _opts())
    assert result.status == "computed"

    records = _csv(data / "train.csv")
    texts = [r["text"] for r in records]
    pairs = [r["text2"] for r in records] if pair_column else None
    reference, batch, model = _direct_sequence_logits(teacher, texts, pairs, MAX_LENGTH)
    cache = TeacherCache(result.path)
    cached = cache.read(np.arange(len(records))).logits
    assert cached.shape == (150, 1 if kind == "regression" else 3)
    _close_fp16(cached, reference)
    assert cache.manifest.dataset["task"] == ("regression" if kind == "regression" else "classification")
    if kind == "pair":
        assert (batch["token_type_ids"] == 1).any()
        assert (batch["attention_mask"].sum(1) == MAX_LENGTH).any()  # long pairs are truncated alike
        with torch.no_grad():  # segment ids matter: without them the logits differ
            without_segments = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert not torch.allclose(cached, without_segments, atol=1e-2)
    if kind == "regression":  # the teacher's metric on the validation split: Pearson r of its predictions
        val = _csv(data / "validation.csv")
        val_logits, _, _ = _direct_sequence_logits(teacher, [r["text"] for r in val], None, MAX_LENGTH)
        pearson = np.corrcoef(val_logits[:, 0].numpy(), [float(r["score"]) for r in val])[0, 1]
        assert result.manifest.metric["name"] == "pearson"
        assert result.manifest.metric["value"] == pytest.approx(pearson, abs=1e-5)
    assert cache.verify() == []


def test_teacher_label_order_is_mapped_to_data_order(tmp_path: Path, data: Path, teachers: dict):
    """A teacher whose id2label permutes the class names gets its columns reordered; its metric uses that order."""
    from transformers import AutoConfig

    teacher = teachers["perm"]
    [result] = precompute(DataSpec(str(data)), [TeacherSpec("p", str(teacher))], tmp_path / "cache", _opts())
    config = AutoConfig.from_pretrained(teacher)
    columns = [config.label2id[name] for name in sorted(LABELS)]
    assert columns != [0, 1, 2]

    train = _csv(data / "train.csv")
    reference, _, _ = _direct_sequence_logits(teacher, [r["text"] for r in train], None, MAX_LENGTH)
    cached = TeacherCache(result.path).read(range(len(train))).logits
    _close_fp16(cached, reference[:, columns])
    assert not torch.allclose(cached, reference, atol=1e-2)

    val = _csv(data / "validation.csv")
    val_logits, _, _ = _direct_sequence_logits(teacher, [r["text"] for r in val], None, MAX_LENGTH)
    predicted = [config.id2label[int(i)] for i in val_logits.argmax(-1)]  # in the teacher's own label names
    accuracy = np.mean([name == r["label"] for name, r in zip(predicted, val, strict=True)])
    metric = result.manifest.metric
    assert metric["name"] == "accuracy" and metric["split"] == "validation" and metric["n_rows"] == 40
    assert metric["value"] == pytest.approx(accuracy)


def _split(values: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(values, counts.tolist()))


@pytest.fixture(scope="module")
def token_caches(tmp_path_factory, data: Path, teachers: dict) -> dict[str, Path]:
    """Token-level caches of the train split: MLM on single texts, causal LM on pairs."""
    root = tmp_path_factory.mktemp("token-caches")
    [mlm] = precompute(DataSpec(str(data)), [TeacherSpec("m", str(teachers["mlm"]))], root, _opts())
    pairs = DataSpec(str(data), text_pair_column="text2")
    [causal] = precompute(pairs, [TeacherSpec("c", str(teachers["causal"]))], root, _opts())
    return {"mlm": mlm.path, "causal": causal.path}


def test_mlm_topk_equals_log_softmax_at_masked_positions(data: Path, teachers: dict, token_caches: dict):
    """MLM: positions are the deterministic masks of non-special tokens; top-k/tail come from the full vocab."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    teacher = teachers["mlm"]
    texts = [r["text"] for r in _csv(data / "train.csv")]
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForMaskedLM.from_pretrained(teacher).eval()
    cache = TeacherCache(token_caches["mlm"])
    targets = cache.read(np.arange(len(texts)))

    masked, per_row_positions = [], _split(targets.positions, targets.token_counts)
    for row, (text, positions) in enumerate(zip(texts, per_row_positions, strict=True)):
        ids = tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        special = tok.get_special_tokens_mask(ids, already_has_special_tokens=True)
        candidates = [i for i, s in enumerate(special) if s == 0]
        positions = positions.tolist()
        assert len(positions) == max(1, round(0.15 * len(candidates)))
        assert positions == sorted(set(positions)) and set(positions) <= set(candidates)
        assert positions == mlm_positions(ids, special, 0.15, seed=0, row=row).tolist()
        masked.append([tok.mask_token_id if i in positions else t for i, t in enumerate(ids)])
    batch = tok.pad({"input_ids": masked}, return_tensors="pt")
    with torch.no_grad():
        logp = F.log_softmax(model(**batch).logits.double(), dim=-1)
    reference = torch.cat([logp[r, p] for r, p in enumerate(per_row_positions)])  # [n_tok, V]
    assert reference.shape == (int(targets.token_counts.sum()), model.config.vocab_size)
    values, _ = reference.topk(TOP_K, dim=-1)
    _close_fp16(targets.topk_logprobs, values)
    _close_fp16(reference.gather(1, targets.topk_ids), targets.topk_logprobs)  # ids point at those values
    _close_fp16(targets.tail_logmass, torch.log1p(-values.exp().sum(-1)))
    assert cache.verify() == []


def test_causal_topk_at_every_token(data: Path, teachers: dict, token_caches: dict):
    """Causal LM: one target per non-pad token (mixed lengths), equal to the HF model's own top-k there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = teachers["causal"]
    records = _csv(data / "train.csv")[::3]
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    batch = tok(
        [r["text"] for r in records],
        [r["text2"] for r in records],
        truncation=True,
        max_length=MAX_LENGTH,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    lengths = batch["attention_mask"].sum(1)
    reference = torch.cat([logp[i, :n] for i, n in enumerate(lengths.tolist())]).double()  # [n_tok, V]
    targets = TeacherCache(token_caches["causal"]).read(np.arange(0, 150, 3))
    assert targets.token_counts.tolist() == lengths.tolist()
    assert len(set(lengths.tolist())) > 3  # mixed lengths
    assert targets.positions.tolist() == [p for n in lengths.tolist() for p in range(n)]
    _close_fp16(targets.topk_logprobs, reference.topk(TOP_K, dim=-1).values)
    _close_fp16(reference.gather(1, targets.topk_ids), targets.topk_logprobs)


@pytest.mark.parametrize("head", ["mlm", "causal"])
def test_topk_plus_tail_sums_to_one(token_caches: dict, head: str):
    """Per token, sum(exp(top-k)) + exp(tail) = 1 within fp16 rounding; top-k values descend."""
    t = TeacherCache(token_caches[head]).read(np.arange(150))
    total = t.topk_logprobs.double().exp().sum(-1) + t.tail_logmass.double().exp()
    assert t.topk_logprobs.shape[0] >= 150  # at least one target per row
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=4e-3)
    assert (t.topk_logprobs[:, :-1] >= t.topk_logprobs[:, 1:]).all()
    assert (t.tail_logmass < 0).all()


def test_hidden_states_all_tokens_and_cls(tmp_path: Path, data: Path, teachers: dict):
    """Hidden states of every non-pad token (with hidden_index) and of [CLS] for chosen layers equal a forward."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = teachers["clf"]
    spec = DataSpec(str(data), text_pair_column="text2")
    team = [TeacherSpec("h", str(teacher))]
    [every] = precompute(spec, team, tmp_path / "c", _opts(hidden_layers="all", hidden_tokens="all"))
    [cls] = precompute(spec, team, tmp_path / "c", _opts(hidden_layers="2,1", hidden_tokens="cls"))
    assert every.path != cls.path
    records = _csv(data / "train.csv")
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    rows = np.array([149, 3, 77, 3, 0, 120])
    all_t, cls_t = TeacherCache(every.path).read(rows), TeacherCache(cls.path).read(rows)
    assert cls_t.hidden.shape == (len(rows), 2, 32)
    assert all_t.hidden.shape == (int(all_t.hidden_counts.sum()), 3, 32)
    for i, (row, hidden) in enumerate(zip(rows, _split(all_t.hidden, all_t.hidden_counts), strict=True)):
        enc = tok(
            records[row]["text"], records[row]["text2"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        with torch.no_grad():
            states = model(**enc, output_hidden_states=True).hidden_states
        assert hidden.shape[0] == enc["input_ids"].shape[1]
        _close_fp16(hidden, torch.stack(states, dim=2)[0])  # [T, L, H]
        _close_fp16(cls_t.hidden[i], torch.stack([states[1][0, 0], states[2][0, 0]]))


def test_same_teacher_shares_one_cache_and_repeat_is_a_no_op(tmp_path: Path, data: Path, teachers: dict):
    """Same weights under another name or path share one group; asking again writes nothing; adding computes one."""
    root, spec = tmp_path / "cache", DataSpec(str(data))
    copy = shutil.copytree(teachers["clf"], tmp_path / "elsewhere")
    [first] = precompute(spec, [TeacherSpec("a", str(teachers["clf"]))], root, _opts())
    before = _group_files(root)
    [again] = precompute(spec, [TeacherSpec("b", str(copy))], root, _opts())
    assert (first.status, again.status) == ("computed", "cached")
    assert again.path == first.path
    assert _group_files(root) == before

    team = [TeacherSpec("a", str(teachers["clf"])), TeacherSpec("m", str(teachers["mlm"]))]
    results = precompute(spec, team, root, _opts())
    assert [r.status for r in results] == ["cached", "computed"]
    assert results[0].path == first.path and results[1].path != first.path
    assert results[1].path.parent == first.path.parent  # one directory per dataset fingerprint
    group = str(first.path.relative_to(root))
    after = _group_files(root)
    assert {k: v for k, v in after.items() if k.startswith(group)} == {
        k: v for k, v in before.items() if k.startswith(group)
    }

    keys = {first.path}
    for opts in (_opts(hidden_layers="last"), _opts(max_length=16)):
        [other] = precompute(spec, [TeacherSpec("a", str(teachers["clf"]))], root, opts)
        assert other.status == "computed" and other.path.parent == first.path.parent
        keys.add(other.path)
    assert len(keys) == 3
    [limited] = precompute(DataSpec(str(data), limit=100), [TeacherSpec("a", str(teachers["clf"]))], root, _opts())
    assert limited.path.parent != first.path.parent and limited.path.name == first.path.name


# The child stalls just before publishing block 1's marker (its array bytes are being written), so the kill
# always lands mid-run: block 0 complete, block 1 partly written, the rest not started.
RESUME_SCRIPT = """
import sys, time
import skdcache.cache.writer as writer
publish = writer.atomic_write
def stalling_publish(path, data):
    if path.name == "000001.json":
        time.sleep(3600)
    publish(path, data)
writer.atomic_write = stalling_publish
from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
opts = TargetOptions(max_length=24, top_k=8, batch_size=8, rows_per_block=16, hidden_layers="last",
                     hidden_tokens="all", progress=False)
precompute(DataSpec(sys.argv[1], label_column=None), [TeacherSpec("c", sys.argv[2])], sys.argv[3], opts)
"""
RESUME_OPTS = dict(batch_size=8, rows_per_block=16, hidden_layers="last", hidden_tokens="all")


def _raw_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a group, read with plain zarr (each array is a subfolder holding a zarr.json)."""
    group = zarr.open_group(str(path), mode="r")
    return {p.parent.name: group[p.parent.name][:] for p in path.glob("*/zarr.json")}


def _kill_mid_run(data: Path, teacher: Path, root: Path, log: Path, work) -> None:
    """Start precompute in a child, run `work` meanwhile, then kill -9 the child once block 1 is being written."""
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, data, teacher, root], stdout=out, stderr=out)
        try:
            work()
            deadline = time.monotonic() + 60
            while child.poll() is None and time.monotonic() < deadline:
                if list(root.glob("*/*/token_index/c/1/0")) and list(root.glob("*/*/_blocks/[0-9]*.json")):
                    break
                time.sleep(0.02)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL, log.read_text()[-2000:]


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, teachers: dict):
    """kill -9 mid-run, then rerun: finished blocks are kept, and every array equals an uninterrupted run."""
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 64, seed=21)
    teacher, root = teachers["causal"], tmp_path / "cache"
    spec, team = DataSpec(str(data), label_column=None), [TeacherSpec("c", str(teacher))]
    fresh = []
    reference_run = lambda: fresh.extend(precompute(spec, team, tmp_path / "reference", _opts(**RESUME_OPTS)))  # noqa: E731
    _kill_mid_run(data, teacher, root, tmp_path / "child.log", reference_run)

    [group] = {p.parent.parent for p in root.glob("*/*/_blocks/[0-9]*.json")}
    markers = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (group / "_blocks").glob("[0-9]*.json")}
    done = sorted(int(p.stem) for p in markers)
    assert done == [0]
    shards = [group / "token_index" / "c" / str(b) / "0" for b in done]  # one row shard per block
    shard_state = [(p.read_bytes(), p.stat().st_mtime_ns) for p in shards]
    manifest = json.loads((group / "zarr.json").read_text())["attributes"]["skdcache"]
    assert manifest["state"] == "writing" and manifest["layout"]["n_blocks"] == 4
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(group)
    partial = TeacherCache(group, allow_incomplete=True)
    assert partial.read([0, 15]).token_counts.min() > 0
    with pytest.raises(CacheError, match="not written"):
        partial.read([16])

    [resumed] = precompute(spec, team, root, _opts(**RESUME_OPTS))
    [fresh] = fresh
    assert (resumed.status, fresh.status) == ("resumed", "computed")
    assert resumed.path == group
    assert resumed.path.relative_to(root) == fresh.path.relative_to(tmp_path / "reference")
    for p, (content, mtime) in markers.items():  # finished blocks were not recomputed
        assert (p.read_bytes(), p.stat().st_mtime_ns) == (content, mtime)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in shards] == shard_state

    got, want = _raw_arrays(resumed.path), _raw_arrays(fresh.path)
    names = [
        "_blocks",
        "hidden",
        "hidden_index",
        "positions",
        "tail_logmass",
        "token_index",
        "topk_ids",
        "topk_logprobs",
    ]
    assert sorted(got) == sorted(want) == names
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    a, b = TeacherCache(resumed.path).read(np.arange(64)), TeacherCache(fresh.path).read(np.arange(64))
    for field in ("topk_logprobs", "topk_ids", "tail_logmass", "positions", "token_counts", "hidden", "hidden_counts"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert TeacherCache(resumed.path).verify() == [] and TeacherCache(fresh.path).verify() == []
    assert TeacherCache(resumed.path).manifest.state == "complete"


def test_a_block_torn_mid_write_is_skipped_by_readers_and_rewritten_on_resume(tmp_path: Path, teachers: dict):
    """kill -9 inside a shard write leaves a truncated row shard of an unfinished block: partial readers and
    resume must not read it (they did, and failed as "damaged"), and resume rewrites it to what a fresh run has."""
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 64, seed=21)
    spec, team, root = DataSpec(str(data), label_column=None), [TeacherSpec("c", str(teachers["causal"]))], tmp_path
    [fresh] = precompute(spec, team, root / "fresh", _opts(**RESUME_OPTS))
    group = root / "torn" / fresh.path.relative_to(root / "fresh")
    shutil.copytree(fresh.path, group)
    (group / "_blocks" / "000001.json").unlink()
    torn = group / "token_index" / "c" / "1" / "0"
    torn.write_bytes(torn.read_bytes()[:7])
    meta = json.loads((group / "zarr.json").read_text())
    meta["attributes"]["skdcache"]["state"] = "writing"
    (group / "zarr.json").write_text(json.dumps(meta))

    partial = TeacherCache(group, allow_incomplete=True)
    assert partial.read([0, 40]).token_counts.min() > 0
    with pytest.raises(CacheError, match="not written"):
        partial.read([16])
    [resumed] = precompute(spec, team, root / "torn", _opts(**RESUME_OPTS))
    assert resumed.status == "resumed" and TeacherCache(group).verify() == []
    got, want = _raw_arrays(group), _raw_arrays(fresh.path)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_resume_after_crash_while_creating_the_group(tmp_path: Path, data: Path, teachers: dict):
    """A kill between creating the group and writing its manifest leaves a bare group; rerunning recomputes it."""
    spec, team, root = DataSpec(str(data)), [TeacherSpec("t", str(teachers["clf"]))], tmp_path / "cache"
    [first] = precompute(spec, team, root, _opts())
    shutil.rmtree(first.path)
    zarr.open_group(str(first.path), mode="w")  # what CacheWriter has written before its arrays and attributes
    [again] = precompute(spec, team, root, _opts())
    assert again.status == "computed" and TeacherCache(again.path).verify() == []


def test_second_writer_is_refused(tmp_path: Path, data: Path, teachers: dict):
    """While another writer holds a teacher cache's lock, precompute of that cache fails and writes no group."""
    from skdcache.cache.store import WriterLock

    spec, team = DataSpec(str(data)), [TeacherSpec("t", str(teachers["clf"]))]
    [probe] = precompute(spec, team, tmp_path / "probe", _opts())
    group = tmp_path / "cache" / probe.path.relative_to(tmp_path / "probe")
    with WriterLock(group):
        with pytest.raises(CacheError, match="another process"):
            precompute(spec, team, tmp_path / "cache", _opts())
        assert not group.exists()
    [after] = precompute(spec, team, tmp_path / "cache", _opts())
    assert after.status == "computed" and after.path == group


def test_a_cache_finished_by_another_writer_while_looking_is_only_read(
    monkeypatch, tmp_path: Path, data: Path, teachers: dict
):
    """Two processes on one teacher: the second may look (incomplete) just before the first finishes and frees
    the lock. Under the lock it looks again: it reports "cached" and rewrites nothing, not even the manifest."""
    module = importlib.import_module("skdcache.precompute")  # the package exports a function of that name
    spec, team = DataSpec(str(data)), [TeacherSpec("t", str(teachers["clf"]))]
    [first] = precompute(spec, team, tmp_path / "cache", _opts())
    before = {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()}
    real, looks = module._existing_manifest, []

    def stale_first_look(path):
        looks.append(path)
        return None if len(looks) == 1 else real(path)

    monkeypatch.setattr(module, "_existing_manifest", stale_first_look)
    [second] = precompute(spec, team, tmp_path / "cache", _opts())
    assert len(looks) == 2 and second.status == "cached" and second.manifest == first.manifest
    assert {p: p.read_bytes() for p in first.path.rglob("*") if p.is_file()} == before


def _expect_error(tmp_path: Path, data: DataSpec, teacher: Path, opts: TargetOptions, *fragments: str) -> None:
    """precompute refuses with a one-line SkdError holding every fragment, and leaves no teacher group behind."""
    root = tmp_path / "cache"
    with pytest.raises(SkdError) as err:
        precompute(data, [TeacherSpec("t", str(teacher))], root, opts)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert _no_group_written(root)


def test_wrong_label_count_and_label_names(tmp_path: Path, data: Path):
    """A teacher with another number of labels, or other label names, is refused before anything is written."""
    two = make_model(tmp_path / "two", "sequence", num_labels=2, seed=1)
    _expect_error(tmp_path, DataSpec(str(data)), two, _opts(), "2 labels", "3", "--label-column")
    _expect_error(tmp_path, DataSpec(str(data), label_column="score"), two, _opts(), "2 labels", "regression")
    other = make_model(tmp_path / "abc", "sequence", num_labels=3, seed=1, id2label={0: "a", 1: "b", 2: "c"})
    _expect_error(tmp_path, DataSpec(str(data)), other, _opts(), "'a'", "negative", "--label-column")


def test_top_k_larger_than_vocabulary(tmp_path: Path, data: Path, teachers: dict):
    """--top-k above the vocabulary size is refused, naming the flag and the vocabulary size."""
    vocab = json.loads((teachers["mlm"] / "config.json").read_text())["vocab_size"]
    _expect_error(tmp_path, DataSpec(str(data)), teachers["mlm"], _opts(top_k=vocab + 1), "--top-k", str(vocab))


def test_tokenizer_without_pad_token(tmp_path: Path, data: Path, teachers: dict):
    """A tokenizer saved without a pad token is refused with the fix (set one and save it)."""
    from transformers import AutoTokenizer

    teacher = shutil.copytree(teachers["causal"], tmp_path / "nopad")
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.pad_token = None
    tok.save_pretrained(teacher)
    assert AutoTokenizer.from_pretrained(teacher).pad_token is None
    _expect_error(tmp_path, DataSpec(str(data), label_column=None), teacher, _opts(), "pad token", "pad_token")


def test_teacher_missing_offline(tmp_path: Path, data: Path):
    """A teacher that is neither a directory nor an offline hub snapshot is a one-line error."""
    _expect_error(tmp_path, DataSpec(str(data)), tmp_path / "no-such-model", _opts(), "offline", "local directory")


def test_unwritable_cache_directory(tmp_path: Path, data: Path, teachers: dict):
    """A cache root that cannot be created or written names --cache; nothing is written."""
    team = [TeacherSpec("t", str(teachers["clf"]))]
    if os.geteuid() == 0:  # root ignores permission bits: make the path impossible instead
        (tmp_path / "afile").write_text("")
        root = tmp_path / "afile" / "sub"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        root = locked / "sub"
    try:
        with pytest.raises(SkdError) as err:
            precompute(DataSpec(str(data)), team, root, _opts())
        assert "--cache" in str(err.value) and str(root) in str(err.value) and "\n" not in str(err.value)
        assert not root.exists()
    finally:
        if os.geteuid() != 0:
            (tmp_path / "locked").chmod(0o700)


@pytest.mark.skipif(not (SHARED / "models" / "minilm-l3").is_dir(), reason="shared MiniLM not present")
def test_real_minilm_on_real_tweets(tmp_path: Path):
    """The real 3-layer MiniLM with a seeded 3-class head: cached logits equal its forward on 64 real tweets."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source, tweets = SHARED / "models" / "minilm-l3", SHARED / "datasets" / "tweets-sentiment"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=3).eval()
    tok = AutoTokenizer.from_pretrained(source)
    teacher = tmp_path / "minilm-clf"
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    opts = TargetOptions(max_length=64, batch_size=32, rows_per_block=32, eval_split=None, progress=False)
    [result] = precompute(DataSpec(str(tweets), limit=64), [TeacherSpec("minilm", str(teacher))], tmp_path / "c", opts)

    texts = [r["text"] for r in _csv(tweets / "train.csv")[:64]]
    batch = tok(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
    cache = TeacherCache(result.path)
    assert cache.manifest.dataset["n_rows"] == 64 and cache.manifest.dataset["label_names"] == sorted(LABELS)
    _close_fp16(cache.read(np.arange(64)).logits, reference)
    assert cache.verify() == []
