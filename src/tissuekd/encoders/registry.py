"""Encoders from timm by name, plus presets for pathology foundation models.

Weights only ever come from a local file named in the config (safetensors, or a
`torch.load(weights_only=True)` checkpoint, whatever the file's name); `weights: random` gives seeded random
weights (the demo). Nothing here downloads anything.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tissuekd.encoders.convert import transformers_layout, transformers_vit_to_timm
from tissuekd.errors import InputError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

# torch and timm are imported inside the functions that build models: this module is read when
# Snakemake parses the workflow, in every run, dry run and cluster job (the two imports: ~4.5 s)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uni2h_kwargs() -> dict[str, Any]:
    """UNI2-h as published (MahmoodLab): ViT-giant layout, patch 14, 24 blocks, 1536-d,
    8 register tokens, SwiGLU MLP, layer scale; ImageNet normalisation, 0.5 um/px."""
    import timm
    import torch

    return {
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": timm.layers.SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }


def _uni_kwargs() -> dict[str, Any]:
    """UNI (v1) as published (MahmoodLab/UNI): ViT-large, patch 16, layer scale, 1024-d class token."""
    return {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}


def _phikon_kwargs() -> dict[str, Any]:
    """Phikon (owkin/phikon, iBOT) as published: ViT-base, patch 16, LayerNorm epsilon 1e-12 (its
    config's), the class token after the last norm as the 768-d embedding (the card's
    `last_hidden_state[:, 0]`). Its weights are in transformers' layout: convert.py renames them."""
    import functools

    import torch

    return {"img_size": 224, "num_classes": 0, "global_pool": "token", "dynamic_img_size": True,
            "norm_layer": functools.partial(torch.nn.LayerNorm, eps=1e-12)}


def _phikon2_kwargs() -> dict[str, Any]:
    """Phikon-v2 (owkin/phikon-v2, DINOv2) as published: ViT-large, patch 16, layer scale, no
    registers, the class token after the last norm as the 1024-d embedding (the card's
    `last_hidden_state[:, 0, :]`), 224 px. Its weights are in transformers' Dinov2Model layout:
    convert.py renames them."""
    return _uni_kwargs() | {"global_pool": "token"}


def _virchow_kwargs() -> dict[str, Any]:
    """Virchow (v1) as published (paige-ai/Virchow's config.json): Virchow2's layout without its
    register tokens."""
    kwargs = _virchow2_kwargs()
    del kwargs["reg_tokens"]
    return kwargs


def _gigapath_kwargs() -> dict[str, Any]:
    """Prov-GigaPath's tile encoder as published (prov-gigapath/prov-gigapath's config.json): the
    DINOv2 ViT-giant layout (SwiGLU MLP, ratio 5.33334; layer scale) at patch 16, 40 blocks, the
    class token as the 1536-d embedding; built at 224 px, as its card."""
    return {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0, "global_pool": "token"}


def _virchow2_kwargs() -> dict[str, Any]:
    """Virchow2 as published (paige-ai/Virchow2's config.json): ViT-huge, patch 14, 4 register
    tokens, SwiGLU MLP (ratio 5.3375), layer scale, no pooling (the embedding is made from the
    tokens: `pool` "cls+mean" below)."""
    import timm
    import torch

    return {
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "reg_tokens": 4,
        "mlp_ratio": 5.3375,
        "global_pool": "",
        "dynamic_img_size": True,
        "mlp_layer": timm.layers.SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
    }


