from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cpnn as cp
from cpnn.models import nb_log_prob

from ._synthetic import synthetic_sdata


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_sdata(np.random.default_rng(1), sections=("S1", "S2"))


def test_nb_log_prob_matches_torch():
    x = torch.tensor([0.0, 1.0, 5.0, 40.0])
    mu = torch.tensor([0.5, 2.0, 4.0, 30.0])
    theta = torch.tensor([0.3, 1.0, 10.0, 200.0])
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta)).log_prob(x)
    torch.testing.assert_close(nb_log_prob(x, mu, theta), ref, rtol=1e-4, atol=1e-4)


def test_the_sparse_nb_log_likelihoods_equal_the_dense_one():
    """#28: the deconvolution's and the prototype regression's sparse sums are the head's NB, term for term."""
    from cpnn.models._nb_mixture import _gene_loglik

    rng = np.random.default_rng(0)
    mu = torch.tensor(rng.gamma(1.0, 3.0, size=(200, 30)), dtype=torch.float64)
    theta = torch.tensor(rng.gamma(2.0, 2.0, size=30), dtype=torch.float64)
    x = torch.tensor(rng.negative_binomial(theta.numpy(), (theta / (theta + mu)).numpy()), dtype=torch.float64)
    assert (x == 0).float().mean() > 0.2  # sparse enough for the zero / non-zero split to matter
    dense = (nb_log_prob(x, mu, theta, eps=0.0) + torch.lgamma(x + 1)).sum(0)
    torch.testing.assert_close(_gene_loglik(x, mu, theta), dense, rtol=1e-10, atol=1e-8)


def test_fit_recovers_planted_compositions(synthetic):
    sdata, profiles = synthetic
    table = sdata["table"]
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    model = cp.tl.fit(
        sdata,
        train=["S1"],
        validation=["S2"],
        encoder="handcrafted",
        patch_size_um=32,
        patch_px=32,
        epochs=150,
        lr=3e-3,
        seed=0,
    )
    cp.tl.predict(sdata, model, regions=["S2"])
    props = table.obsm["cpnn_proportions"]
    held = table.obs["section"].to_numpy() == "S2"
    truth = table.obsm["truth"].loc[held]
    r = [np.corrcoef(props.loc[held, t], truth[t])[0, 1] for t in truth.columns]
    assert np.mean(r) > 0.9, r
    # the expression follows: per-gene Pearson of predicted vs planted mean
    mu = truth.to_numpy() @ profiles.to_numpy().T
    pred = table.layers["cpnn"][np.flatnonzero(held)][:, :].toarray()
    pred = pred[:, table.var_names.get_indexer(model.genes)]
    mu = mu[:, profiles.index.get_indexer(model.genes)]
    rg = [np.corrcoef(pred[:, j], mu[:, j])[0, 1] for j in range(mu.shape[1]) if mu[:, j].std() > 0]
    assert np.nanmean(rg) > 0.8


def test_image_choice_uses_transformations(synthetic):
    """The sharpest image covering the spots is chosen, and its transformation is applied."""
    from cpnn.data import region_images

    sdata, _ = synthetic
    table = sdata["table"]
    regions = region_images(sdata, table, np.ones(table.n_obs, bool))
    assert {r.image_key for r in regions} == {"S1_full", "S2_full"}
    s1 = table.obs["section"].to_numpy() == "S1"
    hires = region_images(sdata, table, s1, image_key="S1_hires")[0]
    full = regions[0]
    np.testing.assert_allclose(hires.centers_px * 2, full.centers_px)
    assert hires.um_per_px == pytest.approx(2 * full.um_per_px)


