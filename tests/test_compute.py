"""Precision per device: what `auto` picks, and that the choice reaches the encoder and the models."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import he_image

from tissuekd import compute
from tissuekd.compute import Compute, resolve, resolve_precision
from tissuekd.encoders.extract import Encoder
from tissuekd.encoders.registry import EncoderSpec, build_encoder
from tissuekd.io.wsi import open_slide
from tissuekd.niche.features import extract_cell_features
from tissuekd.spatial.crops import CropGeometry, iter_crop_batches

SPEC = EncoderSpec.from_config("demo", {"model": "mobilenetv3_small_100", "mpp": 0.5, "weights": "random"})
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_isa_cap(monkeypatch):
    """These tests say what the CPU reports; a cap in the caller's environment would override it."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def _cpu_reports(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"),
                         [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_on_the_cpu_uses_bf16_only_where_it_is_native(monkeypatch, avx512_bf16, amx, expected):
    _cpu_reports(monkeypatch, avx512_bf16, amx)
    precision, why = resolve_precision(CPU, "auto")
    assert precision == expected
    assert why.startswith("auto:")


def test_auto_keeps_the_small_models_in_fp32_on_the_cpu_even_with_native_bf16(monkeypatch):
    """bf16 autocast slowed the niche teacher 2.1x on an AMX CPU; on CUDA the models follow the device."""
    _cpu_reports(monkeypatch, True, True)
    assert resolve_precision(CPU, "auto", workload="model")[0] == "fp32"
    assert resolve_precision(CPU, "auto", workload="encoder")[0] == "bf16"
    assert resolve_precision(CPU, "bf16", workload="model")[0] == "bf16"  # asked for, kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    assert resolve_precision(torch.device("cuda"), "auto", workload="model")[0] == "bf16"
    with pytest.raises(ValueError, match="workload"):
        resolve_precision(CPU, "auto", workload="decoder")


def test_cpu_flags_are_the_fallback_without_torchs_probe(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(compute, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert resolve_precision(CPU)[0] == "fp32"
    monkeypatch.setattr(compute, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert resolve_precision(CPU) == ("bf16", "auto: native bf16 (/proc/cpuinfo flags: avx512_bf16)")


@pytest.mark.parametrize(("cap", "expected"), [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_AMX", "bf16")])
def test_a_onednn_isa_cap_below_bf16_keeps_auto_in_fp32(monkeypatch, cap, expected):
    _cpu_reports(monkeypatch, True, True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    precision, why = resolve_precision(CPU, "auto")
    assert precision == expected
    assert (cap in why) == (expected == "fp32")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_follows_the_devices_capability(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    assert resolve_precision(torch.device("cuda"), "auto")[0] == expected


def test_an_explicit_precision_is_kept_and_an_unknown_one_refused(monkeypatch):
    _cpu_reports(monkeypatch, False, False)
    assert resolve_precision(CPU, "bf16") == ("bf16", "set in the config")
    with pytest.raises(ValueError, match="fp64"):
        resolve_precision(CPU, "fp64")


def test_resolve_logs_device_precision_and_why(monkeypatch, caplog):
    _cpu_reports(monkeypatch, False, False)
    with caplog.at_level("INFO"):
        run = resolve("cpu", "auto")
    assert run == Compute(CPU, "fp32", run.reason)
    assert "device cpu, precision fp32 (auto: bf16 would be emulated" in caplog.text


def test_fp32_and_bf16_features_agree(ingested, demo_slide):
    """The same 16 crops through the same weights: per-row cosine >= 0.99 between precisions."""
    cells = pd.read_parquet(ingested["cells"]).iloc[:16]
    with open_slide(he_image(demo_slide)) as slide:
        geometry = CropGeometry.for_slide(slide, 0.25, SPEC.mpp, 224)
        _, crops = next(iter_crop_batches(slide, cells[["x_he", "y_he"]].to_numpy(), geometry, batch_size=16))
    model = build_encoder(SPEC)
    fp32 = Encoder(model, SPEC, Compute(CPU, "fp32"))(crops)
    bf16 = Encoder(model, SPEC, Compute(CPU, "bf16"))(crops)
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert cosine.min() >= 0.99


def test_the_configured_precision_reaches_the_encoder(ingested, demo_slide, tmp_path, monkeypatch):
    """`auto` on a CPU that reports native bf16 runs the encoder in bf16, and the file says so."""
    _cpu_reports(monkeypatch, True, False)
    seen = []
    real_call = Encoder.__call__
    monkeypatch.setattr(Encoder, "__call__", lambda self, crops: seen.append(self.compute.precision)
                        or real_call(self, crops))
    cells = pd.read_parquet(ingested["cells"]).iloc[:40]
    cells.to_parquet(tmp_path / "cells.parquet")
    out = tmp_path / "f.h5"
    extract_cell_features(str(tmp_path / "cells.parquet"), str(ingested["slide"]), str(he_image(demo_slide)), SPEC,
                          str(out), batch_size=20, device="cpu", precision="auto", progress=False)
    assert seen == ["bf16", "bf16"]
    with h5py.File(out) as h5:
        assert h5["coords"].attrs["precision"] == "bf16"


def test_model_training_and_prediction_run_under_the_chosen_precision(monkeypatch):
    """fit_student / fit_nolan / predict_logits enter the Compute's autocast (bf16 here)."""
    from tissuekd.niche.train import NolanConfig, StudentConfig, fit_nolan, fit_student, predict_logits
    from tissuekd.spatial.neighborhoods import build_neighborhoods

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (120, 2))
    x = torch.from_numpy(rng.normal(size=(120, 8)).astype(np.float32))
    cells = np.arange(120)
    nb = build_neighborhoods(xy, cells, 30.0, 8)
    dtypes = []  # output dtype of every Linear layer called
    bf16 = Compute(CPU, "bf16")
    real_linear = torch.nn.Linear.forward

    def spy(self, inp):
        out = real_linear(self, inp)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    t = fit_nolan(x, nb, torch.from_numpy(cells), 3, NolanConfig(epochs=1, batch_size=64), progress=False,
                  compute=bf16)
    assert torch.bfloat16 in dtypes
    dtypes.clear()
    logits = predict_logits(t, x, nb, torch.from_numpy(cells), 0.1, compute=bf16)
    assert logits.dtype == torch.float32 and torch.bfloat16 in dtypes
    dtypes.clear()
    fit_student(x, nb, torch.from_numpy(cells), logits, StudentConfig(epochs=1, batch_size=64), progress=False,
                compute=bf16)
    assert torch.bfloat16 in dtypes
    dtypes.clear()
    fit_student(x, nb, torch.from_numpy(cells), logits, StudentConfig(epochs=1, batch_size=64), progress=False)
    assert dtypes and torch.bfloat16 not in dtypes  # the default is full precision


@pytest.mark.parametrize("step", ["train_teacher", "train_student", "histology_nolan", "train_method",
                                  "extract_patch_features"])
def test_every_model_step_resolves_the_precision_it_is_given(monkeypatch, step):
    """The rules pass `precision`; each step hands it to compute.resolve before doing anything."""
    import tissuekd.niche.steps as niche_steps
    import tissuekd.survival.patches as patches
    import tissuekd.survival.steps as survival_steps

    class Resolved(Exception):
        pass

    def fake_resolve(device="auto", precision="auto", threads=None, workload="encoder"):
        raise Resolved(f"{precision} {workload}")

    monkeypatch.setattr(compute, "resolve", fake_resolve)
    calls = {
        "train_teacher": lambda: niche_steps.train_teacher("l", "c", "r", 3, None, "m", "o", precision="fp16"),
        "train_student": lambda: niche_steps.train_student("f", "c", "s", "r", "t", 3, None, "m", "o",
                                                           precision="fp16"),
        "histology_nolan": lambda: niche_steps.histology_nolan("f", "c", "s", "r", 3, None, "o", precision="fp16"),
        "train_method": lambda: survival_steps.train_method("pathology", "p", "r", "m", "o", train={},
                                                            precision="fp16"),
        "extract_patch_features": lambda: patches.extract_patch_features("p", "i", SPEC, "o", precision="fp16"),
    }
    workload = "encoder" if step == "extract_patch_features" else "model"
    with pytest.raises(Resolved, match=f"fp16 {workload}"):
        calls[step]()
