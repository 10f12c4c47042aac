"""Find and load Hugging Face models offline-safely: directories, configs, heads, tokenizers.

Shared by teachers and students; code shipped with a model runs only when the user passes --trust-remote-code.
"""

from __future__ import annotations

from pathlib import Path

from skdcache.errors import SkdError

ARCH_SUFFIX_TO_HEAD = {"ForSequenceClassification": "sequence", "ForMaskedLM": "mlm", "ForCausalLM": "causal"}
AUTO_CLASSES = {
    "sequence": "AutoModelForSequenceClassification",
    "mlm": "AutoModelForMaskedLM",
    "causal": "AutoModelForCausalLM",
}


def auto_class(head: str):
    """The transformers Auto class that builds a model with this head."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[head])


def looks_local(source: str) -> bool:
    """A path rather than a hub id: ./x, ../x, /x, ~/x, a/b/c, or a/b whose first part is a local folder."""
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        return True
    return "/" in source and Path(source.split("/", 1)[0]).is_dir()


def check_model_path(source: str, what: str) -> None:
    """Refuse a local-looking model path that does not exist, before anything is loaded."""
    if looks_local(source) and not Path(source).expanduser().exists():
        raise SkdError(f"{what}{source} does not exist; pass a local directory or a hub id available offline")


def resolve_model_dir(source: str, revision: str | None = None) -> Path:
    """A local directory, or the offline hub snapshot of `source`; never downloads unless online."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "student" / "config.json").exists():
            return path / "student"  # a `skdcache train --output` folder: its best student is in student/
        return path
    if looks_local(source):
        raise SkdError(f"model path {source} does not exist; pass a local directory or a hub id available offline")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
            )
        )
    except Exception as exc:
        raise SkdError(
            f"model {source!r} cannot be loaded offline ({type(exc).__name__}): download it once with network "
            f"access or pass a local directory"
        ) from exc


def load_config(model_dir: Path, name: str, trust_remote_code: bool = False):
    """The model config; code shipped with a model runs only when the user passed --trust-remote-code."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SkdError(f"model {name} ships custom code; pass --trust-remote-code only if you trust it") from exc
        raise SkdError(f"cannot read the config of {name} at {model_dir}: {str(exc).splitlines()[0]}") from exc


def detect_head(config, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    for arch in config.architectures or []:
        for suffix, head in ARCH_SUFFIX_TO_HEAD.items():
            if arch.endswith(suffix):
                return head
    raise SkdError(
        f"cannot tell the head of a {config.architectures or config.model_type} model; fine-tune it first "
        f"(skdcache train --mode none) or pass head=sequence|mlm|causal"
    )


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        raise SkdError(
            f"tokenizer of {model_dir} has no pad token; set one (e.g. tokenizer.pad_token = eos) and save it"
        )
    return tok
