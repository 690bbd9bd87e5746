"""Check the original-layout InternVL export and import against InternVL's OWN code.

Not a pytest test: it needs InternVL's source and old transformers releases, which are not
dependencies of this package (nothing of InternVL is copied into the repository). It runs in two
kinds of process:

* the driver (this venv, transformers 5): builds tiny random VLMs with our library, exports them
  with ``export_original``, computes our fp32 logits and greedy tokens, and compares;
* workers (``--worker TASK``, started by the driver with the same python, but with
  ``PYTHONPATH=<transformers dir>:<official code dir>:<shims>``): load the export with InternVL's
  ``InternVLChatModel`` (its classes directly, and ``AutoModel`` + ``trust_remote_code``), or build
  a tiny official model and ``save_pretrained`` it for our loader to read (the import direction).

Prepare (once; see tests/manual/README.md)::

    pip install --no-deps --target /tmp/official/tf437 transformers==4.37.2 tokenizers==0.15.2 \\
        huggingface_hub==0.23.5 requests urllib3 idna certifi charset-normalizer
    pip install --no-deps --target /tmp/official/tf449 transformers==4.49.0 tokenizers==0.21.0 \\
        huggingface_hub==0.29.1 requests urllib3 idna certifi charset-normalizer
    git clone https://github.com/OpenGVLab/InternVL /tmp/InternVL   # or any checkout of it

Run::

    .venv/bin/python tests/manual/official_interop.py --official-code /tmp/InternVL/internvl_chat \\
        --transformers /tmp/official/tf437 --transformers /tmp/official/tf449 [--only qwen2,internlm2] \\
        [--keep /tmp/interop] [--json results.json]

``--transformers DIR:CODE`` pairs a transformers dir with another official code dir (e.g.
``internvl_chat_gpt_oss``, the only official code with Qwen3, which needs transformers >= 4.55).
``timm`` (DropPath) and ``peft`` are replaced by small shims written into the work dir when the
worker's environment lacks them; ``flash_attn`` must be absent (the official code then falls back
to eager attention). Exit status: 0 when every row passes (unsupported ones aside), 1 otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Stdlib only at module level: workers import this file under old transformers.

TOLERANCE = 1e-4  # max |logit difference| in fp32 (same math gives ~1e-6)
NEW_TOKENS = 6  # greedy tokens compared
TILES = 2
IMG_CONTEXT = "<IMG_CONTEXT>"
VLM_TOKENS = ["<img>", "</img>", IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
QUESTION = "<image>\nWhat colour is the shape on the left of the image?"
CORPUS = [
    "The image shows a red circle, a blue square and a green triangle on a white background.",
    "Question: how many objects are there? Answer: there are three objects in the picture.",
    "Describe the picture in detail. What colour is the shape on the left of the image?",
    "You are a helpful assistant. Please answer the question using a single word or phrase.",
]
# Official files a hub checkpoint carries (flattened next to config.json, imports made relative).
OFFICIAL_FILES = (
    "internvl/conversation.py",
    "internvl/model/internvl_chat/configuration_intern_vit.py",
    "internvl/model/internvl_chat/configuration_internvl_chat.py",
    "internvl/model/internvl_chat/modeling_intern_vit.py",
    "internvl/model/internvl_chat/modeling_internvl_chat.py",
    "internvl/model/internvl_chat/conversation.py",
    "internvl/model/internlm2/configuration_internlm2.py",
    "internvl/model/internlm2/modeling_internlm2.py",
    "internvl/model/internlm2/tokenization_internlm2.py",
    "internvl/model/internlm2/tokenization_internlm2_fast.py",
    "internvl/model/phi3/configuration_phi3.py",
    "internvl/model/phi3/modeling_phi3.py",
)
SHIMS = {
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": (
        "from torch import nn\n\n\n"
        "class DropPath(nn.Module):  # shim: identity (drop_path_rate is 0 in every case)\n"
        "    def __init__(self, drop_prob=0.0, scale_by_keep=True):\n"
        "        super().__init__()\n"
        "        self.drop_prob = drop_prob\n\n"
        "    def forward(self, x):\n"
        "        return x\n"
    ),
    "timm/layers/__init__.py": "from timm.models.layers import DropPath  # newer timm's path\n",
    "peft/__init__.py": (
        "def LoraConfig(*args, **kwargs):  # shim: LoRA is never used here\n"
        "    raise NotImplementedError('peft shim')\n\n\n"
        "def get_peft_model(*args, **kwargs):\n"
        "    raise NotImplementedError('peft shim')\n"
    ),
}


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One tiny VLM: LLM family, ViT style (300m: layer_norm + qkv bias; 6b: rms_norm + qk-norm),
    pixel shuffle version, feature layer, tied output layer."""

    name: str
    llm: str  # qwen2 | llama | qwen3 | internlm2
    vit: str = "300m"
    ps_version: str = "v2"
    select_layer: int = -1
    tie: bool = False

    @property
    def rope_theta(self) -> float:
        return 500000.0 if self.llm == "llama" else 1000000.0  # anything but the 10000 default


