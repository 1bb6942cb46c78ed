"""Encoders: timm by name, the pathology presets (UNI, Virchow, Prov-GigaPath, H-optimus), and weights from local
files only."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import REPO
from safetensors.torch import load_file, save_file

from tissuekd.encoders.registry import EncoderSpec, build_encoder, cached_encoder, create_model
from tissuekd.errors import InputError

SMALL = {"model": "mobilenetv3_small_050", "mpp": 0.5}


def _reference_weights(seed: int = 42) -> dict:
    spec = EncoderSpec.from_config("ref", {**SMALL, "weights": "random", "seed": seed})
    return {k: v.contiguous() for k, v in create_model(spec).state_dict().items()}


def test_the_process_keeps_only_the_last_encoder_built_for_in_process_jobs():
    """Jobs inside Snakemake's process reuse the encoder of the job before if it is the same
    spec; another spec's replaces it, so that process (whose memory no job asks for) holds one."""
    from tissuekd.encoders import registry

    first = EncoderSpec.from_config("a", {**SMALL, "weights": "random", "seed": 0})
    other = EncoderSpec.from_config("b", {**SMALL, "weights": "random", "seed": 1})
    model = cached_encoder(first)
    assert cached_encoder(first) is model
    assert cached_encoder(other) is not model
    assert list(registry._BUILT.values()) == [cached_encoder(other)]
    assert cached_encoder(first) is not model  # built again


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_load_from_a_local_file(tmp_path, suffix):
    state = _reference_weights()
    path = tmp_path / f"enc{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = build_encoder(EncoderSpec.from_config("mine", {**SMALL, "weights": str(path), "seed": 0}))
    random_init = build_encoder(EncoderSpec.from_config("rnd", {**SMALL, "weights": "random", "seed": 0}))
    x = torch.rand(2, 3, 224, 224)
    reference = build_encoder(EncoderSpec.from_config("ref", {**SMALL, "weights": "random", "seed": 42}))
    assert torch.allclose(loaded(x), reference(x), atol=1e-5)  # the file's weights, not seed 0's
    assert not torch.allclose(loaded(x), random_init(x), atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_the_files_bytes_not_its_name_say_how_to_read_it(tmp_path):
    """UNI2-h is published as pytorch_model.bin: saved under a .safetensors name (or the reverse)
    it still loads; fp16 weights load as float32; the model is never initialised at random first."""
    state = _reference_weights()
    reference = build_encoder(EncoderSpec.from_config("ref", {**SMALL, "weights": "random", "seed": 42}))
    x = torch.rand(2, 3, 224, 224)
    torch.save(state, tmp_path / "pytorch_model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "model.bin")
    for name, atol in (("pytorch_model.safetensors", 1e-5), ("model.bin", 5e-2)):
        loaded = build_encoder(EncoderSpec.from_config("mine", {**SMALL, "weights": str(tmp_path / name)}))
        assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.parameters()), name
        assert torch.allclose(loaded(x), reference(x), atol=atol), name


def test_a_model_with_buffers_the_file_does_not_hold_loads_and_reads_the_file_once(tmp_path, monkeypatch):
    """Swin computes its relative position index at construction and does not save it: the meta
    build cannot take it from the file, so the model is built for real, from the same tensors."""
    from tissuekd.encoders import registry

    swin = {"model": "swin_tiny_patch4_window7_224", "mpp": 0.5}
    reference = create_model(EncoderSpec.from_config("ref", {**swin, "weights": "random", "seed": 3}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "swin.safetensors")
    reads = []
    monkeypatch.setattr(registry, "read_state", lambda path, read=registry.read_state: reads.append(path) or read(path))
    loaded = build_encoder(EncoderSpec.from_config("mine", {**swin, "weights": str(tmp_path / "swin.safetensors")}))
    assert len(reads) == 1 and not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x = torch.rand(1, 3, 224, 224)
    assert torch.allclose(loaded(x), reference.eval()(x), atol=1e-5)


@pytest.mark.parametrize("content, message", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 2\n", "Git LFS pointer, not the weights"),
    (b"<html>not found</html>", "neither a torch checkpoint .zip or pickle. nor a safetensors file"),
    (None, "holds a Tensor, not a state dict"),
])
def test_a_file_that_is_not_weights_is_named(tmp_path, content, message):
    path = tmp_path / "pytorch_model.bin"
    torch.save(torch.zeros(3), path) if content is None else path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        build_encoder(EncoderSpec.from_config("m", {**SMALL, "weights": str(path)}))
    assert "pytorch_model.bin" in str(err.value)
    with pytest.raises(InputError, match="is a folder: name the weights file in it"):
        build_encoder(EncoderSpec.from_config("m", {**SMALL, "weights": str(tmp_path)}))


def test_missing_weights_file_is_named(tmp_path):
    spec = EncoderSpec.from_config("uni", {"preset": "uni2-h", "weights": str(tmp_path / "uni2-h.safetensors")})
    with pytest.raises(InputError, match="uni2-h.safetensors.*does not exist"):
        build_encoder(spec)


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet.safetensors"
    other = EncoderSpec.from_config("r", {"model": "resnet10t", "weights": "random"})
    save_file({k: v.contiguous() for k, v in create_model(other).state_dict().items()}, path)
    with pytest.raises(InputError, match="do not match architecture mobilenetv3_small_050") as err:
        build_encoder(EncoderSpec.from_config("m", {**SMALL, "weights": str(path)}))
    assert "resnet.safetensors" in str(err.value)
    wider = EncoderSpec.from_config("w", {"model": "mobilenetv3_small_075", "weights": "random"})
    save_file({k: v.contiguous() for k, v in create_model(wider).state_dict().items()}, path)
    with pytest.raises(InputError, match=r"192 with the wrong shape \(e.g. \['blocks.0.0.conv_pw.weight: file "
                                         r"\(16, 16, 1, 1\), model \(8, 16, 1, 1\)'"):
        build_encoder(EncoderSpec.from_config("m", {**SMALL, "weights": str(path)}))


def test_unknown_encoder_name():
    with pytest.raises(InputError, match="unknown encoder 'vit_does_not_exist'"):
        EncoderSpec.from_config("x", {"model": "vit_does_not_exist", "weights": "random"})
    with pytest.raises(InputError, match="unknown preset"):
        EncoderSpec.from_config("x", {"preset": "uni3", "weights": "random"})


def test_uni2h_preset_has_the_published_architecture():
    spec = EncoderSpec.from_config("uni2-h", {"preset": "uni2-h", "weights": "random"})
    with torch.device("meta"):  # 681M parameters: build the graph without allocating them
        model = create_model(spec)
    assert (spec.mpp, spec.input_px) == (0.5, 224)
    assert EncoderSpec.from_config("u", {"preset": "uni2-h", "weights": "w", "input_px": 448}).input_px == 448
    assert model.num_features == 1536 and len(model.blocks) == 24
    assert model.num_reg_tokens == 8 and model.patch_embed.patch_size == (14, 14)
    mlp = model.blocks[0].mlp  # SwiGLUPacked is GluMlp with SiLU gating
    assert type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(681e6, rel=0.01)
    out = model(torch.empty(1, 3, 224, 224, device="meta"))
    assert out.shape == (1, 1536)


@pytest.mark.parametrize(("preset", "params", "registers", "patch", "width", "mean"), [
    ("uni", 303e6, 0, 16, 1024, (0.485, 0.456, 0.406)),
    ("phikon", 85.8e6, 0, 16, 768, (0.485, 0.456, 0.406)),
    ("phikon-v2", 303e6, 0, 16, 1024, (0.485, 0.456, 0.406)),  # its card: 1.21 GB of float32
    ("virchow", 631e6, 0, 14, 2560, (0.485, 0.456, 0.406)),  # class token + mean patch token, 1280 each
    ("virchow2", 632e6, 4, 14, 2560, (0.485, 0.456, 0.406)),
    ("prov-gigapath", 1.135e9, 0, 16, 1536, (0.485, 0.456, 0.406)),  # its demo prints 1,134,953,984
    ("h-optimus-0", 1.13e9, 4, 14, 1536, (0.707223, 0.578729, 0.703617)),
    ("h-optimus-1", 1.13e9, 4, 14, 1536, (0.707223, 0.578729, 0.703617)),
])
def test_the_other_presets_have_the_published_architecture(preset, params, registers, patch, width, mean):
    """As their model cards build them (MahmoodLab/UNI, owkin/phikon and phikon-v2, paige-ai/Virchow and Virchow2,
    prov-gigapath/prov-gigapath, bioptimus/H-optimus-0): sizes, register tokens, normalisation, and
    the embedding the card takes (Virchow's: 2560-d from the tokens)."""
    spec = EncoderSpec.from_config(preset, {"preset": preset, "weights": "random"})
    with torch.device("meta"):
        model = create_model(spec)
    assert (spec.mpp, spec.input_px, spec.mean) == (0.5, 224, mean)
    assert model.num_reg_tokens == registers and model.patch_embed.patch_size == (patch, patch)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, width)
    assert EncoderSpec.from_config("o", {"preset": preset, "weights": "w", "mean": [0.5] * 3}).mean == (0.5,) * 3
    if preset.startswith(("h-optimus", "prov-gigapath")):  # built for 224 px only, as their cards build them
        with pytest.raises(InputError, match=f"config encoders.o: preset {preset} takes 224-px inputs only"):
            EncoderSpec.from_config("o", {"preset": preset, "weights": "w", "input_px": 112})