def _hoptimus_kwargs() -> dict[str, Any]:
    """H-optimus-0 and -1 as published (bioptimus): DINOv2 ViT-giant with 4 register tokens, 224 px,
    layer scale, the class token as the 1536-d embedding."""
    return {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token", "dynamic_img_size": False}


# what a file in a transformers layout is, for a mismatch's message (renamed keys are listed in timm's names)
LAYOUT_HINT = {"ViTModel": "Phikon's, as preset phikon reads it",
               "Dinov2Model": "Phikon-v2's, as preset phikon-v2 reads it"}

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)  # the model card's normalisation (H&E statistics)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class Preset:
    arch: str  # timm architecture
    kwargs: Any  # factory of its timm kwargs (imports timm only when a model is built)
    mpp: float  # microns per pixel it was trained at
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    pool: str = "timm"  # "timm": the model's own output; "cls+mean": class token and mean patch token
    fixed_px: int | None = None  # the only input side it takes (built without dynamic_img_size)


PRESETS = {
    "uni": Preset("vit_large_patch16_224", _uni_kwargs, 0.5),
    "uni2-h": Preset("vit_giant_patch14_224", _uni2h_kwargs, 0.5),
    "phikon": Preset("vit_base_patch16_224", _phikon_kwargs, 0.5),
    "phikon-v2": Preset("vit_large_patch16_224", _phikon2_kwargs, 0.5),
    # 2560-d: the class token and the mean of the patch tokens (registers excluded), as the cards embed
    "virchow": Preset("vit_huge_patch14_224", _virchow_kwargs, 0.5, pool="cls+mean"),
    "virchow2": Preset("vit_huge_patch14_224", _virchow2_kwargs, 0.5, pool="cls+mean"),
    "prov-gigapath": Preset("vit_giant_patch14_dinov2", _gigapath_kwargs, 0.5, fixed_px=224),
    "h-optimus-0": Preset("vit_giant_patch14_reg4_dinov2", _hoptimus_kwargs, 0.5, HOPTIMUS_MEAN, HOPTIMUS_STD,
                          fixed_px=224),
    "h-optimus-1": Preset("vit_giant_patch14_reg4_dinov2", _hoptimus_kwargs, 0.5, HOPTIMUS_MEAN, HOPTIMUS_STD,
                          fixed_px=224),
}


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    arch: str
    mpp: float
    weights: str  # a local file, or "random"
    input_px: int = 224  # input side: niche crops span input_px * mpp µm; survival patches are resampled to it
    seed: int = 0
    kwargs: dict = field(default_factory=dict)
    preset: str | None = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @property
    def described(self) -> str:
        """What errors call the model: the preset where there is one, and the timm architecture."""
        return f"preset {self.preset} (architecture {self.arch})" if self.preset else f"architecture {self.arch}"

    @classmethod
    def from_config(cls, name: str, entry: dict, check_arch: bool = True,
                    cache: str | Path | None = None) -> EncoderSpec:
        """Build from one `encoders:` entry; unknown presets or timm names fail here, naming the key
        (`check_arch=False` skips the timm lookup, which imports timm: for processes that only
        run jobs of a workflow whose main process has checked the names; `cache`, a file of the
        names found before, per timm version, spares the import when the name is there)."""
        where = f"config encoders.{name}"
        preset = entry.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(where, f"unknown preset {preset!r} (known: {sorted(PRESETS)})")
            arch, mpp, mean, std = PRESETS[preset].arch, PRESETS[preset].mpp, PRESETS[preset].mean, PRESETS[preset].std
        else:
            arch, mpp = entry.get("model"), entry.get("mpp")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if not arch:
                raise InputError(where, "needs `model` (a timm name) or `preset`")
            if check_arch and not _is_timm_model(arch, cache):
                raise InputError(where, f"unknown encoder {arch!r}: not a timm model name")
        fixed = preset and PRESETS[preset].fixed_px
        if fixed and int(entry.get("input_px") or fixed) != fixed:
            raise InputError(where, f"preset {preset} takes {fixed}-px inputs only, not input_px {entry['input_px']}")
        weights = entry.get("weights")
        if not weights:
            raise InputError(where, "needs `weights`: a local file, or `random` for seeded random weights")
        return cls(
            name=name,
            arch=arch,
            mpp=float(entry.get("mpp") or mpp or 0.5),
            weights=str(weights),
            input_px=int(entry.get("input_px") or 224),
            seed=int(entry.get("seed", 0)),
            kwargs=dict(entry.get("kwargs") or {}),
            preset=preset,
            mean=tuple(entry.get("mean") or mean),
            std=tuple(entry.get("std") or std),
        )