EXPORT_CASES = (
    Case("qwen2", "qwen2"),
    Case("qwen2-tied", "qwen2", tie=True),
    Case("qwen2-ps_v1", "qwen2", ps_version="v1"),
    Case("qwen2-layer-2", "qwen2", select_layer=-2),
    Case("qwen2-vit6b", "qwen2", vit="6b"),
    Case("internlm2", "internlm2"),
    Case("internlm2-vit6b-v1-layer-2", "internlm2", vit="6b", ps_version="v1", select_layer=-2),
    Case("llama", "llama"),
    Case("qwen3", "qwen3"),
)
IMPORT_CASES = (
    Case("qwen2", "qwen2"),
    Case("qwen2-vit6b-v1-layer-2", "qwen2", vit="6b", ps_version="v1", select_layer=-2),
    Case("internlm2", "internlm2"),
    Case("internlm2-vit6b-v1-layer-2", "internlm2", vit="6b", ps_version="v1", select_layer=-2),
    Case("llama", "llama"),
    Case("qwen3", "qwen3"),
)
# Tiny shapes shared by both directions: 64px tiles of 8px patches -> 16 tokens per tile.
VIT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=64,
    patch_size=8,
)
LLM = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
)
ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
}


@dataclass
class Row:
    case: str
    direction: str  # export(classes) | export(AutoModel) | import | roundtrip
    transformers: str
    max_diff: float | None = None
    max_ref: float | None = None
    greedy_equal: bool | None = None
    tokenizer: str = ""  # ok | differs | error
    status: str = "ERROR"  # PASS | FAIL | ERROR | UNSUPPORTED
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- worker (old transformers)