def test_phikon_weights_in_transformers_layout_embed_as_transformers_does(tmp_path):
    """A ViTModel of Phikon's config (owkin/phikon: ViT-base/16, LayerNorm eps 1e-12, with the
    pooler its checkpoint carries), random weights saved as transformers saves them for the hub:
    the preset reads them into timm's names and gives the card's embedding, last_hidden_state[:, 0]."""
    import transformers  # a test dependency (pyproject's `test` extra)

    config = transformers.ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, image_size=224, patch_size=16, layer_norm_eps=1e-12,
                                    qkv_bias=True)
    torch.manual_seed(0)
    reference = transformers.ViTModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():  # away from the initialisation, so a swapped q/k/v or norm would show
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    reference.save_pretrained(tmp_path / "phikon")  # the hub's layout (encoder.layer.N.attention.attention.query, …)
    weights = tmp_path / "phikon/model.safetensors"
    spec = EncoderSpec.from_config("phikon", {"preset": "phikon", "weights": str(weights)})
    encoder = build_encoder(spec)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(x), expected, rtol=1e-4, atol=1e-4)
    assert (spec.mpp, spec.mean, encoder.num_features) == (0.5, (0.485, 0.456, 0.406), 768)


def test_phikon_v2_weights_in_dinov2_layout_embed_as_transformers_does(tmp_path):
    """A Dinov2Model of Phikon-v2's shape at a smaller width (owkin/phikon-v2: ViT-L/16 by DINOv2,
    no registers, layer scale, LayerNorm eps 1e-6; here 4 blocks of 128), random weights with
    layer scales away from 1 saved as transformers saves them for the hub: the preset reads them
    into timm's names (layer_scale{1,2}.lambda1 -> ls{1,2}.gamma; the mask token dropped) and gives
    the card's embedding, last_hidden_state[:, 0, :], at its 224 px."""
    import transformers

    from tissuekd.encoders.convert import transformers_layout

    config = transformers.Dinov2Config(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4,
                                       image_size=224, patch_size=16, layer_norm_eps=1e-6, layerscale_value=1e-5)
    torch.manual_seed(0)
    reference = transformers.Dinov2Model(config).eval()
    with torch.no_grad():  # the layer scales too, so a dropped or swapped one would show
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(tmp_path / "phikon-v2")
    weights = tmp_path / "phikon-v2/model.safetensors"
    assert transformers_layout(load_file(weights)) == "Dinov2Model"  # the hub's names (layer_scale1.lambda1, …)
    spec = EncoderSpec.from_config("p2", {"preset": "phikon-v2", "weights": str(weights),
                                          "kwargs": {"embed_dim": 128, "depth": 4, "num_heads": 4}})
    encoder = build_encoder(spec)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state[:, 0, :]
        torch.testing.assert_close(encoder(x), expected, rtol=1e-4, atol=1e-4)
    assert (spec.mpp, spec.mean, encoder.num_features) == (0.5, (0.485, 0.456, 0.406), 128)


