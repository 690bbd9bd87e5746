"""The shard tool: validation report, strict mode, deterministic tars, index offsets and counts."""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import webdataset as wds

from internvl_lightning.cli import main
from internvl_lightning.data.encode import EncodeConfig, encode_sample
from internvl_lightning.data.shard import ShardFailed, parse_size, shard_dataset
from internvl_lightning.data.sources import read_shard_samples
from internvl_lightning.data.verify import sample_crc
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.tokenizer import add_vlm_tokens
from tests.helpers.datagen import write_dataset

# min == max frames: a video's encoded length is then exactly the shard tool's (max-frames) count
CFG = EncodeConfig(image_size=64, tokens_per_tile=16, min_num_frames=4, max_num_frames=4, max_length=1024)
SIZE = "12KB"  # small shards, so every dataset but one spans several


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path, "qwen2")
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tok_dir))
    add_vlm_tokens(t)
    return t


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds"), bad=True, max_dynamic_patch={"multi": 4})


@pytest.fixture(scope="module")
def out(data, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    shard_dataset(data.meta, tok, out, CFG, SIZE, workers=1)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def samples(out: Path):
    """(dataset, shard entry, key, offset, members) for every sample, from the index."""
    index = json.loads((out / "index.json").read_text())
    for name, ds in index["datasets"].items():
        for shard in ds["shards"]:
            members = {}
            with tarfile.open(out / shard["path"]) as tar:
                for m in tar.getmembers():
                    members.setdefault(m.name.split(".", 1)[0], {})[m.name.split(".", 1)[1]] = (
                        tar.extractfile(m).read()
                    )
            shard = {**shard, **read_shard_samples(str(out), shard)}
            for i, key in enumerate(shard["keys"]):
                yield name, shard, i, key, members[key]


def test_report_names_every_bad_sample_and_keeps_the_rest(data, out):
    report = json.loads((out / "report.json").read_text())
    got = {(r["dataset"], r["line"]): r for r in report["rejected"]}
    assert {k: r["reason"] for k, r in got.items()} == data.bad
    for (name, _), r in got.items():
        assert r["file"].endswith(f"{name}.jsonl") and r["message"]
    assert got[("single", 6)]["id"] == "missing" and "nope.jpg" in got[("single", 6)]["message"]
    index = json.loads((out / "index.json").read_text())
    for name, n_lines in data.lines.items():
        d = report["datasets"][name]
        assert (
            d["seen"] == n_lines
            and d["kept"] == len(data.good_lines(name)) == index["datasets"][name]["num_samples"]
        )
        assert sum(d["rejected"].values()) == n_lines - d["kept"]
        keys = [k for s in index["datasets"][name]["shards"] for k in read_shard_samples(str(out), s)["keys"]]
        assert keys == [f"{n:09d}" for n in data.good_lines(name)]
    text = (out / "report.txt").read_text()
    for r in report["rejected"]:
        assert f"{r['file']}:{r['line']}" in text and r["reason"] in text


def test_strict_stops_at_the_first_bad_sample(data, tok, tmp_path, capsys):
    with pytest.raises(ShardFailed) as e:
        shard_dataset(data.meta, tok, tmp_path / "a", CFG, SIZE, strict=True)
    first = min(line for (name, line) in data.bad if name == "single")
    assert (e.value.rejection.dataset, e.value.rejection.line) == ("single", first)
    assert not (tmp_path / "a" / "index.json").exists() and not list((tmp_path / "a").rglob("*.tmp"))


def test_cli(data, tok_dir, tmp_path, capsys):
    def run(*extra: str) -> int:
        argv = [
            "--tokenizer",
            str(tok_dir),
            "--encode.image_size",
            "64",
            "--encode.tokens_per_tile",
            "16",
            "--encode.max_length",
            "1024",
        ]
        return main(["shard", *argv, "--progress=false", *extra])

    assert run("--meta", str(data.meta), "--out", str(tmp_path / "s"), "--strict") == 1
    assert "single.jsonl:2" in capsys.readouterr().err
    assert run("--meta", str(data.meta), "--out", str(tmp_path / "ok"), "--shard_size", "1MB") == 0
    assert json.loads((tmp_path / "ok" / "index.json").read_text())["datasets"]["single"]["num_samples"] == 6
    assert run("--meta", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")) == 2
    assert "nope.json" in capsys.readouterr().err
    meta = json.loads(data.meta.read_text())
    meta["single"]["annotation"] = "gone.jsonl"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert run("--meta", str(tmp_path / "meta.json"), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "gone.jsonl" in err and "single" in err


def test_rerun_is_byte_identical_with_any_worker_count(data, tok, out, tmp_path):
    shard_dataset(data.meta, tok, tmp_path / "again", CFG, SIZE, workers=1)
    assert files(tmp_path / "again") == files(out)
    shard_dataset(data.meta, tok, tmp_path / "two", CFG, SIZE, workers=2)
    assert files(tmp_path / "two") == files(out)


def test_tars_are_plain_webdataset(data, out):
    index = json.loads((out / "index.json").read_text())
    for name, ds in index["datasets"].items():
        assert ds["dir"] == name and len(ds["shards"]) >= (1 if name in ("text", "video") else 2)
        urls = [str(out / s["path"]) for s in ds["shards"]]
        got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        assert [s["__key__"] for s in got] == [
            k for s in ds["shards"] for k in read_shard_samples(str(out), s)["keys"]
        ]
        for s in ds["shards"]:  # the index holds totals; the per-sample lists sit beside each tar
            lists = read_shard_samples(str(out), s)
            assert "keys" not in s and s["samples"] == s["path"].removesuffix(".tar") + ".samples.json"
            assert (s["num_samples"], s["num_tokens"], s["num_tiles"]) == (
                len(lists["keys"]), sum(lists["num_tokens"]), sum(lists["num_tiles"]))  # fmt: skip
        for s in got:
            record = json.loads(s["json"])
            assert sorted(k for k in s if not k.startswith("__")) == sorted(["json"] + [
                m.split(".", 1)[1] for m in record["_meta"]["media"]])  # fmt: skip
        for url in urls:
            with tarfile.open(url) as tar:
                for m in tar.getmembers():
                    assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    assert index["datasets"]["text"]["repeat_time"] == 2.0  # recorded, not applied
    assert index["datasets"]["multi"]["max_dynamic_patch"] == 4
    assert index["datasets"]["single"]["data_augment"] is True and index["image_size"] == 64


def test_members_hold_the_original_record_and_media(data, out):
    for name, _, _, key, members in samples(out):
        record = json.loads(members["json"])
        meta = record.pop("_meta")
        assert meta["line"] == int(key)
        original = json.loads((data.root / f"{name}.jsonl").read_text().splitlines()[meta["line"] - 1])
        assert record == original
        paths = original.get("image") or original.get("video") or []
        paths = [paths] if isinstance(paths, str) else paths
        assert meta["media"] == [f"{key}.{k}" for k in members if k != "json"]
        for path, member in zip(paths, meta["media"]):
            assert members[member.split(".", 1)[1]] == (data.root / name / path).read_bytes()


def test_offsets_point_at_each_samples_json(out):
    for _, shard, i, key, _ in samples(out):
        with open(out / shard["path"], "rb") as f:
            f.seek(shard["offsets"][i])
            header = tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), "utf-8", "strict")
            assert header.name == f"{key}.json"
            assert json.loads(f.read(header.size))["_meta"]["line"] == int(key)


def test_index_counts_equal_encoded_lengths(out, tok):
    index = json.loads((out / "index.json").read_text())
    for name, shard, i, key, members in samples(out):
        ds = index["datasets"][name]
        cfg = replace(CFG, max_dynamic_patch=ds["max_dynamic_patch"] or CFG.max_dynamic_patch)
        s = encode_sample(json.loads(members["json"]), members, cfg, tok, random.Random(0), name)
        assert (s.num_tokens, s.num_tiles) == (shard["num_tokens"][i], shard["num_tiles"][i]), (name, key)
        meta = json.loads(members["json"])["_meta"]
        assert (meta["num_tokens"], meta["num_tiles"]) == (s.num_tokens, s.num_tiles)


def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("4096") == 4096
    assert parse_size("1.5kb") == 1500
    with pytest.raises(ValueError):
        parse_size("lots")


def test_index_records_sizes_checksums_and_fewest_counts(data, tok, out, tmp_path):
    index = json.loads((out / "index.json").read_text())
    assert index["version"] == 3
    for name, shard, i, key, _members in samples(out):
        path = out / shard["path"]
        assert shard["size"] == path.stat().st_size
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with tarfile.open(path) as tar:  # members of this sample, in tar order
            ordered = [
                (m.name.split(".", 1)[1], tar.extractfile(m).read()) for m in tar if m.name.startswith(key)
            ]
        assert shard["crc32"][i] == sample_crc(ordered), (name, key)
        assert (shard["min_tokens"], shard["min_tiles"]) == (
            min(shard["num_tokens"]),
            min(shard["num_tiles"]),
        )
    # videos drawing 2..4 frames: the fewest counts are at 2 frames (what encoding at 2 frames gives)
    few = tmp_path / "few"
    shard_dataset(data.meta, tok, few, replace(CFG, min_num_frames=2), SIZE, workers=1)
    two = replace(CFG, min_num_frames=2, max_num_frames=2)
    for name, shard, i, _key, members in samples(few):
        if name == "video":
            s = encode_sample(json.loads(members["json"]), members, two, tok, random.Random(0), name)
            least = shard["min_tokens"], shard["min_tiles"]
            assert least[1] == 2 and least[0] <= s.num_tokens < shard["num_tokens"][i]
