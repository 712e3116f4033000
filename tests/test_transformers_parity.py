"""Parity with transformers itself (issue 10 item 1, CONTRACT s.3): the stored image is what Qwen2-VL's
processor feeds the model, so the processor never resizes it and the loader's pixels equal the
processor's on the stored file (PIL backend, and torchvision backend where it imports), to 1e-5;
``image_grid_thw``, token counts, chat-template input ids and M-RoPE positions (Qwen2-VL and
Qwen2.5-VL ``get_rope_index``) are equal. Offline: the shipped tokenizer, no download.

Run as a script to print the per-image figures: ``.venv/bin/python tests/test_transformers_parity.py``.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def torchvision_status() -> str | None:
    """None when transformers' torchvision backend can run here, else exactly why not."""
    if importlib.util.find_spec("torchvision") is None:
        return ("torchvision is not installed: the registry's wheel is the CUDA build (its _C.so links "
                "libc10_cuda.so) and torch here is 2.13.0+cpu, so `import torchvision` fails with "
                "'operator torchvision::nms does not exist'; the CPU wheel is on download.pytorch.org, which "
                "this box cannot reach. Run with PYTHONPATH=<dir> after `pip install --no-deps --target <dir> "
                "torchvision==0.28.0`: tests/tv_shim.py then declares the missing op schemas")
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise
        import sys

        for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[m]
        sys.path.insert(0, str(Path(__file__).parent))
        import tv_shim  # noqa: F401
        import torchvision  # noqa: F401
    return None


# Before anything imports transformers' image modules: they import torchvision whenever it is installed.
TORCHVISION_WHY = torchvision_status()
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from mmdata.images import ImageError  # noqa: E402
from mmdata.loader.pixels import decode_frame, fill_rows, image_rows, normalize_pixels  # noqa: E402
from mmdata.models.rope import mrope_position_ids  # noqa: E402
from mmdata.shard.resize import ResizeSpec, StoredImage, resize_image  # noqa: E402
from mmdata.text.templates import encode_conversation  # noqa: E402
from mmdata.text.tokenizer import ASSET, load_tokenizer  # noqa: E402

ANCHOR = Path(__file__).resolve().parents[1] / ".." / "shared" / "anchor-data"
TOL = 1e-5

# The shape of Qwen2-VL-Instruct's published chat template (images and text, default system prompt),
# written out here so nothing is downloaded.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx ^ yy) & 255], -1)
    return Image.fromarray(np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(_photo(400, 600, 3).transpose(Image.Transpose.ROTATE_90), exif=exif)


def awkward_images() -> dict[str, bytes]:
    """The awkward sizes and modes of issue 10 (1x2000 is rejected: see its own test)."""
    rgba = np.zeros((120, 200, 4), np.uint8)
    rgba[..., :3] = np.asarray(_photo(200, 120, 4))
    rgba[:, 100:, 3] = 255
    return {
        "29x29": _png(_photo(29, 29, 1)),
        "4000x3000": _jpeg(_photo(4000, 3000, 2)),
        "cmyk": _jpeg(_photo(300, 200, 5).convert("CMYK")),
        "rgba": _png(Image.fromarray(rgba, "RGBA")),
        "png16": _png(Image.fromarray((np.arange(180 * 250).reshape(180, 250) * 7 % 65536).astype(np.uint16))),
        "exif6": _exif_rotated(),
        "at-size-308x196": _jpeg(_photo(308, 196, 6)),
        "grey-at-size": _jpeg(_photo(224, 168, 7).convert("L")),
    }


def anchor_images() -> dict[str, bytes]:
    root = ANCHOR.resolve()
    files = sorted((root / "coco" / "images").glob("*.jpg")) + sorted((root / "messages" / "mllm_demo_data").glob("*.jpg"))
    return {f.name: f.read_bytes() for f in files}


def hf_image_processor(backend: str, max_tokens: int):
    """transformers' Qwen2-VL image processor with this budget (min/max pixels as the shard rule uses)."""
    size = {"shortest_edge": 56 * 56, "longest_edge": max_tokens * 28 * 28}
    if backend == "pil":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(size=size)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size=size)


def parity(stored: StoredImage, backend: str, max_tokens: int) -> float:
    """Max |ours - transformers| over ``pixel_values`` of one stored image; asserts grid and tokens."""
    proc = hf_image_processor(backend, max_tokens)
    with Image.open(io.BytesIO(stored.data)) as im:
        im.load()
        out = proc(images=[im], return_tensors="pt")
    theirs = out["pixel_values"].numpy()
    grid = tuple(int(x) for x in out["image_grid_thw"][0])
    rows, ours_grid = image_rows(stored.data, stored.height, stored.width, 14, 2, 2, "float32")
    assert grid == ours_grid == (1, stored.height // 14, stored.width // 14)  # the processor did not resize
    assert grid[1] * grid[2] // 4 == stored.image_tokens
    assert rows.shape == theirs.shape
    # uint8 rows normalised on the device equal the float32 path bit for bit
    frame = decode_frame(stored.data, stored.height, stored.width)
    dev = normalize_pixels(torch.from_numpy(fill_rows([frame], 2, "uint8"))).numpy()
    assert np.array_equal(dev, fill_rows([frame], 2, "float32")) and np.array_equal(dev, rows)
    return float(np.abs(rows - theirs).max())


CASES = {**awkward_images()}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("max_tokens", [1280, 64])
def test_pil_backend_pixels_equal_ours_on_awkward_images(name, max_tokens):
    stored = resize_image(CASES[name], ResizeSpec(max_res=448, max_image_tokens=max_tokens))
    assert parity(stored, "pil", max_tokens) <= TOL


def test_pil_backend_pixels_equal_ours_on_anchor_photos():
    imgs = anchor_images() if ANCHOR.resolve().exists() else {}
    if not imgs:
        pytest.skip("anchor data (../shared/anchor-data) not present")
    for name, data in imgs.items():
        for max_res in (448, 1000):
            stored = resize_image(data, ResizeSpec(max_res=max_res))
            assert parity(stored, "pil", 1280) <= TOL, name


def test_torchvision_backend_pixels_equal_ours():
    if TORCHVISION_WHY:
        pytest.skip(TORCHVISION_WHY)
    imgs = {**CASES, **(anchor_images() if ANCHOR.resolve().exists() else {})}
    for name, data in imgs.items():
        stored = resize_image(data, ResizeSpec())
        assert parity(stored, "torchvision", 1280) <= TOL, name


def test_the_processor_refuses_what_shard_rejects():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for w, h, reason in [(1, 2000, "image_too_small"), (9000, 40, "over_token_budget")]:
        with pytest.raises(ImageError) as e:
            resize_image(_png(_photo(w, h)), ResizeSpec())
        assert e.value.reason == reason
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=1280 * 784)