def test_a_transformers_layout_file_missing_a_projection_is_named(tmp_path):
    import transformers

    from tissuekd.encoders.convert import transformers_vit_to_timm

    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    image_size=224, patch_size=16)
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    state = load_file(tmp_path / "vit/model.safetensors")
    assert "blocks.1.attn.qkv.weight" in transformers_vit_to_timm(state)
    del state["encoder.layer.1.attention.attention.key.weight"]
    save_file(state, tmp_path / "w.safetensors")
    spec = EncoderSpec.from_config("p", {"model": "vit_base_patch16_224", "weights": str(tmp_path / "w.safetensors"),
                                         "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2}})
    with pytest.raises(InputError, match=r"1 missing \(e.g. \['blocks.1.attn.qkv.weight'\]\)"):
        build_encoder(spec)


def test_a_dinov2_file_saved_for_another_image_size_embeds_as_transformers_does_at_224(tmp_path):
    """A config's image_size of 518 (Meta's DINOv2 configs) stores a 32 x 32 position grid at patch
    16; transformers resamples it to 14 x 14 at every 224-px call, the preset once on reading."""
    import transformers

    config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=518,
                                       patch_size=16, layerscale_value=0.5)
    torch.manual_seed(0)
    reference = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        reference.embeddings.position_embeddings.normal_()  # a grid with structure to resample
    reference.save_pretrained(tmp_path / "d518")
    spec = EncoderSpec.from_config("p2", {"preset": "phikon-v2", "weights": str(tmp_path / "d518/model.safetensors"),
                                          "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2}})
    encoder = build_encoder(spec)
    assert encoder.pos_embed.shape == (1, 197, 64)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), reference(pixel_values=x).last_hidden_state[:, 0], rtol=1e-4, atol=1e-4)


def test_a_phikon_file_given_to_the_phikon_v2_preset_is_named_with_its_layout(tmp_path):
    """The mismatch names the preset, lists only what is wrong, and says which layout the file is in."""
    import transformers

    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    image_size=224, patch_size=16)
    transformers.ViTModel(config).save_pretrained(tmp_path / "phikon")
    spec = EncoderSpec.from_config("p2", {"preset": "phikon-v2", "weights": str(tmp_path / "phikon/model.safetensors"),
                                          "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2}})
    with pytest.raises(InputError) as err:
        build_encoder(spec)
    message = str(err.value)
    assert "weights do not match preset phikon-v2 (architecture vit_large_patch16_224): 4 missing" in message
    assert "ls1.gamma" in message and "unexpected" not in message and "wrong shape" not in message
    assert message.endswith("the file is in transformers' ViTModel layout (Phikon's, as preset phikon reads it)")


def test_the_config_schema_lists_every_preset():
    """The schema's enum is what a user's config is validated against before the registry sees it."""
    from tissuekd.encoders.registry import PRESETS

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    entry = schema["properties"]["encoders"]["additionalProperties"]["properties"]["preset"]
    assert sorted(entry["enum"]) == sorted(PRESETS)


def test_virchow2_embedding_is_the_class_token_beside_the_mean_patch_token():
    """On a small model of the same pooling: registers are left out of the mean."""
    spec = EncoderSpec.from_config("v", {"preset": "virchow2", "weights": "random"})
    spec = type(spec)(**{**vars(spec), "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}})
    model = create_model(spec).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        torch.testing.assert_close(model(x), expected)


def test_timm_names_found_are_cached_per_timm_version(tmp_path, monkeypatch):
    """The workflow's parse checks encoder names against timm; a name found once is read from
    the cache after (no timm import: a dry run 6.6 -> 1.8 s); unknown names are never cached."""
    import sys
    from importlib.metadata import version

    cache = tmp_path / "timm_models.txt"
    spec = {"model": "mobilenetv3_small_050", "weights": "random"}
    EncoderSpec.from_config("m", spec, cache=cache)
    with pytest.raises(InputError, match="unknown encoder 'vit_does_not_exist'"):
        EncoderSpec.from_config("x", {"model": "vit_does_not_exist", "weights": "random"}, cache=cache)
    assert cache.read_text().splitlines() == [f"timm {version('timm')} mobilenetv3_small_050"]
    monkeypatch.setitem(sys.modules, "timm", None)  # importing timm now fails: the cache must answer
    assert EncoderSpec.from_config("m", spec, cache=cache).arch == "mobilenetv3_small_050"
    cache.write_text("timm 0.0.1 mobilenetv3_small_050\n")  # another timm version's entry does not count
    with pytest.raises(ImportError):
        EncoderSpec.from_config("m", spec, cache=cache)


def test_the_registry_reads_without_torch_and_a_job_skips_the_timm_check():
    """The workflow's parse reads this module in every job process (a SLURM job re-parses the
    workflow): importing it must not import torch, and check_arch=False must not import timm."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['timm'] = None; import tissuekd.encoders.registry as r; "
            "assert 'torch' not in sys.modules; "
            "s = r.EncoderSpec.from_config('m', {'model': 'any_name', 'weights': 'random'}, check_arch=False); "
            "assert s.arch == 'any_name' and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_encoder_with_random_weights_says_so_in_its_jobs_log(tmp_path, caplog):
    """A user running the demo's encoder on real slides saw only device and precision logged."""
    from tissuekd.compute import CPU
    from tissuekd.encoders.extract import Encoder

    state = _reference_weights()
    save_file(state, tmp_path / "enc.safetensors")
    for weights, warned in (("random", True), (str(tmp_path / "enc.safetensors"), False)):
        spec = EncoderSpec.from_config("mine", {**SMALL, "weights": weights})
        caplog.clear()
        with caplog.at_level("WARNING", logger="tissuekd"):
            Encoder(build_encoder(spec), spec, CPU)
        assert ("has seeded random weights: its features carry no learnt histology" in caplog.text) == warned
