"""Foundation-model encoders, offline: checkpoints in every form users meet, strict loading, normalisation,
input size, token rules, user modules, head-only model files, and what happens without network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import cpnn as cp
from cpnn.models import PRESETS, TimmEncoder, make_encoder
from cpnn.models.encoders import default_input_px

from ._synthetic import synthetic_sdata

TINY = {"img_size": 32, "patch_size": 8}  # a ViT-Tiny small enough for CPU tests


def _vit(**kw):
    torch.manual_seed(3)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**TINY, **kw})


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("form", ["pytorch_model.bin", "safetensors", "hub folder", "model. prefix", "wrapped"])
def test_checkpoints_in_every_form_load_strictly(tmp_path, form):
    src = _vit()
    state = src.state_dict()
    if form == "pytorch_model.bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    elif form == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "hub folder":
        path = tmp_path / "hub"
        path.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
        config = {
            "architecture": "vit_tiny_patch16_224",
            "model_args": {**TINY, "num_classes": 0},
            "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "input_size": [3, 32, 32]},
        }
        (path / "config.json").write_text(json.dumps(config))
    elif form == "model. prefix":
        path = tmp_path / "prefixed.pth"
        torch.save({f"model.{k}": v for k, v in state.items()}, path)
    else:
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": state, "epoch": 3}, path)
    kwargs = {} if form == "hub folder" else TINY
    enc = TimmEncoder("vit_tiny_patch16_224", weights=path, kwargs=kwargs)
    _same(enc.backbone, src)
    if form == "hub folder":  # normalisation and input size come from the folder's config
        np.testing.assert_allclose(enc.mean.ravel().numpy(), [0.1, 0.2, 0.3], rtol=1e-6)
        np.testing.assert_allclose(enc.std.ravel().numpy(), [0.4, 0.5, 0.6], rtol=1e-6)
        assert enc.input_px == 32 and default_input_px("vit_tiny_patch16_224", path) == 32


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "vit.bin"
    torch.save(_vit().state_dict(), path)
    with pytest.raises(cp.CpnnError, match=r"does not fit encoder='resnet18'.*not in the file.*not in the model"):
        make_encoder("resnet18", encoder_weights=path)


@pytest.mark.parametrize(("kw", "names"), [({"init_values": 1e-5}, "ls1.gamma"), ({"reg_tokens": 4}, "reg_token")])
def test_layerscale_and_register_tokens_keep_every_parameter(tmp_path, kw, names):
    """A UNI-style checkpoint (LayerScale) or one with register tokens never drops them silently."""
    src = _vit(**kw)
    path = tmp_path / "w.bin"
    torch.save(src.state_dict(), path)
    with pytest.raises(cp.CpnnError, match=names):
        TimmEncoder("vit_tiny_patch16_224", weights=path, kwargs=TINY)  # the plain architecture lacks them
    enc = TimmEncoder("vit_tiny_patch16_224", weights=path, kwargs={**TINY, **kw})
    _same(enc.backbone, src)


def test_input_size_and_token_rules():
    assert default_input_px("vit_small_patch14_dinov2") == 518
    assert default_input_px("resnet18") == 224 and default_input_px("conch") == 448
    with pytest.raises(cp.CpnnError, match=r"takes 32 px inputs only.*dynamic_img_size"):
        TimmEncoder("vit_tiny_patch16_224", kwargs=TINY, patch_px=48)
    TimmEncoder("vit_tiny_patch16_224", kwargs={**TINY, "dynamic_img_size": True}, patch_px=48)
    torch.manual_seed(0)
    enc = TimmEncoder("vit_tiny_patch16_224", kwargs={**TINY, "reg_tokens": 4}, token="cls+mean").eval()
    x = torch.rand(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, 2 * 192) and enc.out_dim == 384
    tokens = enc.backbone.forward_features((x - enc.mean) / enc.std)  # 1 class + 4 register + 16 patch tokens
    torch.testing.assert_close(z, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1))


def test_presets_follow_their_model_cards():
    uni, uni2, virchow, hopt = PRESETS["uni"], PRESETS["uni2-h"], PRESETS["virchow2"], PRESETS["h-optimus-0"]
    assert uni.hub == "hf-hub:MahmoodLab/UNI" and uni.kwargs["init_values"] == 1e-5 and uni.dim == 1024
    assert (
        uni2.kwargs["reg_tokens"] == 8 and uni2.kwargs["mlp_layer"] == "timm.layers.SwiGLUPacked" and uni2.dim == 1536
    )
    assert virchow.token == "cls+mean" and virchow.dim == 2560
    assert hopt.mean == (0.707223, 0.578729, 0.703617) and PRESETS["conch"].input_px == 448
    assert uni.mean == (0.485, 0.456, 0.406)  # ImageNet statistics, not timm's 0.5 for a plain ViT-L


def test_offline_hub_names_say_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cp.CpnnError, match=r"could not be fetched.*weights=.*HF_TOKEN"):
        make_encoder("uni", pretrained=True)
    with pytest.raises(cp.CpnnError, match="could not be fetched"):
        make_encoder("hf-hub:someone/some-model", pretrained=True)


def test_a_random_encoder_warns_once(cpnn_log):
    from cpnn.models.encoders import _timm

    _timm._warned_random.discard("resnet10t")
    make_encoder("resnet10t")
    make_encoder("resnet10t")
    assert cpnn_log().count("has random weights") == 1


@pytest.fixture(scope="module")
def world():
    s, profiles = synthetic_sdata(np.random.default_rng(12), n_side=6, sections=("S1", "S2"))
    cp.pp.select_genes(s, n_top_genes=30)
    cp.pp.build_prototypes(s, profiles)
    return s


FIT = {"patch_size_um": 32, "epochs": 3, "seed": 0, "hidden": (16,), "context_um": 0}


def test_a_frozen_pretrained_encoder_is_saved_as_its_identity(world, tmp_path):
    weights = tmp_path / "vit.bin"
    torch.save(_vit().state_dict(), weights)
    model = cp.tl.fit(
        world, train=["S1"], encoder="vit_tiny_patch16_224", encoder_kwargs=TINY, encoder_weights=weights, **FIT
    )
    assert model.config["encoder_config"]["patch_px"] == 32  # the encoder's own input size
    cp.tl.predict(world, model, regions=["S2"], key_added="vit")
    path = tmp_path / "m.pt"
    model.save(path)
    whole = tmp_path / "whole.pt"
    model.save(whole, encoder_weights=True)
    assert path.stat().st_size < whole.stat().st_size / 2  # the head only, not the encoder's weights
    again = cp.CPNN.load(path)  # the recorded file is still there
    _same(again.encoder, model.encoder)
    other = tmp_path / "other.bin"
    torch.save(_vit(init_values=None).state_dict() | {"cls_token": torch.zeros(1, 1, 192)}, other)
    with pytest.raises(cp.CpnnError, match="is not the file this model was trained with"):
        cp.CPNN.load(path, encoder_weights=other)
    moved = tmp_path / "moved.bin"
    weights.rename(moved)
    with pytest.raises(cp.CpnnError, match=r"saved without its encoder's weights.*encoder_weights="):
        cp.CPNN.load(path)
    # the 0.2 name still works for one release
    with pytest.warns(FutureWarning, match=r"CPNN.load\(weights=\) is now encoder_weights="):
        again = cp.CPNN.load(path, weights=moved)
    with pytest.raises(cp.CpnnError, match="pass encoder_weights= only"):
        cp.CPNN.load(path, weights=moved, encoder_weights=moved)
    cp.tl.predict(world, again, regions=["S2"], key_added="vit2")
    np.testing.assert_allclose(
        world["table"].layers["vit2"].toarray(), world["table"].layers["vit"].toarray(), rtol=1e-5
    )


def test_a_custom_module_encoder_fits_predicts_and_reloads(world, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = cp.tl.fit(world, train=["S1"], encoder=module, patch_px=32, **FIT)
    cp.tl.predict(world, model, regions=["S2"], key_added="mod")
    assert world["table"].obsm["mod_proportions"].dropna().shape == (36, 3)
    model.save(tmp_path / "mod.pt")
    again = cp.CPNN.load(tmp_path / "mod.pt", encoder=module)
    cp.tl.predict(world, again, regions=["S2"], key_added="mod2")
    np.testing.assert_allclose(world["table"].layers["mod2"].toarray(), world["table"].layers["mod"].toarray())
    changed = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(cp.CpnnError, match="not the module this model was trained with"):
        cp.CPNN.load(tmp_path / "mod.pt", encoder=changed)

    # a callable works as well (no weights to fine-tune)
    def mean_colour(x):
        return x.mean((2, 3))

    fitted = cp.tl.fit(world, train=["S1"], encoder=mean_colour, patch_px=32, **FIT)
    assert fitted.config["in_dim"] == 3
    with pytest.raises(cp.CpnnError, match="no weights to fine-tune"):
        cp.tl.fit(world, train=["S1"], encoder=mean_colour, finetune=True, patch_px=32, **FIT)


def test_a_module_encoder_with_a_wrong_output_is_named(world):
    """29.19: N-1 rows gave 'shape mismatch', NaN gave TrainingDiverged advising a lower lr."""

    def short(x):
        return x.mean((2, 3))[1:]

    def broken(x):
        return x.mean((2, 3)) * float("nan")

    with pytest.raises(cp.CpnnError, match=r"returned \d+ rows for a batch of \d+ patches"):
        cp.tl.fit(world, train=["S1"], encoder=short, patch_px=32, **FIT)
    with pytest.raises(cp.CpnnError, match=r"NaN or infinite embeddings for \d+ of \d+ patches"):
        cp.tl.fit(world, train=["S1"], encoder=broken, patch_px=32, **FIT)


def test_an_embedding_made_once_serves_fits_with_any_seed(world):
    """The seed is part of an embedding's identity only for a randomly initialised encoder."""
    cp.pp.embed(world, encoder="handcrafted", patch_size_um=32, patch_px=32, key_added="z")
    table = world["table"].copy()  # no images: only the cache can serve
    for seed in (0, 1, 7):
        model = cp.tl.fit(
            table, train=["S1"], encoder="handcrafted", embedding_key="z", patch_px=32, **{**FIT, "seed": seed}
        )
        assert model.config["encoder_config"]["seed"] == 0
    kw = {"pretrained": False, "patch_size_um": 32, "patch_px": 32}
    a = cp.models.encoder_config("resnet18", weights=None, seed=1, **kw)
    b = cp.models.encoder_config("resnet18", weights=None, seed=2, **kw)
    assert a != b  # a random initialisation does depend on the seed
    from cpnn.models.encoders import same_embedding

    assert not same_embedding(a, b)
    assert same_embedding({**a, "pretrained": True}, {**b, "pretrained": True})