def test_fit_bad_inputs(synthetic):
    _, profiles = synthetic
    fresh = synthetic_sdata(np.random.default_rng(3), n_side=4)[0]
    with pytest.raises(cp.CpnnError, match="select_genes"):
        cp.tl.fit(fresh, encoder="handcrafted")
    cp.pp.select_genes(fresh, n_top_genes=20)
    with pytest.raises(cp.CpnnError, match="build_prototypes"):
        cp.tl.fit(fresh, encoder="handcrafted")
    with pytest.raises(cp.CpnnError, match="selects no spot"):
        cp.tl.fit(fresh, head="direct", train=np.zeros(fresh["table"].n_obs, bool), encoder="handcrafted")
    with pytest.raises(cp.CpnnError, match="head="):
        cp.tl.fit(fresh, head="mlp")
    table = fresh["table"]
    table.var["cpnn_selected"] = False
    table.var.iloc[:30, table.var.columns.get_loc("cpnn_selected")] = True
    cp.pp.build_prototypes(fresh, profiles.iloc[10:])
    assert table.var["cpnn_selected"].sum() == 20
    table.var.iloc[:5, table.var.columns.get_loc("cpnn_selected")] = True  # genes without prototype
    with pytest.raises(cp.CpnnError, match="Panel/prototype mismatch"):
        cp.tl.fit(fresh, encoder="handcrafted")
    table.var["cpnn_selected"] = table.var["cpnn_in_reference"]
    with pytest.raises(cp.CpnnError, match="larger than the image"):
        cp.tl.fit(fresh, encoder="handcrafted", patch_size_um=5000)
    nan = fresh["table"].X.toarray()
    nan[0, 10] = np.nan
    import scipy.sparse as sp

    table.X = sp.csr_matrix(nan)
    with pytest.raises(cp.CpnnError, match="NaN"):
        cp.tl.fit(fresh, encoder="handcrafted")


def test_region_without_image(synthetic):
    import spatialdata as sd

    sdata, _ = synthetic
    table = sdata["table"].copy()
    no_img = sd.SpatialData(shapes=dict(sdata.shapes), tables={"table": table})
    mask = np.ones(table.n_obs, bool)
    from cpnn.data import region_images

    with pytest.raises(cp.CpnnError, match="has no image"):
        region_images(no_img, table, mask)


def test_spots_outside_the_image_are_named(synthetic):
    """29.24: one spot off the image used to be reported as 'the region has no image'."""
    import shapely
    import spatialdata as sd

    from cpnn.data import region_images

    sdata, _ = synthetic
    table = sdata["table"]
    key = next(iter(sdata.shapes))
    shapes = sdata.shapes[key]
    moved = shapes.copy()
    moved.geometry = [shapely.Point(1e6, 1e6) if i == 0 else g for i, g in enumerate(shapes.geometry)]
    other = sd.SpatialData(
        images=dict(sdata.images), shapes={**dict(sdata.shapes), key: moved}, tables={"table": table}
    )
    mask = (table.obs[table.uns["spatialdata_attrs"]["region_key"]].astype(str) == key).to_numpy()
    first = table.obs_names[mask][table.obs[table.uns["spatialdata_attrs"]["instance_key"]].to_numpy()[mask]
                                  == shapes.index[0]]  # fmt: skip
    with pytest.raises(cp.CpnnError, match=rf"1 of {int(mask.sum())} selected spots lie outside image .*{first[0]}"):
        region_images(other, table, mask)


