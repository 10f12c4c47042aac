"""`SkdTrainer` (transformers.Trainer) against `skdcache train`: same rows, draws and weights give the same loss
at every step (sequence, causal and MLM heads); a shuffled/filtered/edited dataset is refused; LoRA students train
only their adapters; the example runs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model, no_dropout, spread, write_split

from skdcache import DataSpec, SkdError, TargetOptions, TeacherSpec, precompute
from skdcache.train import _optimizer, train
from skdcache.training.config import TrainConfig
from skdcache.training.loader import StepSchedule
from skdcache.training.student import StudentSpec, build_student

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
from skdcache.integrations.rows import with_row_index  # noqa: E402
from skdcache.integrations.transformers import SkdTrainer  # noqa: E402

MAX_LENGTH, STEPS, BATCH, LR = 32, 6, 16, 1e-3
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_split(d / "train.csv", 96, seed=1)
    write_split(d / "validation.csv", 24, seed=2)
    return d


def team(root: Path, data: Path, head: str) -> tuple[DataSpec, Path, Path]:
    """Two teachers cached for `data`, and a dropout-free student."""
    spec = DataSpec(str(data), label_column="label" if head == "sequence" else None)
    scale = 8.0 if head == "sequence" else 3.0
    teachers = [
        TeacherSpec(f"t{i}", str(spread(make_model(root / f"t{i}", head, layers=i, seed=i), scale))) for i in (1, 2)
    ]
    precompute(
        spec,
        teachers,
        root / "cache",
        TargetOptions(max_length=MAX_LENGTH, top_k=8, batch_size=64, rows_per_block=64, progress=False),
    )
    return spec, root / "cache", no_dropout(make_model(root / "student", head, layers=1, seed=9))


@pytest.fixture(scope="module")
def seq(tmp_path_factory, data):
    return team(tmp_path_factory.mktemp("seq"), data, "sequence")


@pytest.fixture(scope="module")
def mlm(tmp_path_factory, data):
    return team(tmp_path_factory.mktemp("mlm"), data, "mlm")


@pytest.fixture(scope="module")
def causal(tmp_path_factory, data):
    return team(tmp_path_factory.mktemp("causal"), data, "causal")


def cfg_for(spec: DataSpec, student: Path, cache: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        data=spec,
        student=str(student),
        output=str(out),
        cache=str(cache),
        max_steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        num_workers=0,
        progress=False,
        max_length=MAX_LENGTH,
        device="cpu",
        eval_split=None,
        seed=3,
    )


def hf_dataset(data: Path):
    datasets.disable_progress_bars()
    return datasets.load_dataset("csv", data_files={"train": str(data / "train.csv")}, split="train")


def trainer_for(
    cfg: TrainConfig,
    head: str,
    out: Path,
    dataset=None,
    model=None,
    gradient_accumulation_steps: int = 1,
    training: dict | None = None,
    total_steps: int | None = None,
    **kw,
) -> SkdTrainer:
    """The Trainer set up as `cfg`'s run: its optimizer and schedule over `total_steps` (default `max_steps`)."""
    if model is None:
        model, _ = build_student(
            StudentSpec.parse(cfg.student, None), head, 3, ["negative", "neutral", "positive"], "classification"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.student)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        seed=cfg.seed,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        max_grad_norm=cfg.grad_clip,
        disable_tqdm=True,
        logging_steps=1,
        gradient_accumulation_steps=gradient_accumulation_steps,
        **{"save_strategy": "no", "max_steps": cfg.max_steps or -1, "num_train_epochs": cfg.epochs, **(training or {})},
    )
    params = [p for p in model.parameters() if p.requires_grad]
    return SkdTrainer(
        model=model,
        args=args,
        train_dataset=dataset if dataset is not None else hf_dataset(Path(cfg.data.source)),
        processing_class=tokenizer,
        cache=cfg.cache,
        optimizers=_optimizer(params, cfg, total_steps or cfg.max_steps),
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        **kw,
    )


