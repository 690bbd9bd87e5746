"""Frame sampling (reference ``get_frame_indices``) and decoding of videos, GIFs and frame folders."""

import itertools
import random

import numpy as np
import pytest
from PIL import Image

from internvl_lightning.data.video import frame_indices, frame_prompt, read_video

# 20 well separated solid colours: frame k of every test video has colour PALETTE[k]
PALETTE = [c for c in itertools.product((0, 128, 255), repeat=3)][:20]
FPS = 10


# --- frame_indices ---
def test_middle_and_fix_start():
    # linspace(0, 20, 5) = 0 5 10 15 20 -> ranges (0,4) (5,9) (10,14) (15,19)
    assert frame_indices(4, 20, "middle") == [2, 7, 12, 17]
    assert frame_indices(4, 20, "middle", fix_start=1) == [1, 6, 11, 16]
    assert frame_indices(3, 10, "middle") == [1, 4, 7]  # linspace 0 3.33 6.67 10 -> 0 3 6 10


def test_rand_stays_inside_intervals_and_never_takes_the_range_end():
    seen = set()
    for seed in range(200):
        idx = frame_indices(4, 20, "rand", rng=random.Random(seed), fix_start=3)  # fix_start ignored
        assert len(idx) == 4
        for k, i in enumerate(idx):
            assert 5 * k <= i <= 5 * k + 3  # choice(range(a, b)) with b = next start - 1
        seen.update(idx)
    assert seen == {i for i in range(20) if i % 5 != 4}


def test_rand_is_deterministic_per_seed():
    a = [frame_indices(8, 300, "rand", rng=random.Random(s)) for s in range(5)]
    b = [frame_indices(8, 300, "rand", rng=random.Random(s)) for s in range(5)]
    assert a == b and len({tuple(x) for x in a}) > 1


def test_rand_fallback_on_one_frame_intervals():
    # linspace(0, 20, 17) has steps 1.25 -> some intervals hold one frame: sorted random subset instead
    idx = frame_indices(16, 20, "rand", rng=random.Random(0))
    assert idx == sorted(idx) and len(set(idx)) == 16 and max(idx) < 20
    edges = np.linspace(0, 20, 17).astype(int)
    rng = random.Random(0)
    for a, b in zip(edges[:-1], edges[1:] - 1):  # draws made before the first empty range still count
        if a >= b:
            break
        rng.choice(range(a, b))
    assert idx == sorted(rng.sample(range(20), 16))


def test_padding_repeats_the_last_index():
    assert frame_indices(8, 5, "middle") == [0, 1, 2, 3, 4, 4, 4, 4]
    assert frame_indices(8, 5, "rand", rng=random.Random(1)) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert frame_indices(3, 1, "middle") == [0, 0, 0]


def test_fps_sampling_rounds_half_to_even():
    # 5 frames at 1 fps, 1 frame/s: times 0.5 1.5 2.5 3.5 4.5 -> numpy rounds to 0 2 2 4 4
    assert frame_indices(0, 5, "fps1", input_fps=1) == [0, 2, 2, 4, 4]
    assert frame_indices(0, 5, "fps1", input_fps=1, max_num_frames=3) == [0, 2, 2]
    assert frame_indices(0, 300, "fps0.5", input_fps=30) == [30, 90, 150, 210, 270]
    assert frame_indices(0, 20, "fps2", input_fps=10) == [2, 8, 12, 18]  # 2.5 7.5 12.5 17.5
    assert frame_indices(0, 4, "fps1") == [0, 2, 2]  # input_fps defaults to 1 (reference); 4 >= vlen dropped
    with pytest.raises(ValueError, match="sampling"):
        frame_indices(4, 20, "uniform")


def test_frame_prompt():
    assert frame_prompt(3) == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\n"
    assert frame_prompt(0) == ""


# --- decoding ---
def _write(path, codec: str, n: int = 20) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for colour in PALETTE[:n]:
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), colour, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _which(frame: Image.Image) -> int:
    """Index of the palette colour nearest to the frame's mean colour."""
    mean = np.asarray(frame, dtype=float).reshape(-1, 3).mean(0)
    return int(np.argmin(((np.array(PALETTE, dtype=float) - mean) ** 2).sum(1)))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    _write(root / "clip.mp4", "libx264")  # mp4 header knows the frame count
    _write(root / "clip.mkv", "mpeg4")  # matroska does not: frames are counted from packets
    return root


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_decoded_frames_are_the_sampled_ones(videos, name):
    frames = read_video(videos / name, (4, 4), "middle")
    assert [_which(f) for f in frames] == [2, 7, 12, 17]
    assert all(f.mode == "RGB" and f.size == (64, 64) for f in frames)


def test_rand_frames_follow_the_rng(videos):
    rng = random.Random(11)
    t = rng.randint(3, 9)
    want = frame_indices(t, 20, "rand", input_fps=FPS, rng=rng)
    frames = read_video((videos / "clip.mp4").read_bytes(), (3, 9), "rand", rng=random.Random(11))
    assert [_which(f) for f in frames] == want


def test_padding_fps_and_clip(videos):
    assert [_which(f) for f in read_video(videos / "clip.mp4", (24, 24), "middle")] == list(range(20)) + [
        19
    ] * 4
    assert [_which(f) for f in read_video(videos / "clip.mp4", sample="fps2")] == [2, 8, 12, 18]
    # clip 1.0-2.0 s at 10 fps: start 10, 10 frames -> middle of (0,4) (5,9), offset by 10
    assert [_which(f) for f in read_video(videos / "clip.mkv", (2, 2), "middle", clip=(1.0, 2.0))] == [12, 17]


def test_gif(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in PALETTE[:12]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    assert [_which(f) for f in read_video(tmp_path / "a.gif", (4, 4), "middle")] == [1, 4, 7, 10]
    # like the reference, a GIF yields each chosen frame once (no padding)
    data = (tmp_path / "a.gif").read_bytes()
    assert [_which(f) for f in read_video(data, (16, 16), "middle")] == list(range(12))


def test_frame_folder_sorted_by_number(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):  # frame_1 ... frame_12: text order would put 10 before 2
        Image.new("RGB", (8, 8), PALETTE[k]).save(folder / f"frame_{k + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    # linspace(0, 12, 5) = 0 3 6 9 12 -> middle of (0,2) (3,5) (6,8) (9,11)
    assert [_which(f) for f in read_video(folder, (4, 4), "middle")] == [1, 4, 7, 10]
    assert [_which(f) for f in read_video(folder, (12, 20), "middle")] == list(range(12))  # all, unsampled


def test_garbage_video_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    with pytest.raises(ValueError, match="broken.mp4"):
        read_video(bad)
    with pytest.raises(ValueError, match="sample-9"):
        read_video(b"definitely not a video", where="sample-9")
    with pytest.raises(ValueError, match="empty"):
        read_video(tmp_path / "empty", where="empty")