def timm_names_cache() -> Path | None:
    """The user's file of names timm knew (`$XDG_CACHE_HOME/tissuekd`, else `~/.cache/tissuekd`):
    one per user, not per working directory, so a project's first dry run skips the import too."""
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory to be found: no cache, same answers
        return None
    return root / "tissuekd" / "timm_models.txt"


def _is_timm_model(arch: str, cache: str | Path | None = None) -> bool:
    """Whether timm knows `arch`; names found are added to `cache` (keyed by timm's version), so
    the next check of the same name does not import timm and torch (~4 s)."""
    from importlib.metadata import version

    key = f"timm {version('timm')} {arch}"
    cache = Path(cache) if cache else None
    try:
        if cache and key in cache.read_text().splitlines():
            return True
    except OSError:  # no cache yet, or one we may not read: ask timm
        pass
    import timm

    known = timm.is_model(arch) or bool(timm.list_models(arch))
    if known and cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("a") as f:
                f.write(key + "\n")
        except OSError:  # a cache we may not write: no cache, same answer
            pass
    return known


def create_model(spec: EncoderSpec) -> torch.nn.Module:
    """The architecture with seeded random weights (no download: pretrained=False)."""
    import timm
    import torch

    preset = PRESETS[spec.preset] if spec.preset else None
    kwargs = dict(preset.kwargs() if preset else {})
    kwargs.update(spec.kwargs)
    kwargs.setdefault("num_classes", 0)  # pooled features, no classifier head
    torch.manual_seed(spec.seed)
    model = timm.create_model(spec.arch, pretrained=False, **kwargs)
    if preset and preset.pool == "cls+mean":
        model.forward_head = types.MethodType(_cls_and_mean_patch, model)  # the weights' keys stay timm's
    return model


def _cls_and_mean_patch(model, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """(B, 2C): the class token beside the mean of the patch tokens (register tokens left out)."""
    import torch

    return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(1)], dim=-1)


LFS_POINTER = b"version https://git-lfs"  # what a hub clone without git-lfs leaves in place of the weights


def require_weights(path: str | Path, model_name: str) -> Path:
    """The weights file, checked before anything is built (by the workflow at plan time too):
    it exists, is a file, and is not a Git LFS pointer."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"is a folder: name the weights file in it (e.g. pytorch_model.bin or "
                               f"model.safetensors) for {model_name}")
    if not path.is_file():
        raise InputError(path, f"does not exist (the encoder weights for {model_name})")
    with path.open("rb") as fh:
        if fh.read(len(LFS_POINTER)) == LFS_POINTER:
            raise InputError(path, "is a Git LFS pointer, not the weights: fetch them (git lfs pull, or hf download)")
    return path


def read_state(path: Path) -> dict:
    """A state dict from a torch checkpoint (zip or pickle) or a safetensors file, told apart by
    their first bytes, not the file's name."""
    import torch

    with path.open("rb") as fh:
        head = fh.read(64)
    try:
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            with path.open("rb") as fh:  # a file object: torch.load would read a *.safetensors name as safetensors
                state = torch.load(fh, map_location="cpu", weights_only=True)
            log.info("%s: read as a torch checkpoint", path)
        elif head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON header
            from safetensors.torch import load_file

            state = load_file(str(path))
            log.info("%s: read as safetensors", path)
        else:
            raise ValueError("neither a torch checkpoint (zip or pickle) nor a safetensors file")
    except Exception as err:
        raise InputError(path, f"cannot read encoder weights: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and set(state) == {key}:
            state = state[key]
    if not isinstance(state, Mapping):
        raise InputError(path, f"holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: torch.nn.Module, path: str | Path, model_name: str, state: dict | None = None,
                 note: str = "") -> None:
    """Load a local state dict strictly; any missing, extra or mis-shaped tensor is an error.
    A model built on the meta device (no memory, no initialisation) takes the file's tensors
    as its own, in float32: the weights are held once, not beside a random copy. `state`: the
    file's tensors when already read (`path` then only names it in errors); `model_name`: what
    the model is, as errors name it (EncoderSpec.described); `note`: added to a mismatch's
    message (what the file looks like)."""
    path = require_weights(path, model_name)
    state = read_state(path) if state is None else state
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}" for k in expected
                  if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    found = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in
             (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mis_shaped)) if keys]
    if found:
        raise InputError(path, f"weights do not match {model_name}: {', '.join(found)}{note}")
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=on_meta)


