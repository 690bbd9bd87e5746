"""Export to the HF-native layout that transformers, vLLM and SGLang load without remote code.

The model is transformers' own `InternVLForConditionalGeneration`, so the weights are saved as
they are. What an export adds is everything a server needs beside them:
  * the tokenizer, with the image markers named the way `InternVLProcessor` looks them up;
  * a chat template that renders exactly what training saw (the stage's template, with its
    training system prompt when a conversation brings none);
  * a generation config that stops on the template's end-of-turn token;
  * an image processor (GotOcr2, PIL backend) with the tiling, tile size and normalisation
    the model was trained with; its defaults are CLIP's, ours are usually ImageNet's;
  * the training record (`model/record.py`): template, normalisation and tile range, which the
    next stage, `evaluate`, `chat` and later exports read back.

`AutoProcessor.from_pretrained(export)` builds an `InternVLProcessor` (transformers constructs it
only where torchvision imports: its video processor uses it, even for images; `make install`
installs the torchvision build that matches the pinned torch). The chat template marks each image
with one `<IMG_CONTEXT>` line, the placeholder that processor looks for and expands into
`<img>` + `image_seq_length` context tokens per tile + `</img>`: the tokens training encodes for an
`<image>` line. A host without torchvision gets the same inputs from `AutoTokenizer` (the chat
template) and `AutoImageProcessor` (the tiling), expanding each placeholder itself. A video is
expanded by the processor as `Frame1: ...` lines, where InternVL's training (and ours) writes
`Frame-1: ...`: transformers' convention, one token apart, left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GenerationConfig, InternVLForConditionalGeneration, PreTrainedTokenizerBase

from ..constants import IM_END, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, NORMALIZATION
from ..data.encode import EncodeConfig
from ..data.templates import get_template
from ..model.config import vision_geometry
from ..model.load import load_vlm_and_tokenizer
from ..model.lora import has_adapters, merged_state_dict
from ..model.record import read_training_record, write_training_record
from ..tokenizer import TokenizerSource, read_tokenizer
from .tokenizer import save_tokenizer


def chat_template(template: str = "internvl2_5") -> str:
    """A Jinja chat template that renders what training saw with our `template`.

    Every turn is `role + content + end + suffix`; images and videos become `<IMG_CONTEXT>` /
    `<video>` lines, the placeholders `InternVLProcessor` expands (an image into
    `<img><IMG_CONTEXT>...</img>`, as training encodes `<image>`). A conversation
    without a system turn gets the template's training system prompt, as in training.
    """
    t = get_template(template)
    q = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731  (a Jinja string literal)
    sep = q(t.sep)
    roles = "{" + f"'system': {q(t.system_prefix)}, 'user': {q(t.user)}, 'assistant': {q(t.assistant)}" + "}"
    return (
        f"{{%- set roles = {roles} %}}"
        f"{{%- if messages[0]['role'] != 'system' %}}{{{{- roles['system'] + {q(t.system_message)} + {sep} }}}}{{%- endif %}}"
        "{%- for message in messages %}"
        "{{- roles[message['role']] }}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for item in message['content'] %}"
        "{%- if item['type'] == 'image' %}{{- '" + IMG_CONTEXT_TOKEN + "\\n' }}"
        "{%- elif item['type'] == 'video' %}{{- '<video>\\n' }}"
        "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
        "{%- endfor %}{%- endif %}"
        f"{{{{- {sep} }}}}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- roles['assistant'] }}{%- endif %}"
    )


def _image_processor(image_size: int, max_dynamic_patch: int, min_dynamic_patch: int, normalization: str):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    mean, std = NORMALIZATION[normalization]
    return GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=min_dynamic_patch,
        max_patches=max_dynamic_patch,
        size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> PreTrainedTokenizerBase:
    """Save the tokenizer with the image markers named the way `InternVLProcessor` looks them up.

    The names go into tokenizer_config.json as a dict of `extra_special_tokens` (the file format
    of HF-native InternVL checkpoints); reloading gives a tokenizer with those attributes.
    """
    save_tokenizer(tokenizer, out, template_file=True)  # with the LLM's own files, as original exports
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["extra_special_tokens"] = {
        "start_image_token": IMG_START_TOKEN,
        "end_image_token": IMG_END_TOKEN,
        "context_image_token": IMG_CONTEXT_TOKEN,
        "video_token": "<video>",
    }
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return read_tokenizer(out)


def _write_processor_files(
    out: Path,
    image_seq_length: int,
    image_size: int,
    max_patches: int,
    min_patches: int,
    normalization: str,
    template: str,
) -> None:
    """The files `AutoProcessor` assembles an `InternVLProcessor` from.

    They are written directly, not through `InternVLProcessor.save_pretrained`: constructing
    that class needs torchvision (for its video processor), which a training host may lack.
    """
    _image_processor(image_size, max_patches, min_patches, normalization).save_pretrained(out)
    mean, std = NORMALIZATION[normalization]
    video = {
        "video_processor_type": "InternVLVideoProcessor",
        "processor_class": "InternVLProcessor",
        "size": {"height": image_size, "width": image_size},  # one tile per frame, as in training
        "resample": 3,  # bicubic
        "image_mean": list(mean),
        "image_std": list(std),
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": image_seq_length}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(chat_template(template))


RECORDED = ("template", "normalization", "max_dynamic_patch", "min_dynamic_patch")  # training record keys


def data_settings(source: object, **given: str | int | None) -> dict[str, str | int]:
    """The data settings an export records: those ``given`` (not None), else the source dir's
    training record, else the training defaults (`data.encode.EncodeConfig`)."""
    record = read_training_record(source) if isinstance(source, str | Path) and Path(source).is_dir() else {}
    defaults = EncodeConfig()
    settings = {}
    for key in RECORDED:
        value = given.get(key)
        settings[key] = value if value is not None else record.get(key, getattr(defaults, key))
    if not 1 <= int(settings["min_dynamic_patch"]) <= int(settings["max_dynamic_patch"]):
        raise ValueError(
            f"tile range min_dynamic_patch={settings['min_dynamic_patch']}, "
            f"max_dynamic_patch={settings['max_dynamic_patch']}: need 1 <= min <= max"
        )
    return settings


def export_hf(
    model_or_dir: InternVLForConditionalGeneration | str | Path,
    out_dir: str | Path,
    tokenizer: TokenizerSource | None = None,
    *,
    template: str | None = None,
    normalization: str | None = None,
    max_dynamic_patch: int | None = None,
    min_dynamic_patch: int | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write an HF-native model directory (weights, config, tokenizer, chat template, processors).

    `model_or_dir` is a built model (then pass its `tokenizer`) or a full VLM directory (a stage
    output, an HF-native or original-layout InternVL dir; `tokenizer` defaults to its own). A
    Lightning `.ckpt` is read by `training.checkpoint.load_checkpoint` first. `dtype` converts the
    model in place before saving (e.g. torch.bfloat16 for serving). LoRA adapters are merged into
    the weights they adapt (in fp32, before any `dtype` conversion). The data settings the model
    was trained with (template, normalisation, tile range) default to a source directory's
    training record, else to the training defaults.
    """
    settings = data_settings(
        model_or_dir,
        template=template,
        normalization=normalization,
        max_dynamic_patch=max_dynamic_patch,
        min_dynamic_patch=min_dynamic_patch,
    )
    try:
        model, tokenizer = load_vlm_and_tokenizer(model_or_dir, tokenizer)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"cannot export {model_or_dir}: {err}") from err
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = merged_state_dict(model) if has_adapters(model) else None
    if dtype is not None:
        model = model.to(dtype)
        if state is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True, max_shard_size=max_shard_size)

    tokenizer = _save_tokenizer(tokenizer, out)
    _write_processor_files(
        out,
        model.config.image_seq_length,
        vision_geometry(model.config.vision_config)[0],
        int(settings["max_dynamic_patch"]),
        int(settings["min_dynamic_patch"]),
        str(settings["normalization"]),
        str(settings["template"]),
    )

    end_id = tokenizer.convert_tokens_to_ids(IM_END)
    eos = [i for i in (end_id, tokenizer.eos_token_id) if i is not None]
    GenerationConfig(
        eos_token_id=sorted(set(eos)), pad_token_id=tokenizer.pad_token_id, do_sample=False
    ).save_pretrained(out)
    write_training_record(out, **settings)
    return out