# ---- text side: Qwen2VLProcessor + chat template, get_rope_index ---------------------------------------

@pytest.fixture(scope="module")
def hf_processor():
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    from transformers.processing_utils import ProcessorMixin

    tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSET))
    # Without torchvision transformers cannot resolve the (unused) video processor class: skip only
    # that class check while building; images and text go through the real processor.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
        return Qwen2VLProcessor(image_processor=hf_image_processor("pil", 1280), tokenizer=tok,
                                chat_template=QWEN2VL_CHAT_TEMPLATE)


DOCS = [
    ("one image", ["<image>Describe this photo."], ["A dog on a red sofa."], 1),
    ("two images, two turns", ["<image><image>What differs?", "And the colours?"], ["The left one is larger.", "Blue, then green."], 2),
    ("text only", ["Hello there."], ["Hi!"], 0),
]


def _messages(users: list[str], answers: list[str]) -> list[dict]:
    msgs = []
    for u, a in zip(users, answers):
        parts = u.split("<image>")
        content = [{"type": "image"} for _ in parts[1:]] + [{"type": "text", "text": parts[-1]}]
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
    return msgs


def _hf_rope(model_cls, input_ids, image_pad_id, grids, second_per_grid_ts=None):
    """transformers' ``get_rope_index`` of one sequence (the method reads only the vision config)."""
    cfg = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2, tokens_per_second=2))
    stub = SimpleNamespace(config=cfg, get_vision_position_ids=lambda *a, **k: model_cls.get_vision_position_ids(None, *a, **k))
    ids = torch.as_tensor(input_ids, dtype=torch.long).view(1, -1)
    kw = {"second_per_grid_ts": second_per_grid_ts} if second_per_grid_ts is not None else {}
    pos, _ = model_cls.get_rope_index(stub, ids, (ids == image_pad_id).int(),
                                      image_grid_thw=torch.as_tensor(grids, dtype=torch.long).view(-1, 3), **kw)
    return pos[:, 0].numpy()


@pytest.mark.parametrize("title,users,answers,n_img", DOCS, ids=[d[0] for d in DOCS])
def test_chat_template_ids_and_rope_index_equal_transformers(hf_processor, title, users, answers, n_img):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    tok = load_tokenizer(None)
    photos = [_photo(300 + 40 * k, 200 + 10 * k, k) for k in range(n_img)]
    stored = [resize_image(_jpeg(p), ResizeSpec()) for p in photos]
    text = hf_processor.apply_chat_template(_messages(users, answers), tokenize=False)
    images = [Image.open(io.BytesIO(s.data)) for s in stored] or None
    hf = hf_processor(text=[text], images=images, return_tensors="pt")
    record = {"id": title, "conversations": [t for u, a in zip(users, answers)
                                             for t in ({"from": "human", "value": u}, {"from": "gpt", "value": a})]}
    enc = encode_conversation(record, tok, "qwen2vl", [s.image_tokens for s in stored])
    assert enc.input_ids.tolist() == hf["input_ids"][0].tolist()
    if not n_img:
        return
    grids = hf["image_grid_thw"].numpy()
    assert grids.tolist() == [[1, s.height // 14, s.width // 14] for s in stored]
    ours = mrope_position_ids(enc.input_ids, grids, 2, tok.vision_start_id, tok.image_pad_id)
    assert np.array_equal(ours, _hf_rope(Qwen2VLModel, enc.input_ids, tok.image_pad_id, grids))
    # Qwen2.5-VL: the same positions for still images; second_per_grid_ts spaces video frames only.
    for ts in (None, torch.tensor([0.5] * n_img)):
        assert np.array_equal(ours, _hf_rope(Qwen2_5_VLModel, enc.input_ids, tok.image_pad_id, grids, ts))


if __name__ == "__main__":  # the per-image figures for docs/benchmarks.md
    why = TORCHVISION_WHY
    imgs = {**CASES, **(anchor_images() if ANCHOR.resolve().exists() else {})}
    print(f"{'image':28s} {'stored':>9s} {'tokens':>6s}  pil max|diff|  torchvision max|diff|")
    for name, data in imgs.items():
        s = resize_image(data, ResizeSpec())
        tv = "n/a" if why else f"{parity(s, 'torchvision', 1280):.2e}"
        print(f"{name:28s} {s.width:4d}x{s.height:<4d} {s.image_tokens:6d}  {parity(s, 'pil', 1280):.2e}      {tv}")
    if why:
        print("torchvision:", why)