def _where(err: BaseException) -> str:
    """``Type: message`` plus the innermost frames in InternVL's code and in transformers."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if "/internvl/" in f.filename or "transformers_modules" in f.filename]
    lib = [f for f in frames if "/transformers/" in f.filename]
    loc = [f"{Path(f.filename).name}:{f.lineno}" for f in (own[-1:] + lib[-1:])]
    msg = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {msg}" + (f" [at {', '.join(loc)}]" if loc else "")


def _official_facts(model: Any) -> dict[str, Any]:
    """What the official model made of a config: the fields a wrong export would show in."""
    lm = model.language_model
    c = lm.config
    tied = lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    return {
        "architecture": type(lm).__name__,
        "rope_theta": float(getattr(c, "rope_theta", float("nan"))),
        "rope_scaling": getattr(c, "rope_scaling", None),
        "tied_lm_head": bool(tied),
        "vocab_size": c.vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "ps_version": model.ps_version,
        "select_layer": model.select_layer,
        "num_image_token": model.num_image_token,
        "vit_norm_type": model.config.vision_config.norm_type,
        "vit_qk_normalization": model.config.vision_config.qk_normalization,
        "llm_attn": getattr(c, "_attn_implementation", None),
    }


def _official_run(model: Any, ids: Any, pixels: Any, image_token_id: int, eos: int, pad: int) -> dict:
    import torch

    model.img_context_token_id = image_token_id
    model.eval()
    with torch.no_grad():
        flags = torch.ones(pixels.shape[0], 1, dtype=torch.long)
        logits = model(pixel_values=pixels, input_ids=ids, image_flags=flags).logits.float()
    out: dict[str, Any] = {"logits": logits}
    extra: dict[str, int] = {}
    for _ in range(2):
        try:
            with torch.no_grad():
                gen = model.generate(
                    pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                    eos_token_id=eos, pad_token_id=pad, **extra,
                )  # fmt: skip
            out["greedy"] = gen[0, -NEW_TOKENS:].tolist()  # generated from inputs_embeds: new tokens only
            break
        except Exception as err:  # noqa: BLE001 - reported, not raised
            out["greedy_error"] = _where(err)
            if "bos_token_id" not in str(err) or extra:
                break
            # transformers < 4.4x wants a BOS id to start from inputs_embeds: say so, then retry with one
            out["greedy_error"] += f"; compared after retrying with bos_token_id={pad}"
            extra = {"bos_token_id": pad}
    return out


def _official_classes() -> tuple[Any, Any]:
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    return InternVLChatConfig, InternVLChatModel


def _conv_template(name: str) -> Any:
    try:
        from internvl.conversation import get_conv_template
    except ImportError:  # internvl_chat_gpt_oss keeps it beside the model
        from internvl.model.internvl_chat.conversation import get_conv_template
    return get_conv_template(name)


def _query(template: str, num_image_token: int) -> str:
    """The prompt ``model.chat()`` builds for one image of TILES tiles (its own template code)."""
    conv = _conv_template(template)
    conv.append_message(conv.roles[0], QUESTION)
    conv.append_message(conv.roles[1], None)
    image = "<img>" + IMG_CONTEXT * (num_image_token * TILES) + "</img>"
    return conv.get_prompt().replace("<image>", image, 1)


def _fp32(model: Any, directory: str | None = None) -> tuple[Any, list[str]]:
    """Some official variants pin a part to bf16 (internvl_chat_gpt_oss: ``mlp1``); compare in
    fp32, re-reading such a part's weights from ``directory`` (the cast rounded them)."""
    import torch

    pinned = sorted({n.split(".")[0] for n, p in model.named_parameters() if p.dtype != torch.float32})
    model = model.to(torch.float32)
    if pinned and directory is not None:
        from safetensors.torch import load_file

        sd: dict[str, Any] = {}
        for f in sorted(Path(directory).glob("*.safetensors")):
            sd |= {k: v for k, v in load_file(str(f)).items() if k.split(".")[0] in pinned}
        model.load_state_dict(sd, strict=False)
    return model, [f"official code pins {', '.join(pinned)} to bf16; run in fp32"] if pinned else []


def _worker_load(task: dict, mode: str) -> dict:
    """Load an export with the official code (``classes`` or ``auto``) and run it."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    d = task["dir"]
    res: dict[str, Any] = {"mode": mode}
    try:
        if mode == "classes":
            config_cls, model_cls = _official_classes()
            config = config_cls.from_pretrained(d)
        else:
            config = AutoConfig.from_pretrained(d, trust_remote_code=True)
            model_cls = AutoModel
        config.llm_config._attn_implementation = "eager"
        kwargs = dict(
            config=config, torch_dtype=torch.float32, use_flash_attn=False, output_loading_info=True
        )
        if mode == "auto":
            kwargs["trust_remote_code"] = True
        model, info = model_cls.from_pretrained(d, **kwargs)
        model, res["notes"] = _fp32(model, d)
        res["module"] = type(model).__module__
        res["loading"] = {k: sorted(v) for k, v in info.items() if v and k != "error_msgs"}
        res["facts"] = _official_facts(model)
        inputs = load_file(task["inputs"])
        run = _official_run(
            model, inputs["ids"], inputs["pixels"], task["image_token_id"], task["eos"], task["pad"]
        )
        from safetensors.torch import save_file

        save_file({"logits": run.pop("logits").contiguous()}, task["out"] + f".{mode}.safetensors")
        res |= run
    except Exception as err:  # noqa: BLE001 - reported, not raised
        res["error"] = _where(err)
    return res


def _worker_tokenizer(task: dict, num_image_token: int) -> dict:
    """The export's tokenizer read by the old transformers: the chat query's ids, the image token."""
    from transformers import AutoTokenizer

    res: dict[str, Any] = {}
    try:
        res["query"] = _query(task["template"], num_image_token)
    except Exception as err:  # noqa: BLE001
        res["error"] = "template: " + _where(err)
        return res
    try:
        tok = AutoTokenizer.from_pretrained(task["dir"], trust_remote_code=True)
        res["class"] = type(tok).__name__
        res["ids"] = tok(res["query"])["input_ids"]
        res["image_token_id"] = tok.convert_tokens_to_ids(IMG_CONTEXT)
        res["eos"] = tok.convert_tokens_to_ids("<|im_end|>")
    except Exception as err:  # noqa: BLE001
        res["error"] = _where(err)
    return res


def _old_tokenizer(out: Path, style: str) -> Any:
    """A tokenizer as an old stack writes it (merges as "a b" strings), the 9 VLM tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

    if style == "internlm2":
        specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    raw.train_from_iterator(CORPUS, trainer)
    if style == "internlm2":  # InternLM2 adds <s> to every encode
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", raw.token_to_id("<s>"))]
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
        )
    else:
        tok = Qwen2TokenizerFast(
            tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
        )
    tok.add_tokens(VLM_TOKENS, special_tokens=True)  # as InternVL's trainer does
    tok.save_pretrained(str(out))
    return tok