def test_real_her2st_fit_predict_save_load(her2st_all, cid4465, tmp_path):
    sdata = her2st_all
    table = sdata["table"]
    cp.pp.select_genes(sdata, n_top_genes=50)
    cp.pp.build_prototypes(sdata, cid4465, cell_type_key="celltype_major", method="mean")
    model = cp.tl.fit(
        sdata, train=["C2", "C3", "C4", "C5"], validation=["C6"], encoder="handcrafted", epochs=20, seed=0
    )
    assert 720 < table.uns["cpnn"]["fit"]["n_train"] <= 187 + 180 + 184 + 181  # spots without panel counts are left out
    assert len(table.uns["cpnn"]["history"]["val_loss"]) == 20 or table.uns["cpnn"]["fit"]["stopped_early"]
    cp.tl.predict(sdata, model, regions=["B4"])
    props = table.obsm["cpnn_proportions"]
    b4 = table.obs["section"].to_numpy() == "B4"
    assert isinstance(props, pd.DataFrame) and list(props.columns) == model.cell_types
    p = props.loc[b4].to_numpy()
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert props.loc[~b4].isna().all().all()
    layer = table.layers["cpnn"]
    assert layer.shape == table.shape and layer[np.flatnonzero(b4)].nnz > 0
    panel = table.var_names.get_indexer(model.genes)
    assert np.isnan(layer[np.flatnonzero(~b4)][:, panel].toarray()).all()  # not predicted: NaN, as in obsm
    df = cp.tl.evaluate(sdata)
    assert "spearman_B4" in df and df.shape[0] == len(model.genes)
    # save -> load -> predict reproduces exactly
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = cp.CPNN.load(path)
    cp.tl.predict(sdata, loaded, regions=["B4"], key_added="again")
    np.testing.assert_array_equal(table.layers["again"].toarray(), layer.toarray())
    np.testing.assert_array_equal(table.obsm["again_proportions"].to_numpy(), props.to_numpy())


def test_same_seed_same_result(synthetic):
    sdata, profiles = synthetic
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    a = cp.tl.fit(sdata, train=["S1"], encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=5, seed=3)
    b = cp.tl.fit(sdata, train=["S1"], encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=5, seed=3)
    for (k, v), (_, w) in zip(a.head.state_dict().items(), b.head.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_direct_head_and_finetune(synthetic):
    sdata, profiles = synthetic
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    direct = cp.tl.fit(
        sdata, head="direct", train=["S1"], encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=10
    )
    cp.tl.predict(sdata, direct, regions=["S2"], key_added="direct")
    assert "direct_proportions" not in sdata["table"].obsm
    assert sdata["table"].layers["direct"].nnz > 0
    ft = cp.tl.fit(
        sdata,
        train=["S1"],
        encoder="resnet18",
        finetune=True,
        patch_size_um=32,
        patch_px=32,
        epochs=1,
        batch_size=64,
        hidden=(32,),
    )
    assert ft.config["finetune"] and "finetuned" in ft.config["encoder_config"]
    cp.tl.predict(sdata, ft, regions=["S2"], key_added="ft")
    assert np.isfinite(sdata["table"].obsm["ft_proportions"].dropna().to_numpy()).all()


def test_timm_encoder_embed(her2st_all):
    table = her2st_all["table"]
    spots = np.zeros(table.n_obs, bool)
    spots[:16] = True
    cp.pp.embed(her2st_all, encoder="resnet18", spots=spots, batch_size=8)
    z = table.obsm["cpnn_embedding"]
    assert z.shape == (table.n_obs, 512)
    assert np.isfinite(z[:16]).all() and np.isnan(z[16:]).all()
    assert table.uns["cpnn"]["embeddings"]["cpnn_embedding"]["config"]["encoder"] == "resnet18"
    with pytest.raises(cp.CpnnError, match="not a timm architecture"):
        cp.pp.embed(her2st_all, encoder="no_such_net", spots=spots)


def test_encoder_from_local_weights(tmp_path):
    """encoder_weights= loads a local checkpoint into the timm architecture (no hub access)."""
    import timm

    from cpnn.models import make_encoder

    torch.manual_seed(7)
    src = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    enc = make_encoder("resnet18", encoder_weights=path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(enc.backbone.state_dict()[k], v)
    with pytest.raises(cp.CpnnError, match="not a file"):
        make_encoder("resnet18", encoder_weights=tmp_path / "missing.pth")
    with pytest.warns(FutureWarning, match=r"make_encoder\(weights=\) is now encoder_weights="):
        old = make_encoder("resnet18", weights=path)  # the 0.2 name still works for one release
    torch.testing.assert_close(old.backbone.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])
