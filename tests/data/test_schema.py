"""Sample validation (schema.py), the JSONL reader and the meta file (meta.py)."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from internvl_lightning.data.meta import (
    DatasetSpec,
    MetaError,
    join_media,
    load_meta,
    mixture_weights,
    parse_dataset,
)
from internvl_lightning.data.schema import (
    InvalidSample,
    MalformedSample,
    Sample,
    SampleError,
    SampleTooLong,
    iter_jsonl,
    validate_sample,
)

W = "ds.jsonl:7"


def rec(*values: str, **kw) -> dict:
    convs = [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]
    return {"id": "s1", "conversations": convs, **kw}


def bad(record, match: str):
    with pytest.raises(InvalidSample, match=match) as e:
        validate_sample(record, W)
    assert str(e.value).startswith(f"{W}: ")
    return e.value


# --- valid samples and normalisation -----------------------------------------------------------


def test_single_image_gets_placeholder_prepended():
    r = rec("What is this?", "A cat.", image="a.jpg", width=640, height=480)
    s = validate_sample(r, W)
    assert isinstance(s, Sample) and s.kind == "image" and not s.multi_image
    assert s.conversations[0]["value"] == "<image>\nWhat is this?"
    assert r["conversations"][0]["value"] == "What is this?"  # the raw record is untouched
    assert (s.id, s.images, s.image_sizes, s.where, s.raw) == ("s1", ["a.jpg"], [(640, 480)], W, r)


def test_single_image_placeholder_in_later_turn_is_kept():
    s = validate_sample(rec("hi", "hello", "now <image> this?", "ok", image="a.jpg"), W)
    assert [t["value"] for t in s.conversations] == ["hi", "hello", "now <image> this?", "ok"]


def test_multi_image():
    r = rec(
        "<image>\n<image>\nCompare.", "Same.", image=["a.jpg", "b.jpg"], width_list=[1, 2], height_list=[3, 4]
    )
    s = validate_sample(r, W)
    assert s.images == ["a.jpg", "b.jpg"] and s.multi_image and s.image_sizes == [(1, 3), (2, 4)]
    bad(rec("<image>\nCompare.", "x", image=["a.jpg", "b.jpg"]), "2 images but 1 '<image>' placeholders")
    # a one-element list follows the multi-image rule (no auto-insert), as in the reference
    bad(rec("Describe.", "x", image=["a.jpg"]), "1 images but 0 '<image>'")
    bad(
        rec("<image><image>", "x", image=["a", "b"], width_list=[1], height_list=[1, 2]),
        "one entry per image",
    )


def test_video():
    s = validate_sample(rec("What happens?", "It falls.", video="v.mp4", clip=[1, 2.5]), W)
    assert s.kind == "video" and s.video == "v.mp4" and s.clip == (1.0, 2.5) and s.images == []
    assert s.conversations[0]["value"] == "<video>\nWhat happens?"
    assert validate_sample(rec("x <video>", "y", video="frames/"), W).conversations[0]["value"] == "x <video>"
    bad(rec("<video><video>", "y", video="v.mp4"), "2 '<video>' placeholders")
    bad(rec("<image>", "y", video="v.mp4"), "video sample contains 1 '<image>'")
    bad(rec("x", "y", video=["v.mp4"]), "'video' must be a path string")
    bad(rec("x", "y", video="v.mp4", clip=[3, 1]), "'clip' must be")
    bad(rec("x", "y", clip=[0, 1]), "no 'video'")


def test_pure_text_and_empty_media():
    for extra in ({}, {"image": ""}, {"image": []}, {"video": None}):
        s = validate_sample(rec("hi", "hello", **extra), W)
        assert s.kind == "text" and s.conversations[0]["value"] == "hi"
    bad(rec("<image> hi", "hello"), "pure-text sample contains 1 '<image>'")
    bad(rec("<video> hi", "hello"), "pure-text sample contains 0 '<image>' and 1 '<video>'")


def test_system_turn_and_ids():
    r = {"conversations": [{"from": "system", "value": "Be brief."}] + rec("hi", "ok")["conversations"]}
    s = validate_sample(r, W)
    assert s.id == W and s.conversations[0] == {"from": "system", "value": "Be brief."}  # no id: use where
    assert validate_sample(dict(rec("a", "b"), id=12), W).id == "12"


# --- errors, each with a precise reason ----------------------------------------------------------


def test_structure_errors():
    e = bad({"id": "x9"}, "'conversations' is missing or empty")
    assert e.sample_id == "x9" and e.where == W and isinstance(e, SampleError) and isinstance(e, ValueError)
    assert str(e) == f"{W}: sample 'x9': 'conversations' is missing or empty"
    bad({"id": "x", "conversations": []}, "missing or empty")
    bad({"id": "x", "conversations": {"from": "human"}}, "is a dict, not a list")
    bad(rec("a", "b") | {"conversations": [{"from": "user", "value": "a"}]}, "role 'user'")
    bad(rec("a", "b") | {"conversations": [{"from": "human", "value": 3}]}, r"value is int, not a string")
    bad(rec("a", "b") | {"conversations": ["hi"]}, "turn 0 is a str")
    sys_late = rec("a", "b")["conversations"] + [{"from": "system", "value": "s"}]
    bad({"conversations": sys_late}, "turn 2 is a system turn; a system turn may only come first")
    bad({"conversations": [{"from": "gpt", "value": "a"}]}, "turn 0 is 'gpt', expected 'human'")
    bad(rec("a", "b", "c"), "last turn is 'human'")
    bad(
        {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        "expected 'gpt'",
    )
    bad({"conversations": [{"from": "system", "value": "s"}]}, "no human/gpt turns")
    bad([1, 2], "expected a JSON object, got list")
    bad({"id": [1], "conversations": []}, "'id' must be a string or integer")


def test_media_errors():
    bad(rec("x", "y", image=3), "'image' must be a path or a list of paths")
    bad(rec("x", "y", image=["a.jpg", ""]), "'image' must be a path")
    bad(rec("x", "y", image="a.jpg", video="v.mp4"), "both 'image' and 'video'")
    bad(rec("<image><image>", "y", image="a.jpg"), "single-image sample has 2 '<image>'")
    bad(rec("<video>", "y", image="a.jpg"), "image sample contains a '<video>'")
    bad(rec("x", "<image>", image="a.jpg"), r"turn 1 \(gpt\) contains a media placeholder")
    bad(rec("x <IMG_CONTEXT>", "y"), "reserved token '<IMG_CONTEXT>'")
    bad(rec("x", "y", image="a.jpg", width=0, height=3), "'width'/'height' must be positive integers")


def test_error_hierarchy():
    e = SampleTooLong("too long", "s3", "f.jsonl:2")
    assert isinstance(e, SampleError) and (e.sample_id, e.reason, e.where) == ("s3", "too long", "f.jsonl:2")
    assert str(SampleError("r")) == "r" and str(SampleError("r", "i")) == "sample 'i': r"
    back = pickle.loads(pickle.dumps(e))  # crosses process boundaries intact
    assert type(back) is SampleTooLong and (back.reason, back.sample_id, back.where, str(back)) == (
        e.reason, e.sample_id, e.where, str(e))  # fmt: skip


# --- JSONL reader --------------------------------------------------------------------------------


def test_iter_jsonl(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [json.dumps(rec("a", "b")), "", "  ", "{not json", "[1]", json.dumps({"id": "z", "k": "é"})]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"x": "\xff"}\n')
    out = list(iter_jsonl(p))
    assert [n for n, _ in out] == [1, 4, 5, 6, 7]  # blank lines skipped, numbering kept
    assert out[0][1]["id"] == "s1" and out[3][1] == {"id": "z", "k": "é"}
    assert isinstance(out[1][1], MalformedSample) and str(out[1][1]).startswith(f"{p}:4: malformed JSON: ")
    assert isinstance(out[2][1], InvalidSample) and "got list" in str(out[2][1])
    assert isinstance(out[4][1], MalformedSample) and "not UTF-8" in str(out[4][1])


def test_iter_jsonl_streams(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps(rec("a", "b")) + "\n" + "{broken\n" * 3)
    it = iter_jsonl(p)
    assert next(it)[0] == 1  # the first record arrives before the rest is read or parsed
    assert all(isinstance(e, MalformedSample) for _, e in it)
    p2 = tmp_path / "bom.jsonl"
    p2.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec("a", "b")).encode())
    assert next(iter_jsonl(p2))[1]["id"] == "s1"


# --- meta file -----------------------------------------------------------------------------------


def write_meta(tmp_path, meta, name="meta.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps(meta) if not isinstance(meta, str) else meta)
    return str(p)


def test_load_meta_resolves_paths(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    meta = {
        "local": {"root": "imgs/", "annotation": "ann/a.jsonl", "data_augment": True, "max_dynamic_patch": 6,
                  "repeat_time": 0.5, "length": 10},
        "remote": {"root": "s3://bucket/imgs/", "annotation": "/abs/b.jsonl", "repeat_time": 2},
        "here": {"root": "", "annotation": "c.jsonl"},
    }  # fmt: skip
    specs = load_meta(write_meta(sub, meta))
    assert list(specs) == ["local", "remote", "here"]  # file order
    a, b, c = specs.values()
    base = str(sub.resolve())
    assert (
        a.annotation == os.path.join(base, "ann", "a.jsonl") and a.root == os.path.join(base, "imgs") + os.sep
    )
    assert (a.data_augment, a.max_dynamic_patch, a.repeat_time, a.length) == (True, 6, 0.5, 10)
    assert a.media_path("x/1.jpg") == os.path.join(base, "imgs", "x", "1.jpg")
    assert (b.root, b.annotation, b.repeat_time) == ("s3://bucket/imgs/", "/abs/b.jsonl", 2.0)
    assert b.media_path("x/1.jpg") == "s3://bucket/imgs/x/1.jpg"
    assert (c.root, c.data_augment, c.max_dynamic_patch, c.repeat_time) == (base, False, None, 1.0)
    assert join_media("s3://b/p_", "1.jpg") == "s3://b/p_1.jpg"  # remote: plain concatenation


def test_repeat_rules():
    spec = DatasetSpec("d", "/r", "/a.jsonl", repeat_time=0.25)
    assert spec.repeat_plan(10) == (2, 1) and spec.effective_length(10) == 2  # first int(10 * 0.25) lines
    spec.repeat_time = 3.0
    assert spec.repeat_plan(10) == (10, 3) and spec.effective_length(10) == 30
    spec.repeat_time = 1.0
    assert spec.effective_length(7) == 7


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"root": "r", "annotation": "a.json"}, "'annotation' must be a .jsonl file, got 'a.json'"),
        ({"annotation": "a.jsonl"}, "'root' must be a string, got None"),
        ({"root": "r", "annotation": 5}, "'annotation' must be a string"),
        (
            {"root": "r", "annotation": "a.jsonl", "repeat_time": 2.5},
            "'repeat_time' 2.5 is not a whole number",
        ),
        ({"root": "r", "annotation": "a.jsonl", "repeat_time": 0}, "'repeat_time' must be a number > 0"),
        ({"root": "r", "annotation": "a.jsonl", "repeat_time": "2"}, "'repeat_time' must be a number"),
        ({"root": "r", "annotation": "a.jsonl", "repeat_time": True}, "'repeat_time' must be a number"),
        (
            {"root": "r", "annotation": "a.jsonl", "data_augment": "yes"},
            "'data_augment' must be true or false",
        ),
        (
            {"root": "r", "annotation": "a.jsonl", "max_dynamic_patch": 0},
            "'max_dynamic_patch' must be a positive",
        ),
        ({"root": "r", "annotation": "a.jsonl", "length": -1}, "'length' must be a non-negative integer"),
        ({"root": "r", "annotation": "a.jsonl", "repeat_times": 2}, r"unknown key\(s\) \['repeat_times'\]"),
        ([], "entry must be an object"),
    ],
)
def test_meta_entry_errors(tmp_path, entry, match):
    path = write_meta(tmp_path, {"coco": entry})
    with pytest.raises(MetaError, match=match) as e:
        load_meta(path)
    assert str(e.value).startswith(f"{path}: dataset 'coco': ")


def test_meta_file_errors(tmp_path):
    with pytest.raises(MetaError, match="malformed JSON"):
        load_meta(write_meta(tmp_path, "{oops"))
    with pytest.raises(MetaError, match="non-empty object"):
        load_meta(write_meta(tmp_path, {}))
    dup = '{"a": {"root": "", "annotation": "a.jsonl"}, "a": {"root": "", "annotation": "b.jsonl"}}'
    with pytest.raises(MetaError, match="duplicate key 'a'"):
        load_meta(write_meta(tmp_path, dup))
    spec = parse_dataset("d", {"root": "", "annotation": "a.jsonl", "note": 1}, tmp_path, strict=False)
    assert spec.extra == {"note": 1}


def test_mixture_weights():
    assert mixture_weights({"a": 300, "b": 100}) == {"a": 0.75, "b": 0.25}
    w = mixture_weights({"a": 400, "b": 100, "c": 0}, sqrt=True)
    assert w == pytest.approx({"a": 20 / 30, "b": 10 / 30, "c": 0.0})
    with pytest.raises(ValueError, match="all datasets are empty"):
        mixture_weights({"a": 0})
    with pytest.raises(ValueError, match="'b': length must be a non-negative integer"):
        mixture_weights({"a": 1, "b": -2})
    with pytest.raises(ValueError, match="at least one"):
        mixture_weights({})