def _worker_build(task: dict) -> dict:
    """Import direction: a tiny random official InternVLChatModel, ``save_pretrained`` + its outputs."""
    import torch
    from safetensors.torch import save_file

    case = Case(**task["case"])
    out = Path(task["dir"])
    res: dict[str, Any] = {}
    try:
        config_cls, model_cls = _official_classes()
        tok = _old_tokenizer(out, "internlm2" if case.llm == "internlm2" else "qwen2")
        vit = dict(VIT, architectures=["InternVisionModel"], use_flash_attn=False, drop_path_rate=0.0)
        if case.vit == "6b":
            vit |= dict(qkv_bias=False, qk_normalization=True, norm_type="rms_norm")
        else:
            vit |= dict(qkv_bias=True, qk_normalization=False, norm_type="layer_norm")
        llm: dict[str, Any] = dict(
            LLM, architectures=[ARCHITECTURES[case.llm]], vocab_size=len(tok), rope_theta=case.rope_theta,
            max_position_embeddings=4096, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        )  # fmt: skip
        if case.llm == "internlm2":
            llm |= dict(rms_norm_eps=1e-5, bias=False, rope_scaling={"type": "dynamic", "factor": 2.0})
        else:
            llm |= dict(rms_norm_eps=1e-6)
        config = config_cls(
            vision_config=vit, llm_config=llm, select_layer=case.select_layer, ps_version=case.ps_version,
            downsample_ratio=0.5, template="internvl2_5", force_image_size=VIT["image_size"],
            dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=4,
        )  # fmt: skip
        config.llm_config._attn_implementation = "eager"
        torch.manual_seed(0)
        model, _ = _fp32(model_cls(config, use_flash_attn=False))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # nothing exactly 0 or 1: unit norms would hide conversion mistakes
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        image_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT)
        text = torch.randint(5, len(tok) - len(VLM_TOKENS), (12,), generator=g)
        n_img = model.num_image_token * TILES
        ids = torch.cat([text[:4], torch.full((n_img,), image_token_id), text[4:]])[None]
        pixels = torch.randn(TILES, 3, VIT["image_size"], VIT["image_size"], generator=g)
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        run = _official_run(model, ids, pixels, image_token_id, eos, tok.pad_token_id)
        model.save_pretrained(str(out))
        save_file(
            {"ids": ids, "pixels": pixels, "logits": run.pop("logits").contiguous()},
            task["out"] + ".safetensors",
        )
        res |= run | {"facts": _official_facts(model), "image_token_id": image_token_id, "eos": eos}
        res["pad"] = tok.pad_token_id
        query = _query("internvl2_5", model.num_image_token)
        res["tokenizer"] = {"query": query, "ids": tok(query)["input_ids"], "class": type(tok).__name__}
    except Exception as err:  # noqa: BLE001
        res["error"] = _where(err)
    return res