def step_lines(out: Path) -> list[dict]:
    return [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" not in x]


@pytest.mark.parametrize("head", ["sequence", "causal", "mlm"])
def test_trainer_loss_equals_skdcache_train_step_for_step(head: str, request, tmp_path: Path):
    """Same rows, teacher draws, starting weights and optimizer (skdcache's AdamW + schedule): the same losses."""
    spec, cache, student = request.getfixturevalue({"sequence": "seq"}.get(head, head))
    cfg = cfg_for(spec, student, cache, tmp_path / "native")
    train(cfg)
    native = step_lines(tmp_path / "native")
    trainer = trainer_for(cfg, head, tmp_path / "hf")
    trainer.train()
    hf = trainer.skd_history
    assert [x["step"] for x in hf] == [x["step"] for x in native] == list(range(1, STEPS + 1))
    assert [x["teacher"] for x in hf] == [x["teacher"] for x in native]
    assert len({x["teacher"] for x in hf}) == 2  # the team is really sampled
    for x, y in zip(hf, native, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert max(x["kd"] for x in hf) > 1e-2  # not 0 == 0
    assert native[-1]["loss"] != pytest.approx(
        native[0]["loss"], abs=1e-4
    )  # weights moved: later steps test the optimizer


@pytest.mark.parametrize(
    "head, mode, sampling",
    [("sequence", "route", "ca-mkd"), ("causal", "route", "min-ce"), ("sequence", "weight", "closest-correct")],
)
def test_trainer_per_row_modes_equal_skdcache_train_step_for_step(head, mode, sampling, request, tmp_path: Path):
    """Per-row routing and weighting in the Trainer: the same rows per teacher and the same losses as train."""
    spec, cache, student = request.getfixturevalue({"sequence": "seq"}.get(head, head))
    cfg = dataclasses.replace(cfg_for(spec, student, cache, tmp_path / "native"), mode=mode, sampling=sampling)
    train(cfg)
    native = step_lines(tmp_path / "native")
    trainer = trainer_for(cfg, head, tmp_path / "hf", mode=mode, sampling=sampling)
    trainer.train()
    hf = trainer.skd_history
    assert [x["step"] for x in hf] == [x["step"] for x in native] == list(range(1, STEPS + 1))
    assert [x.get("teacher_rows") for x in hf] == [x.get("teacher_rows") for x in native]
    for x, y in zip(hf, native, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5) and x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert max(x["kd"] for x in hf) > 1e-2  # not 0 == 0
    if mode == "route":
        assert len({t for x in hf for t in x["teacher_rows"]}) >= 2  # rows really go to different teachers


def test_a_ready_sampler_without_the_protocol_is_refused_in_one_line(seq, tmp_path: Path):
    from types import SimpleNamespace

    spec, cache, student = seq
    old_style = SimpleNamespace(kind="mine", sample=lambda step: 0, probs=lambda: [1.0, 0.0])
    with pytest.raises(SkdError) as err:
        trainer_for(cfg_for(spec, student, cache, tmp_path / "x"), "sequence", tmp_path / "hf", sampler=old_style)
    assert "\n" not in str(err.value) and "adaptive" in str(err.value) and "observe" in str(err.value)


def test_gradient_accumulation_shares_the_steps_teacher(seq, tmp_path: Path):
    """grad_accum 2: both micro-batches of a step use its one teacher, and the losses still match."""
    spec, cache, student = seq
    cfg = cfg_for(spec, student, cache, tmp_path / "native")
    cfg.grad_accum, cfg.max_steps = 2, 4
    train(cfg)
    native = step_lines(tmp_path / "native")
    trainer = trainer_for(cfg, "sequence", tmp_path / "hf", gradient_accumulation_steps=2)
    trainer.train()
    hf = trainer.skd_history
    assert len(hf) == 2 * len(native) == 8
    assert all(a["teacher"] == b["teacher"] for a, b in zip(hf[::2], hf[1::2], strict=True))
    for x, y in zip(hf[1::2], native, strict=True):  # skdcache logs a step's last micro-batch
        assert (x["step"], x["teacher"]) == (y["step"], y["teacher"])
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.shuffle(seed=1),
        lambda d: d.filter(lambda x: len(x["text"]) > 10),
        lambda d: d.map(lambda x: {"text": x["text"].upper()}),
        lambda d: with_row_index(d).shuffle(seed=1),
    ],
    ids=["shuffled", "filtered", "edited", "indexed-then-shuffled"],
)
def test_other_rows_are_refused_with_one_line(edit, seq, tmp_path: Path):
    spec, cache, student = seq
    cfg = cfg_for(spec, student, cache, tmp_path / "x")
    with pytest.raises(SkdError) as info:
        trainer_for(cfg, "sequence", tmp_path / "hf", dataset=edit(hf_dataset(Path(spec.source))))
    text = str(info.value)
    assert "\n" not in text and "precompute" in text, text


def test_retokenised_token_inputs_are_refused_with_one_line(causal, tmp_path: Path):
    """Token targets sit at cached positions: input_ids from another max_length are refused, not trained on."""
    spec, cache, student = causal
    tokenizer = transformers.AutoTokenizer.from_pretrained(student)
    dataset = hf_dataset(Path(spec.source)).map(lambda x: tokenizer(x["text"], truncation=True, max_length=4))
    trainer = trainer_for(cfg_for(spec, student, cache, tmp_path / "x"), "causal", tmp_path / "hf", dataset=dataset)
    with pytest.raises(SkdError, match="input_ids differ") as info:
        next(iter(trainer.get_train_dataloader()))
    assert "\n" not in str(info.value)