def fit_position_grid(state: dict, model: torch.nn.Module, path: str) -> dict:
    """A ViT file whose position embeddings are on another square grid (saved for another image
    size, e.g. a transformers config's 518 px) resampled once to the model's grid, as transformers'
    ViT and DINOv2 models do at every call (bicubic, no antialiasing): the same embedding at the
    model's input size. Anything else that differs is left for the strict load to name."""
    pos, grid = state.get("pos_embed"), getattr(getattr(model, "patch_embed", None), "grid_size", None)
    expected = model.state_dict().get("pos_embed")
    if pos is None or expected is None or grid is None or pos.shape == expected.shape:
        return state
    prefix = expected.shape[1] - grid[0] * grid[1]  # the class (and register) tokens' rows
    side = round((pos.shape[1] - prefix) ** 0.5)
    if pos.ndim != 3 or pos.shape[2] != expected.shape[2] or prefix < 0 or side * side != pos.shape[1] - prefix:
        return state
    from timm.layers import resample_abs_pos_embed

    log.warning("%s: position embeddings on a %d x %d grid, resampled to the model's %d x %d", path, side, side,
                *grid)
    resampled = resample_abs_pos_embed(pos.float(), new_size=list(grid), old_size=[side, side],
                                       num_prefix_tokens=prefix, antialias=False)
    return {**state, "pos_embed": resampled.to(pos.dtype)}


def build_encoder(spec: EncoderSpec) -> torch.nn.Module:
    """A frozen encoder in eval mode, weights loaded as the spec says (a missing weights file is
    named before the model is built). With a weights file the model is built on the meta device
    and takes the file's tensors: a billion-parameter model is neither initialised at random
    first nor held twice."""
    import torch

    if spec.weights != "random":
        state = read_state(require_weights(spec.weights, spec.described))
        layout = transformers_layout(state)
        note = f"; the file is in transformers' {layout} layout ({LAYOUT_HINT[layout]})" if layout else ""
        state = transformers_vit_to_timm(state)
        with torch.device("meta"):
            model = create_model(spec)
        state = fit_position_grid(state, model, spec.weights)
        load_weights(model, spec.weights, spec.described, state, note)
        if any(t.is_meta for t in model.buffers()):
            # a buffer computed at construction, not saved (e.g. Swin's relative position index):
            # build the model for real and copy the same tensors in (the file is read once)
            state = model.state_dict()
            model = create_model(spec)
            load_weights(model, spec.weights, spec.described, state)
    else:
        model = create_model(spec)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


_BUILT: dict[str, torch.nn.Module] = {}  # at most one: the last spec's


def cached_encoder(spec: EncoderSpec) -> torch.nn.Module:
    """`build_encoder`, kept for the next job of the same spec in this process (frozen models are
    shared read-only): for jobs that run inside one long-lived process, one torch step at a time
    (tissuekd.logs.run_in_process). Only the last spec's model is kept: Snakemake's own process,
    whose memory no job's `mem_mb` covers, holds at most one encoder between jobs (a ViT-L's
    weights are 1.2 GB) however many studies and encoders the run has."""
    key = repr(spec)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build_encoder(spec)
    return _BUILT[key]