def worker(task_path: str) -> None:
    task = json.loads(Path(task_path).read_text())
    import transformers

    res: dict[str, Any] = {"transformers": transformers.__version__}
    if task["kind"] == "build":
        res |= _worker_build(task)
    else:
        res["runs"] = [_worker_load(task, mode) for mode in task["modes"]]
        loaded = [r for r in res["runs"] if "facts" in r]
        n_img = loaded[0]["facts"]["num_image_token"] if loaded else task["num_image_token"]
        res["tokenizer"] = _worker_tokenizer(task, n_img)
    Path(task["out"] + ".json").write_text(json.dumps(res, indent=1, default=str))


# ---------------------------------------------------------------- driver (our venv)


@dataclass(frozen=True)
class Env:
    """A transformers dir and the official code dir run with it."""

    transformers_dir: Path
    code_dir: Path

    @property
    def label(self) -> str:
        version = next(self.transformers_dir.glob("transformers-*.dist-info"), None)
        name = version.name.split("-")[1].removesuffix(".dist") if version else self.transformers_dir.name
        return name + ("" if self.code_dir.name == "internvl_chat" else f" ({self.code_dir.name})")


def _code_dir(path: str) -> Path:
    """The dir holding the ``internvl`` package (a repository root is accepted too)."""
    p = Path(path).resolve()
    if (p / "internvl_chat" / "internvl").is_dir():
        p = p / "internvl_chat"
    if not (p / "internvl" / "model" / "internvl_chat" / "modeling_internvl_chat.py").is_file():
        raise SystemExit(f"{path}: no internvl/model/internvl_chat/modeling_internvl_chat.py under it")
    return p


def _write_shims(work: Path) -> Path:
    shims = work / "shims"
    for name, text in SHIMS.items():
        (shims / name).parent.mkdir(parents=True, exist_ok=True)
        (shims / name).write_text(text)
    return shims


