"""TRL's SFTTrainer composed with SkdTrainer, as docs/chat-data.md shows: `class SkdSFTTrainer(SkdTrainer,
SFTTrainer)` trains step for step like plain SkdTrainer, and SFT's rendering of the conversations agrees with the
cache's: the same token ids and, for a template with {% generation %} blocks, the same assistant tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_chat import GENERATION_TEMPLATE, MAX_LENGTH, chat_data, chat_team, run_cfg  # noqa: F401 (fixtures)
from test_integration_hf import trainer_for

from skdcache.train import _optimizer

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),  # trl's own call
]


def sft_trainer(config, dataset, out: Path, **kw):
    from skdcache.integrations.transformers import SkdTrainer
    from skdcache.training.student import StudentSpec, build_student

    class SkdSFTTrainer(SkdTrainer, trl.SFTTrainer):
        pass

    model, _ = build_student(StudentSpec.parse(config.student, None), "causal", None, None, "unlabelled")
    tokenizer = transformers.AutoTokenizer.from_pretrained(config.student)
    args = trl.SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps,
        learning_rate=config.lr,  # SFTConfig defaults to 2e-5 and bf16: set them as the plain Trainer's
        bf16=False,
        seed=config.seed,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        max_grad_norm=config.grad_clip,
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        max_length=MAX_LENGTH,
        **kw,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    return SkdSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        cache=config.cache,
        optimizers=_optimizer(params, config, config.max_steps),
        temperature=config.temperature,
        alpha=config.alpha,
    )


def test_sft_composition_trains_like_skdtrainer_and_renders_like_the_cache(chat_team, tmp_path: Path):  # noqa: F811
    spec, cache, student, _ = chat_team
    config = run_cfg(spec, student, cache, tmp_path / "native")
    dataset = datasets.load_dataset("json", data_files=str(Path(spec.source) / "train.jsonl"), split="train")
    plain = trainer_for(config, "causal", tmp_path / "hf", dataset=dataset)
    plain.train()
    sft = sft_trainer(config, dataset, tmp_path / "sft")
    ids = sft.train_dataset["input_ids"]  # SFT's own rendering and tokenisation of the messages
    assert [list(x) for x in ids] == [list(x) for x in sft.skd_inputs.enc.ids]
    sft.train()
    assert [x["step"] for x in sft.skd_history] == [x["step"] for x in plain.skd_history] == [1, 2, 3, 4]
    for x, y in zip(sft.skd_history, plain.skd_history, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)


def test_sft_assistant_mask_equals_the_cache_mask_with_generation_blocks(chat_data, tmp_path: Path):  # noqa: F811
    """SFT's `assistant_only_loss` mask (the template's {% generation %} blocks) marks the same tokens that
    skdcache's incremental rendering finds for the same text without the blocks: content plus end of turn."""
    from conftest import make_tokenizer
    from test_chat import TEMPLATE

    from skdcache import DataSpec
    from skdcache.data.chat import render_chat
    from skdcache.data.rows import load_rows, tokenize

    tok = make_tokenizer(tmp_path / "tok")
    spec = DataSpec(str(chat_data), label_column=None, messages_column="messages")
    rows = render_chat(load_rows(spec), tok, TEMPLATE)
    ours = tokenize(tok, rows, MAX_LENGTH)
    tok.chat_template = GENERATION_TEMPLATE
    dataset = datasets.load_dataset("json", data_files=str(chat_data / "train.jsonl"), split="train")
    prepared = trl.SFTTrainer(
        model=_tiny_causal(tok),
        args=trl.SFTConfig(
            output_dir=str(tmp_path / "sft"),
            assistant_only_loss=True,
            max_length=MAX_LENGTH,
            report_to=[],
            use_cpu=True,
        ),
        train_dataset=dataset,
        processing_class=tok,
    ).train_dataset
    assert [list(x) for x in prepared["input_ids"]] == [list(x) for x in ours.ids]
    sft_mask = [[label != -100 for label in x] for x in prepared["labels"]]  # SFT folds the mask into labels
    assert sft_mask == [m.tolist() for m in ours.assistant]


SMALL = {"max_length": MAX_LENGTH, "report_to": [], "use_cpu": True, "bf16": False}


def _tiny_causal(tok):
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return transformers.LlamaForCausalLM(config)
