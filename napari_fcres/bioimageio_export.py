"""Export trained models as bioimage.io model packages (spec 0.5), and import them back.

:func:`export_bioimageio` writes one zip holding ``rdf.yaml``, the weights as a
``pytorch_state_dict`` with a self-contained architecture file (the project's
UNet and FC-ResNet source, copied verbatim, plus a small wrapper that averages
an ensemble's sigmoid probabilities), a TorchScript copy, test input and output
tensors (``.npy``), a cover image and a README.  The model takes **raw**
intensities (float32, no normalisation: the pre-processor learned it) of shape
``(batch, 1, y, x)`` with sides a multiple of the models' size divisor, and
returns foreground probabilities of the same shape.

The napari-fcres configs travel in ``config.napari_fcres`` of ``rdf.yaml``, so
:func:`import_bioimageio` rebuilds regular checkpoints for fine-tuning.  Only
packages written here can be imported (a foreign package lacks the configs).

Packages pass ``bioimageio test`` offline (``pip install napari-fcres[bioimageio]``);
writing them needs neither bioimageio.spec nor bioimageio.core.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import logging
import math
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import yaml

from . import __version__
from .checkpoint import config_of, read_checkpoint, save_checkpoint
from .config import Config
from .errors import CheckpointError, InputError
from .models import build_model, fcresnet, norm, unet
from .runs import best_path, find_checkpoints

log = logging.getLogger(__name__)

__all__ = ["export_bioimageio", "import_bioimageio", "architecture_source", "FORMAT_VERSION"]

FORMAT_VERSION = "0.5.4"
ARCH_FILE = "fcres_architecture.py"
ARCH_CALLABLE = "FcresEnsemble"
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"

CITATION = {
    "text": (
        "Drozdzal M., Chartrand G., Vorontsov E., et al. Learning normalized inputs for "
        "iterative estimation in medical image segmentation. Medical Image Analysis 44:1-13 "
        "(2018)"
    ),
    "doi": "10.1016/j.media.2017.11.005",
}

_WRAPPER = '''

# --------------------------------------------------------------------------- bioimage.io wrapper


class FcresModel(nn.Module):
    """One napari-fcres model (same parameter names as in napari-fcres checkpoints)."""

    def __init__(self, architecture: str, preprocessor: dict, fcresnet: dict, unet: dict,
                 norm_stats: str = "running") -> None:
        super().__init__()
        self.architecture = architecture
        if architecture == "pipeline":
            self.preprocessor = UNet(**preprocessor)
            self.fcresnet = _build_fcresnet(fcresnet)
            divisor = max(self.preprocessor.size_divisor, self.fcresnet.size_divisor)
        elif architecture in ("fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw"):
            self.fcresnet = _build_fcresnet(fcresnet)
            self.register_buffer("shift", torch.tensor(0.0))
            self.register_buffer("scale", torch.tensor(1.0))
            divisor = self.fcresnet.size_divisor
        elif architecture == "unet":
            self.unet = UNet(**unet)
            divisor = self.unet.size_divisor
        else:
            raise ValueError(f"unknown architecture {architecture!r}")
        set_norm_stats(self, norm_stats)
        self.size_divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw intensities (N, 1, H, W); pads to the size divisor and crops back."""
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.architecture == "pipeline":
            logits = self.fcresnet(self.preprocessor(x))
        elif self.architecture == "unet":
            logits = self.unet(x)
        else:
            logits = self.fcresnet((x - self.shift) / self.scale)
        return logits[..., :h, :w]


def _build_fcresnet(cfg: dict) -> FCResNet:
    return FCResNet(
        1, cfg["stem_width"], cfg["simple_width"], tuple(cfg["stage_widths"]),
        tuple(cfg["stage_blocks"]), cfg["across_width"], cfg["across_blocks"],
        cfg["bottleneck_ratio"], cfg["dropout"],
    )