def _run_worker(env: Env, shims: Path, task: dict, work: Path) -> dict:
    task_path = Path(task["out"] + ".task.json")
    task_path.write_text(json.dumps(task))
    paths = [str(env.transformers_dir), str(env.code_dir), str(shims)]
    environ = dict(
        os.environ, PYTHONPATH=os.pathsep.join(paths), HF_HOME=str(work / "hf_home"),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(task_path)],
        env=environ, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    result_path = Path(task["out"] + ".json")
    if proc.returncode != 0 or not result_path.is_file():
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:400]
        return {"crash": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(result_path.read_text())


def _flatten_official(code_dir: Path, dst: Path) -> None:
    """Put the official .py files beside an export as a hub checkpoint has them (imports relative)."""
    dst.mkdir(parents=True, exist_ok=True)
    for rel in OFFICIAL_FILES:
        src = code_dir / rel
        if not src.is_file() or (dst / src.name).exists():
            continue
        text = re.sub(r"from internvl\.(?:model\.\w+\.)?(\w+) import", r"from .\1 import", src.read_text())
        (dst / src.name).write_text(text)


def _our_vlm(case: Case, root: Path) -> tuple[Any, Any]:
    """A tiny random VLM of ``case`` built with our library, and its tokenizer."""
    from internvl_lightning.model.build import build_model
    from internvl_lightning.model.components import write_components
    from internvl_lightning.model.presets import LLMPreset, VisionPreset, VLMPreset
    from internvl_lightning.tokenizer import load_tokenizer

    v6b = case.vit == "6b"
    vision = VisionPreset(
        f"interop-{case.vit}", VIT["hidden_size"], VIT["num_hidden_layers"], VIT["num_attention_heads"],
        VIT["intermediate_size"], qkv_bias=not v6b, qk_norm=v6b, norm_type="rms_norm" if v6b else "layer_norm",
        image_size=VIT["image_size"], patch_size=VIT["patch_size"],
    )  # fmt: skip
    llm = LLMPreset(
        f"interop-{case.llm}", case.llm, LLM["hidden_size"], LLM["num_hidden_layers"],
        LLM["num_attention_heads"], LLM["num_key_value_heads"], LLM["intermediate_size"], 1024, None,
        case.rope_theta, case.tie, 1e-5 if case.llm == "internlm2" else 1e-6, 4096,
    )  # fmt: skip
    layout = "internlm2" if case.llm == "internlm2" else "hf"
    comps = write_components(
        VLMPreset(case.name, vision, llm), root / "components", seed=0, llm_layout=layout
    )
    model = build_model(
        vision=comps.vision, llm=comps.llm, ps_version=case.ps_version, select_layer=case.select_layer
    )
    return model, load_tokenizer(comps.llm)


def _our_facts(model: Any) -> dict[str, Any]:
    cfg = model.config
    t = cfg.text_config
    lm_tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return {
        "rope_theta": float((t.rope_parameters or {}).get("rope_theta", float("nan"))),
        "tied_lm_head": bool(lm_tied),
        "vocab_size": t.vocab_size,
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "ps_version": getattr(cfg, "ps_version", "v2"),
        "select_layer": cfg.vision_feature_layer,
        "num_image_token": cfg.image_seq_length,
        "vit_norm_type": cfg.vision_config.norm_type,
        "vit_qk_normalization": cfg.vision_config.use_qk_norm,
    }


def _fact_notes(ours: dict, official: dict, prefix: str = "") -> list[str]:
    """Fields on which the official model and ours disagree (what a wrong config shows as)."""
    notes = []
    for key, value in ours.items():
        other = official.get(key)
        if key == "tied_lm_head":
            continue  # the official config always unties; reported through the weights instead
        same = (
            abs(float(value) - float(other)) <= 1e-12 * max(1.0, abs(float(value)))
            if isinstance(value, float) and isinstance(other, int | float)
            else value == other
        )
        if not same:
            notes.append(f"{prefix}{key}: official={other!r} ours={value!r}")
    return notes


def _logits(model: Any, ids: Any, pixels: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits.float()


def _greedy(model: Any, ids: Any, pixels: Any, eos: int, pad: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
            eos_token_id=eos, pad_token_id=pad,
        )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def _finish(row: Row, ours: Any, theirs: Any, greedy_ours: list[int] | None, greedy_theirs: Any) -> Row:
    row.max_diff = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else float("inf")
    if ours.shape != theirs.shape:
        row.notes.append(f"logits shape official={tuple(theirs.shape)} ours={tuple(ours.shape)}")
    row.max_ref = float(ours.abs().max())
    if greedy_ours is not None and isinstance(greedy_theirs, list):
        row.greedy_equal = greedy_ours == greedy_theirs
        if not row.greedy_equal:
            row.notes.append(f"greedy official={greedy_theirs} ours={greedy_ours}")
    ok = (
        row.max_diff <= TOLERANCE
        and row.greedy_equal is not False
        and row.tokenizer not in ("differs", "error")
    )
    row.status = "PASS" if ok else "FAIL"
    return row


def _tokenizer_verdict(row: Row, theirs: dict, our_tok: Any, image_token_id: int) -> None:
    """Compare the chat query's ids under the official side's tokenizer with ours."""
    if "error" in theirs:
        row.tokenizer = "error"
        row.notes.append("tokenizer: " + theirs["error"])
        return
    ours = our_tok(theirs["query"])["input_ids"]
    same = ours == theirs["ids"] and theirs.get("image_token_id", image_token_id) == image_token_id
    row.tokenizer = "ok" if same else "differs"
    if not same:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs["ids"])) if a != b),
            min(len(ours), len(theirs["ids"])),
        )
        row.notes.append(
            f"tokenizer ({theirs.get('class')}): {len(theirs['ids'])} vs our {len(ours)} ids, first difference "
            f"at {first}; IMG_CONTEXT official={theirs.get('image_token_id')} ours={image_token_id}"
        )