def test_skd_row_survives_the_trainer_column_removal(seq, tmp_path: Path):
    """The Trainer drops columns the model does not take; skd_row must reach the collator anyway."""
    spec, cache, student = seq
    trainer = trainer_for(cfg_for(spec, student, cache, tmp_path / "x"), "sequence", tmp_path / "hf")
    assert trainer.args.remove_unused_columns
    batch = next(iter(trainer.get_train_dataloader()))
    assert "skd_row" in batch and batch["skd_row"].shape == (BATCH,)


def test_lora_student_trains_only_adapters_from_the_kd_loss(causal, tmp_path: Path):
    peft = pytest.importorskip("peft")
    spec, cache, student = causal
    cfg = cfg_for(spec, student, cache, tmp_path / "x")
    cfg.alpha, cfg.max_steps = 1.0, 3  # KD only: whatever reaches the adapters comes from the cached targets
    base = transformers.AutoModelForCausalLM.from_pretrained(student)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trainer_for(cfg, "causal", tmp_path / "hf", model=model)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed), changed
    assert any("lora_B" in n for n in changed)  # lora_B starts at zero: only a KD gradient moves it
    assert all(x["kd"] > 0 and "ce" not in x for x in trainer.skd_history)


def test_two_ranks_draw_the_same_teacher_and_split_skdcaches_batches(seq, tmp_path: Path):
    """torchrun, 2 CPU ranks (gloo): each step both ranks use one teacher (the single-process draw), rank r
    trains on the r-th half of skdcache's global batch, and their mean loss is the single-process loss (HF AdamW
    here, weight decay 0 vs 0.01: within 1e-4 over 3 steps)."""
    spec, cache, student = seq
    native_cfg = cfg_for(spec, student, cache, tmp_path / "native")
    native_cfg.max_steps, native_cfg.lr = 3, 1e-3
    train(native_cfg)
    native = step_lines(tmp_path / "native")
    setup = {
        "train": str(Path(spec.source) / "train.csv"),
        "student": str(student),
        "cache": str(cache),
        "output": str(tmp_path / "hf"),
        "per_device": BATCH // 2,
        "steps": 3,
        "seed": native_cfg.seed,
    }
    (tmp_path / "setup.json").write_text(json.dumps(setup))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(Path(__file__).with_name("hf_ddp_helper.py")),
        str(tmp_path / "setup.json"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "hf" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    schedule = StepSchedule(96, BATCH, native_cfg.seed)
    for step, y in enumerate(native):
        a, b = (r["history"][step] for r in ranks)
        assert a["teacher"] == b["teacher"] == y["teacher"]
        halves = np.array_split(schedule.rows_for(step), 2)
        assert [r["rows"][step] for r in ranks] == [h.tolist() for h in halves]
        assert (a["loss"] + b["loss"]) / 2 == pytest.approx(y["loss"], abs=1e-4)


def test_example_runs_offline(tmp_path: Path, data: Path):
    teacher = spread(make_model(tmp_path / "teacher", seed=1), 8.0)
    student = make_model(tmp_path / "student", layers=1, seed=2)
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "trainer_kd.py"),
        "--data",
        str(data),
        "--teacher",
        f"t={teacher}",
        "--student",
        str(student),
        "--output",
        str(tmp_path / "out"),
        "--max-steps",
        "3",
        "--batch-size",
        "8",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "student" / "config.json").exists()
    assert "teachers drawn" in done.stdout


def test_trainer_beta_trains_the_hidden_state_loss(data, tmp_path: Path):
    """SkdTrainer(beta=...): the hidden-state loss `skdcache train --beta` adds, its projection trained with the
    model (a submodule of it, so the Trainer's optimizer and checkpoints hold it)."""
    spec = DataSpec(str(data))
    teacher = spread(make_model(tmp_path / "t", layers=2, hidden=48, seed=5), 8.0)
    opts = TargetOptions(max_length=MAX_LENGTH, hidden_layers="all", rows_per_block=64, progress=False)
    precompute(spec, [TeacherSpec("t", str(teacher))], tmp_path / "cache", opts)
    student = make_model(tmp_path / "s", layers=1, seed=6)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = SkdTrainer(
        model=transformers.AutoModelForSequenceClassification.from_pretrained(student),
        args=args,
        train_dataset=hf_dataset(data),
        processing_class=transformers.AutoTokenizer.from_pretrained(student),
        cache=tmp_path / "cache",
        mode="single",
        beta=1.0,
    )
    before = [p.detach().clone() for p in trainer.skd_projector.parameters()]
    trainer.train()
    assert len(trainer.skd_history) == 3 and all(r["hidden"] > 0 for r in trainer.skd_history)
    after = list(trainer.skd_projector.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