class FcresEnsemble(nn.Module):
    """Mean foreground probability of one or more models: raw (N, 1, H, W) -> (N, 1, H, W)."""

    def __init__(self, members: list) -> None:
        super().__init__()
        self.members = nn.ModuleList(FcresModel(**m) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        probs = [torch.sigmoid(m(x)) for m in self.members]
        return torch.stack(probs).mean(0)
'''


def _module_body(module: Any) -> str:
    """A module's source from its first definition on (docstring and imports dropped)."""
    source = inspect.getsource(module)
    tree = ast.parse(source)
    starts = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            continue
        decorators = getattr(node, "decorator_list", [])
        starts.append(min([node.lineno, *(d.lineno for d in decorators)]))
    first = min(starts)
    return "\n".join(source.splitlines()[first - 1 :]).rstrip() + "\n"


def architecture_source() -> str:
    """The self-contained architecture file (needs only torch)."""
    parts = [
        f'"""napari-fcres {__version__} models for bioimage.io (generated; needs only torch).\n\n'
        "UNet (Table I) and FC-ResNet (Table II) of Drozdzal et al. 2018, copied from\n"
        "napari_fcres.models, and FcresEnsemble: the mean sigmoid probability of the members.\n"
        '"""\n',
        "from __future__ import annotations\n",
        "from collections.abc import Iterator\nfrom contextlib import contextmanager\n\n",
        "import torch\nfrom torch import nn\nfrom torch.nn import functional as F\n\n",
        "# --------------------------------------------------------------------------- "
        "batch normalization\n\n",
        _module_body(norm),
        "\n\n",
        "# --------------------------------------------------------------------------- UNet\n\n",
        _module_body(unet),
        "\n\n# --------------------------------------------------------------------------- "
        "FC-ResNet\n\n",
        _module_body(fcresnet),
        _WRAPPER,
    ]
    return "".join(parts)


def _load_arch_module(source: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "fcres_architecture"}
    exec(compile(source, ARCH_FILE, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _test_image(test_image: Any, divisor: int, size: int) -> np.ndarray:
    """A (1, 1, s, s) float32 test input: a centred crop of one slice, side a divisor multiple."""
    if test_image is None:
        from .sample_data import load_sample_stack

        image = load_sample_stack()[0]
    elif isinstance(test_image, (str, Path)):
        from .io import read_image

        image = read_image(test_image).data
    else:
        image = np.asarray(test_image)
    if image.ndim == 3:
        image = image[image.shape[0] // 2]
    if image.ndim != 2:
        raise InputError(f"the test image must be 2D or a 3D stack, got shape {image.shape}")
    h, w = image.shape
    side = min(size, h, w) // divisor * divisor
    if side < divisor:
        raise InputError(f"the test image {image.shape} is smaller than the size divisor {divisor}")
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = np.asarray(image[y0 : y0 + side, x0 : x0 + side], dtype=np.float32)
    if not np.isfinite(crop).all():
        raise InputError("the test image contains NaN or infinite values")
    return crop[None, None]


def _cover(raw: np.ndarray, probs: np.ndarray, path: Path) -> None:
    from PIL import Image

    r = raw[0, 0].astype(np.float64)
    lo, hi = np.percentile(r, (0.5, 99.5))
    r = np.clip((r - lo) / max(hi - lo, 1e-12), 0, 1)
    both = np.concatenate([r, probs[0, 0].astype(np.float64)], axis=1)
    Image.fromarray((both * 255).round().astype(np.uint8)).save(path)


def _readme(name: str, description: str, members: list[dict], divisor: int, ckpts: list[Any],
            test_shape: tuple[int, ...]) -> str:
    lines = [
        f"# {name}", "", description, "",
        "Learned normalization + FC-ResNet segmentation (Drozdzal et al. 2018), exported by "
        f"[napari-fcres](https://github.com/napari-fcres/napari-fcres) {__version__}.", "",
        "## Input and output", "",
        f"* input `{INPUT_ID}`: raw intensities, float32, shape (batch, 1, y, x) with y and x "
        f"multiples of {divisor}. **No normalisation**: the models learned their own "
        "pre-processing; feed the values as acquired (any dtype cast to float32).",
        f"* output `{OUTPUT_ID}`: foreground probability in [0, 1], same shape"
        + (f"; the mean of {len(members)} ensemble members." if len(members) > 1 else "."),
        "* Threshold at 0.5 for a binary mask.",
        *(["* Every batch-norm layer normalizes by the statistics of each input image "
            "(napari-fcres' `norm_stats: image`): feed whole images, or tiles as large as "
            "memory allows; smaller tiles give slightly different results."]
          if any(m.get("norm_stats") in ("image", "auto", "volume") for m in members)
          else []),
        "",
        "## Models", "",
    ]
    for k, (m, ck) in enumerate(zip(members, ckpts, strict=True)):
        score = ck.get("best_val_dice")
        lines.append(
            f"{k + 1}. `{m['architecture']}`, preset `{ck['config']['model']['preset']}`"
            + (f", best validation Dice {score:.4f}" if isinstance(score, float) and score >= 0
               else "")
        )
    lines += [
        "", "## Validation", "",
        "Each model's Dice above was measured on its own held-out validation slices (a random "
        "split of the annotated slices) at threshold 0.5 during training with napari-fcres. "
        f"The test tensors ({test_shape}) check that the package reproduces napari-fcres' "
        "output; they do not measure accuracy. Validate on your own annotated data before "
        "relying on the model: intensities far outside the training range are not normalised "
        "away.", "",
        "## Citation", "", CITATION["text"] + f". doi:{CITATION['doi']}", "",
    ]
    return "\n".join(lines)


def export_bioimageio(
    checkpoints: Sequence[str | Path] | str | Path,
    out_path: str | Path,
    *,
    name: str = "napari-fcres segmentation",
    description: str = "Binary segmentation with a learned pre-processor and an FC-ResNet",
    authors: Sequence[str] = ("napari-fcres",),
    maintainers: Sequence[str] = (),
    license: str = "BSD-3-Clause",  # noqa: A002 - the rdf field's name
    tags: Sequence[str] = ("segmentation", "2d", "pytorch", "fc-resnet", "napari-fcres"),
    test_image: Any = None,
    test_size: int = 256,
    torchscript: bool = True,
    validate: bool = True,
) -> Path:
    """Write the model(s) in ``checkpoints`` (files or training folders) as one package zip.

    Several checkpoints become one model that averages their probabilities.
    ``test_image``: an array or image path for the test tensors (default: the
    embedded synthetic EM stack); a centred crop of at most ``test_size``
    pixels of its middle slice is used.  ``maintainers``: GitHub user names
    (the bioimage.io zoo asks for one before upload; ``bioimageio test`` then
    looks them up online, so leave them out for offline tests).  ``validate``
    checks the package with bioimageio.spec when that is installed.  Returns
    the zip's path.
    """
    paths = find_checkpoints(checkpoints)
    if not paths:
        raise InputError("no checkpoint given")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".zip":
        raise InputError(f"the package must be a .zip file, got {out_path}")
    ckpts = [read_checkpoint(p) for p in paths]
    members = []
    for ck in ckpts:
        m = config_of(ck).to_dict()["model"]
        members.append({k: m[k] for k in ("architecture", "preprocessor", "fcresnet", "unet",
                                          "norm_stats")})
    arch_src = architecture_source()
    ns = _load_arch_module(arch_src)
    wrapper = ns[ARCH_CALLABLE](members).eval()
    state = {}
    for k, ck in enumerate(ckpts):
        state.update({f"members.{k}.{key}": v for key, v in ck["model_state"].items()})
    try:
        wrapper.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoints do not fit the exported architecture: {exc}") \
            from None
    divisor = 1
    for m in wrapper.members:
        divisor = math.lcm(divisor, int(m.size_divisor))
    raw = _test_image(test_image, divisor, test_size)
    with torch.no_grad():
        probs = wrapper(torch.from_numpy(raw)).numpy().astype(np.float32)
        ours = np.mean([torch.sigmoid(_ref_model(ck)(torch.from_numpy(raw))).numpy()
                        for ck in ckpts], axis=0)
    if not np.allclose(probs, ours, atol=1e-5):
        raise CheckpointError("the exported architecture does not reproduce napari-fcres' output")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / ARCH_FILE).write_text(arch_src)
        torch.save(state, d / WEIGHTS_FILE)
        np.save(d / "test_input.npy", raw)
        np.save(d / "test_output.npy", probs)
        import tifffile

        tifffile.imwrite(d / "sample_input.tif", raw[0, 0])
        tifffile.imwrite(d / "sample_output.tif", probs[0, 0])
        _cover(raw, probs, d / "cover.png")
        (d / "README.md").write_text(
            _readme(name, description, members, divisor, ckpts, raw.shape)
        )
        weights: dict[str, Any] = {
            "pytorch_state_dict": {
                "source": WEIGHTS_FILE,
                "sha256": _sha256(d / WEIGHTS_FILE),
                "architecture": {
                    "source": ARCH_FILE,
                    "sha256": _sha256(d / ARCH_FILE),
                    "callable": ARCH_CALLABLE,
                    "kwargs": {"members": members},
                },
                "pytorch_version": torch.__version__.split("+")[0],
            },
        }
        if torchscript:
            with torch.no_grad(), warnings.catch_warnings():
                # the pad-to-divisor branch is traced as not taken: sizes are divisor multiples
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
                traced = torch.jit.trace(wrapper, torch.from_numpy(raw), check_trace=False)
            traced.save(str(d / TORCHSCRIPT_FILE))
            weights["torchscript"] = {
                "source": TORCHSCRIPT_FILE,
                "sha256": _sha256(d / TORCHSCRIPT_FILE),
                "pytorch_version": torch.__version__.split("+")[0],
                "parent": "pytorch_state_dict",
            }
        rdf = _rdf(name, description, authors, license, tags, divisor, d, weights, ckpts,
                   members)
        if maintainers:
            rdf["maintainers"] = [{"github_user": u} for u in maintainers]
        (d / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_zip = out_path.with_name(f".{out_path.name}.partial")
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(d.iterdir()):
                zf.write(f, f.name)
        tmp_zip.replace(out_path)
    if validate:
        # bioimageio.spec looks GitHub user names up online: skip its I/O checks then
        _validate(out_path, perform_io_checks=not maintainers)
    log.info("wrote bioimage.io package %s (%d member(s))", out_path, len(members))
    return out_path


def _ref_model(ck: dict[str, Any]) -> torch.nn.Module:
    model = build_model(config_of(ck).model)
    model.load_state_dict(ck["model_state"])
    return model.eval()


def _rdf(name: str, description: str, authors: Sequence[str], license: str,  # noqa: A002
         tags: Sequence[str], divisor: int, d: Path, weights: dict[str, Any],
         ckpts: list[dict[str, Any]], members: list[dict[str, Any]]) -> dict[str, Any]:
    space_in = [{"type": "space", "id": a, "size": {"min": divisor, "step": divisor}}
                for a in ("y", "x")]
    space_out = [{"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}}
                 for a in ("y", "x")]
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "authors": [{"name": a} for a in authors],
        "cite": [CITATION],
        "license": license,
        "tags": list(tags),
        "documentation": "README.md",
        "covers": ["cover.png"],
        "version": "0.1.0",
        "inputs": [{
            "id": INPUT_ID,
            "description": "raw intensities (no normalisation), one channel",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": ["raw"]}, *space_in],
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(d / "test_input.npy")},
            "sample_tensor": {"source": "sample_input.tif",
                              "sha256": _sha256(d / "sample_input.tif")},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": "foreground probability (mean over the ensemble)",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": ["foreground"]}, *space_out],
            "test_tensor": {"source": "test_output.npy",
                            "sha256": _sha256(d / "test_output.npy")},
            "sample_tensor": {"source": "sample_output.tif",
                              "sha256": _sha256(d / "sample_output.tif")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": weights,
        "config": {"napari_fcres": {
            "version": __version__,
            "configs": [ck["config"] for ck in ckpts],
            "best_val_dice": [float(ck.get("best_val_dice", -1.0)) for ck in ckpts],
            "n_members": len(members),
        }},
    }


def _validate(package: Path, perform_io_checks: bool = True) -> None:
    """Format check with bioimageio.spec, when installed (offline unless GitHub users are named)."""
    try:
        from bioimageio.spec import load_description
    except ImportError:
        log.info("bioimageio.spec is not installed; package %s not validated", package)
        return
    descr = load_description(package, perform_io_checks=perform_io_checks)
    summary = descr.validation_summary
    if summary.status not in ("passed", "valid-format"):
        details = "; ".join(
            f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.details[0].errors[:5]
        ) if summary.details else ""
        raise CheckpointError(f"the bioimage.io package {package} is invalid: {details}")


# ----------------------------------------------------------------------------- import


def _read_package(package: Path) -> tuple[dict[str, Any], Any]:
    """``rdf.yaml`` and a file reader of a zip, a folder or an rdf.yaml path.

    The reader takes a name from ``rdf.yaml`` and reads that file of the package only: an
    absolute name, one with ``..`` or a drive, or (in a folder) one that leads outside the
    package through a symbolic link is refused with :class:`CheckpointError`.
    """
    if not package.exists():
        raise InputError(f"bioimage.io package not found: {package}")
    if package.is_file() and zipfile.is_zipfile(package):
        zf = zipfile.ZipFile(package)
        names = zf.namelist()
        rdf_name = next((n for n in ("rdf.yaml", "bioimageio.yaml") if n in names), None)
        if rdf_name is None:
            raise InputError(f"{package} holds no rdf.yaml; not a bioimage.io package")

        def read_member(name: Any) -> bytes:
            return zf.read(_package_name(package, name))

        return _rdf_mapping(package, zf.read(rdf_name)), read_member
    folder = package if package.is_dir() else package.parent
    rdf_path = package if package.is_file() else next(
        (folder / n for n in ("rdf.yaml", "bioimageio.yaml") if (folder / n).exists()), None)
    if rdf_path is None:
        raise InputError(f"{package} holds no rdf.yaml; not a bioimage.io package")
    root = folder.resolve()

    def read_file(name: Any) -> bytes:
        path = (folder / _package_name(package, name)).resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(f"{package}: {name!r} in rdf.yaml leads outside the package "
                                  "(a symbolic link); refused")
        return path.read_bytes()

    return _rdf_mapping(package, rdf_path.read_bytes()), read_file


def _package_name(package: Path, name: Any) -> str:
    """``name`` (from rdf.yaml) if it names a file inside the package, else CheckpointError."""
    text = str(name) if isinstance(name, str) else ""
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text or text.startswith(("/", "\\")) or ":" in text or ".." in parts:
        raise CheckpointError(f"{package}: {name!r} in rdf.yaml does not name a file inside the "
                              "package (absolute, '..' or not a name); refused")
    return text


def _rdf_mapping(package: Path, raw: bytes) -> dict[str, Any]:
    """The rdf.yaml mapping (``yaml.safe_load``: plain values only), or a one-line error."""
    try:
        rdf = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InputError(f"{package}: rdf.yaml is not valid YAML: "
                         + " ".join(str(exc).split())) from None
    if not isinstance(rdf, dict):
        raise InputError(f"{package}: rdf.yaml holds no mapping; not a bioimage.io package")
    return rdf


def import_bioimageio(
    package: str | Path, out: str | Path, *, member: int | None = None
) -> Path:
    """Checkpoint(s) of a package written by :func:`export_bioimageio`, to predict or fine-tune.

    One model (or ``member=k`` of an ensemble) is written to the file ``out``
    (a folder ``out`` gets its best checkpoint, :func:`napari_fcres.runs.best_path`); an
    ensemble without ``member`` to the best checkpoints of a run folder ``out``, usable
    as ``--models out``.  Returns the file or folder written.
    """
    package, out = Path(package), Path(out)
    rdf, read = _read_package(package)
    cfg = (rdf.get("config") or {}).get("napari_fcres") if isinstance(rdf.get("config"), dict) \
        else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("configs"), list):
        raise CheckpointError(
            f"{package} was not exported by napari-fcres (no config.napari_fcres in rdf.yaml); "
            "only packages written by `fcres export-bioimageio` can be imported"
        )
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(weights, dict) or "source" not in weights:
        raise CheckpointError(f"{package} has no pytorch_state_dict weights")
    raw = read(weights["source"])  # refused when it names a file outside the package
    try:  # weights_only: tensors and plain values, never code
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged weights, or ones that would run code
        raise CheckpointError(f"cannot read the weights of {package}: "
                              + " ".join(str(exc).split())[:300]) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"the weights of {package} are not a state dict")
    configs = cfg["configs"]
    scores = cfg.get("best_val_dice", [-1.0] * len(configs))
    if member is not None and not 0 <= member < len(configs):
        raise InputError(f"member {member} does not exist; the package has {len(configs)}")
    chosen = [member] if member is not None else list(range(len(configs)))

    def write(k: int, path: Path) -> Path:
        config = Config.from_dict(configs[k])
        prefix = f"members.{k}."
        model_state = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
        try:
            build_model(config.model).load_state_dict(model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"member {k} of {package} does not fit its config: {exc}") \
                from None
        payload = {"config": config.to_dict(), "preset": config.model.preset,
                   "architecture": config.model.architecture, "model_state": model_state,
                   "member": k, "best_val_dice": float(scores[k]),
                   "imported_from": str(package), "history": []}
        return save_checkpoint(path, payload)

    targets = ([best_path(out) if out.is_dir() or out.suffix == "" else out]
               if len(chosen) == 1 else [best_path(out, k) for k in chosen])
    taken = [t for t in targets if t.exists()]
    if taken:  # never replace a checkpoint that is there
        raise InputError(f"{taken[0]} already exists; import into another --out (nothing was "
                         "replaced)")
    for k, path in zip(chosen, targets, strict=True):
        write(k, path)
    return targets[0] if len(chosen) == 1 else out