def run_export(case: Case, envs: list[Env], shims: Path, work: Path) -> list[Row]:
    """Ours -> official: export_original, then the official code loads and runs it."""
    import torch
    from safetensors.torch import load_file, save_file

    from internvl_lightning.constants import IM_END
    from internvl_lightning.export import export_original
    from internvl_lightning.model.load import load_original

    root = work / "export" / case.name
    model, tok = _our_vlm(case, root)
    cfg = model.config
    llm_arch = "internlm2" if case.llm == "internlm2" else None
    out = export_original(model, root / "export", tok, llm_arch=llm_arch)
    g = torch.Generator().manual_seed(0)
    base = len(tok) - len(VLM_TOKENS)
    text = torch.randint(5, base, (12,), generator=g)
    ids = torch.cat([text[:4], torch.full((cfg.image_seq_length * TILES,), cfg.image_token_id), text[4:]])[
        None
    ]
    size = VIT["image_size"]
    pixels = torch.randn(TILES, 3, size, size, generator=g)
    save_file({"ids": ids, "pixels": pixels}, str(root / "inputs.safetensors"))
    eos = tok.convert_tokens_to_ids(IM_END)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ours = _logits(model, ids, pixels)
    greedy = _greedy(model, ids, pixels, eos, pad)
    facts = _our_facts(model)

    rows = [Row(case.name, "roundtrip", "ours")]
    try:  # our own reader on our export: separates "export wrong" from "official reads it differently"
        back = load_original(out)
        _finish(rows[0], ours, _logits(back, ids, pixels), greedy, _greedy(back, ids, pixels, eos, pad))
        rows[0].notes += _fact_notes(facts, _our_facts(back), "load_original ")
    except Exception as err:  # noqa: BLE001
        rows[0].notes.append(_where(err))

    has_auto_map = "auto_map" in json.loads((out / "config.json").read_text())
    for env in envs:
        # The AutoModel dir: the official files flattened as a hub checkpoint has them, given to
        # export_original(code_from=) where our export takes it, else copied in beside the export.
        hub_code = work / f"hub-code-{env.code_dir.name}"
        _flatten_official(env.code_dir, hub_code)
        env_auto = root / f"export-auto-{env.code_dir.name}"
        auto_error = None
        if env_auto.exists():
            pass
        elif "code_from" in inspect.signature(export_original).parameters:
            try:
                export_original(model, env_auto, tok, llm_arch=llm_arch, code_from=hub_code)
            except Exception as err:  # noqa: BLE001 - reported in the AutoModel row
                auto_error = "export_original(code_from=official files): " + _where(err)
        else:
            shutil.copytree(out, env_auto)
            _flatten_official(env.code_dir, env_auto)
        tag = re.sub(r"\W", "_", env.label)
        res_all: dict[str, Any] = {}
        for mode, directory in (("classes", out), ("auto", env_auto)):
            task = dict(
                kind="load", dir=str(directory), modes=[mode], inputs=str(root / "inputs.safetensors"),
                out=str(root / f"official-{tag}-{mode}"), image_token_id=cfg.image_token_id, eos=eos, pad=pad,
                template="internvl2_5", num_image_token=cfg.image_seq_length,
            )  # fmt: skip
            row = Row(case.name, f"export({'classes' if mode == 'classes' else 'AutoModel'})", env.label)
            rows.append(row)
            if mode == "auto" and auto_error:
                row.notes.append(auto_error)
                if rows[-2].status == "UNSUPPORTED":  # this code dir has no such LLM at all
                    row.status = "UNSUPPORTED"
                continue
            res = _run_worker(env, shims, task, work)
            res_all[mode] = res
            if "crash" in res:
                row.notes.append(res["crash"])
                continue
            run = res["runs"][0]
            if mode == "auto" and not has_auto_map:
                row.notes.append("export has no auto_map in config.json")
            if "error" in run:
                row.notes.append(run["error"])
                if "Unsupported architecture" in run["error"] or "is not implemented" in run["error"]:
                    row.status = "UNSUPPORTED"
                continue
            _tokenizer_verdict(row, res["tokenizer"], tok, cfg.image_token_id)
            row.notes += run.get("notes", [])
            row.notes += [f"{k} ({len(v)}): {', '.join(v[:3])}" for k, v in run.get("loading", {}).items()]
            row.notes += _fact_notes(facts, run["facts"])
            if "greedy_error" in run:
                row.notes.append("generate: " + run["greedy_error"])
            theirs = load_file(task["out"] + f".{mode}.safetensors")["logits"]
            _finish(row, ours, theirs, greedy, run.get("greedy"))
        (root / f"official-{tag}.result.json").write_text(json.dumps(res_all, indent=1, default=str))
    return rows


def run_import(case: Case, envs: list[Env], shims: Path, work: Path) -> list[Row]:
    """Official -> ours: the official code save_pretrained's a tiny model; our loaders read it."""
    import torch
    from safetensors.torch import load_file

    from internvl_lightning.model.build import build_model
    from internvl_lightning.model.load import load_vlm
    from internvl_lightning.tokenizer import load_tokenizer

    rows = []
    for env in envs:
        tag = re.sub(r"\W", "_", env.label)
        root = work / "import" / case.name / tag
        root.mkdir(parents=True, exist_ok=True)
        task = dict(kind="build", case=asdict(case), dir=str(root / "official"), out=str(root / "reference"))
        res = _run_worker(env, shims, task, work)
        row = Row(case.name, "import", env.label)
        rows.append(row)
        if "crash" in res or "error" in res:
            err = res.get("crash") or res["error"]
            row.notes.append("official build: " + err)
            if "Unsupported architecture" in err or "is not implemented" in err:
                row.status = "UNSUPPORTED"
            continue
        ref = load_file(task["out"] + ".safetensors")
        try:
            model = build_model(init_from=root / "official")
            direct = load_vlm(root / "official")
            ours = _logits(model, ref["ids"], ref["pixels"])
            if not torch.equal(ours, _logits(direct, ref["ids"], ref["pixels"])):
                row.notes.append("load_vlm and build_model(init_from=) differ")
            row.notes += _fact_notes(_our_facts(model), res["facts"])
            tok = load_tokenizer(root / "official")
            _tokenizer_verdict(
                row,
                res["tokenizer"] | {"image_token_id": res["image_token_id"]},
                tok,
                model.config.image_token_id,
            )
            greedy = _greedy(model, ref["ids"], ref["pixels"], res["eos"], res["pad"])
            _finish(row, ours, ref["logits"], greedy, res.get("greedy"))
        except Exception as err:  # noqa: BLE001
            row.notes.append("ours: " + _where(err))
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if x == float("inf") else f"{x:.1e}")


def print_table(rows: list[Row]) -> None:
    head = f"{'case':28} {'direction':18} {'transformers':22} {'max|diff|':>9} {'max|ref|':>8} {'greedy':6} {'tok':7} status"
    print(head)
    print("-" * len(head))
    for r in rows:
        greedy = "-" if r.greedy_equal is None else ("yes" if r.greedy_equal else "NO")
        print(
            f"{r.case:28} {r.direction:18} {r.transformers:22} {_fmt(r.max_diff):>9} {_fmt(r.max_ref):>8} "
            f"{greedy:6} {r.tokenizer or '-':7} {r.status}"
        )
        for note in r.notes:
            print(f"{'':30}- {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--official-code", help="InternVL's internvl_chat dir (or a checkout's root)")
    p.add_argument("--transformers", action="append", default=[], metavar="DIR[:CODE]",
                   help="a pip --target dir of an old transformers (repeatable); :CODE another official code dir")  # fmt: skip
    p.add_argument("--only", default="", help="comma-separated case names or LLM families")
    p.add_argument("--direction", choices=("both", "export", "import"), default="both")
    p.add_argument("--keep", help="work dir to keep (default: a temporary one, removed)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not args.official_code or not args.transformers:
        p.error("--official-code and at least one --transformers are required")
    default_code = _code_dir(args.official_code)
    envs = []
    for spec in args.transformers:
        tf, _, code = spec.partition(":")
        if not (Path(tf) / "transformers").is_dir():
            p.error(
                f"{tf}: no transformers package in it (pip install --no-deps --target {tf} transformers==...)"
            )
        envs.append(Env(Path(tf).resolve(), _code_dir(code) if code else default_code))
    wanted = {w for w in args.only.split(",") if w}

    def pick(cases: tuple[Case, ...]) -> list[Case]:
        return [c for c in cases if not wanted or c.name in wanted or c.llm in wanted]

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="official_interop_"))
    work.mkdir(parents=True, exist_ok=True)
    shims = _write_shims(work)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_default_dtype(torch.float32)
    rows: list[Row] = []
    try:
        if args.direction in ("both", "export"):
            for case in pick(EXPORT_CASES):
                rows += run_export(case, envs, shims, work)
        if args.direction in ("both", "import"):
            for case in pick(IMPORT_CASES):
                rows += run_import(case, envs, shims, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0 if all(r.status in ("PASS", "UNSUPPORTED") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
