import argparse
import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cadyq import checkpoint
from cadyq.errors import CadyqError
from cadyq.quant import all_quantizers
from cadyq.train.cli import add_train_arguments, run_train
from cadyq.train.trainer import TrainConfig, Trainer

TINY = {"n_feats": 8, "n_resblocks": 2, "res_scale": 1.0}


def _photo(seed, h, w):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def cfg(tmp, out, **kw):
    base = dict(data=str(tmp["train"]), backbone="edsr", scale=2, arch=TINY, patch=12, batch=4, iters=4,
                workers=0, val=str(tmp["val"]), val_every=2, log_every=1, out=str(out), progress=False, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for i in range(3):
        Image.fromarray(_photo(i, 48, 56)).save(root / "train" / f"t{i}.png")
    Image.fromarray(_photo(7, 40, 40)).save(root / "val" / "v0.png")
    tmp = {"train": root / "train", "val": root / "val", "root": root}
    r32 = Trainer(cfg(tmp, root / "fp32", method="fp32")).train()
    rp = Trainer(cfg(tmp, root / "pams8", method="pams8", init=str(root / "fp32" / "best.safetensors"),
                     observe_batches=2, lr=1e-4)).train()
    tmp.update(fp32=r32, pams8=rp)
    return tmp


def test_fp32_and_pams8_runs_write_their_files(runs):
    for name, method, fqr in (("fp32", "fp32", 32.0), ("pams8", "pams8", 8.0)):
        out = runs["root"] / name
        assert {"config.json", "train.csv", "val.csv", "last.safetensors", "best.safetensors", "last_state.pt"} <= {
            p.name for p in out.iterdir()}
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        meta = checkpoint.read_metadata(out / "last.safetensors")
        assert meta["method"] == method and meta["extra"]["iteration"] == 4 and meta["arch"]["n_feats"] == 8
        val = rows(out / "val.csv")
        assert [int(r["iter"]) for r in val] == [2, 4]
        assert all(float(r["fqr"]) == fqr for r in val)
        assert float(val[0]["bicubic_psnr"]) > 20
        assert len(rows(out / "train.csv")) == 4
        best = checkpoint.read_metadata(out / "best.safetensors")["extra"]
        assert best["val"]["psnr"] == pytest.approx(max(float(r["psnr"]) for r in val), abs=1e-4)
    assert rows(runs["root"] / "fp32" / "train.csv")[-1]["loss"] < rows(runs["root"] / "fp32" / "train.csv")[0]["loss"]


def test_pams8_warm_start_sets_alphas(runs):
    model = checkpoint.load(runs["root"] / "pams8" / "last.safetensors")
    alphas = [float(q.alpha.detach().flatten()[0]) for q in all_quantizers(model)]
    assert alphas and all(abs(a - 10.0) > 1e-3 for a in alphas)


def test_cadyq_from_pams8_keeps_alphas_and_uses_it_as_teacher(runs, tmp_path):
    init = runs["root"] / "pams8" / "last.safetensors"
    t = Trainer(cfg(runs, tmp_path / "c", method="cadyq", init=str(init)))
    assert t.cfg.teacher == str(init) and t.distiller is not None
    src = checkpoint.load(init).state_dict()
    for name, v in t.model.state_dict().items():
        if name.endswith("alpha"):
            assert torch.allclose(v, src[name].expand_as(v)), name
    assert {g["name"] for g in t.optimizer.param_groups} == {"net", "alpha", "selector"}
    assert Trainer(cfg(runs, tmp_path / "d", method="cadyq", init=str(init), kd=False)).distiller is None


def test_resume_continues_exactly(runs, tmp_path):
    init = str(runs["root"] / "pams8" / "last.safetensors")
    kw = dict(method="cadyq", init=init, w_bit=1e-2, w_bit_step=1e-2, w_bit_every=2, decay=3, val_every=3,
              log_every=1, lr=1e-3, selector_lr=1e-2)
    full = Trainer(cfg(runs, tmp_path / "full", iters=6, **kw)).train()
    assert full.iteration == 6 and not full.interrupted
    Trainer(cfg(runs, tmp_path / "part", iters=3, **kw)).train()
    res = Trainer(cfg(runs, tmp_path / "part", iters=6, resume=True, **kw)).train()
    assert res.iteration == 6
    a, b = rows(tmp_path / "full" / "train.csv"), rows(tmp_path / "part" / "train.csv")
    assert [r["iter"] for r in a] == [r["iter"] for r in b] == [str(i) for i in range(1, 7)]
    for ra, rb in zip(a, b):
        for k in ("loss", "l1", "bit", "kd", "w_bit", "lr", "fqr"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6, abs=1e-9), (ra["iter"], k)
    assert float(a[-1]["w_bit"]) > float(a[0]["w_bit"])  # the schedule moved, and resumed with the iteration
    sa = checkpoint.load(tmp_path / "full" / "last.safetensors").state_dict()
    sb = checkpoint.load(tmp_path / "part" / "last.safetensors").state_dict()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6), k
    assert [r["iter"] for r in rows(tmp_path / "part" / "val.csv")] == ["3", "6"]


def test_ctrl_c_saves_last_and_resumes(runs, tmp_path):
    def interrupt(trainer, terms):
        if trainer.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "r"
    t = Trainer(cfg(runs, out, method="fp32", iters=8, val_every=100))
    res = t.train(callback=interrupt)
    assert res.interrupted and res.iteration == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert state["iteration"] == 3
    assert checkpoint.read_metadata(out / "last.safetensors")["extra"]["iteration"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(CadyqError, match="--resume"):
        Trainer(cfg(runs, out, method="fp32", iters=8))
    with pytest.raises(CadyqError, match="batch"):
        Trainer(cfg(runs, out, method="fp32", iters=8, batch=2, resume=True))
    res = Trainer(cfg(runs, out, method="fp32", iters=8, val_every=100, resume=True)).train()
    assert res.iteration == 8 and not res.interrupted
    assert [int(r["iter"]) for r in rows(out / "train.csv")] == list(range(1, 9))


def test_plain_bit_loss_and_w_bit_lower_fqr(runs, tmp_path):
    init = str(runs["root"] / "pams8" / "last.safetensors")
    t = Trainer(cfg(runs, tmp_path / "b", method="cadyq", init=init, iters=8, bit_loss="plain", w_bit=0.5,
                    selector_lr=0.05, val_every=8, kd=False))
    res = t.train()
    assert res.last_val["fqr"] < 8.0
    assert float(rows(tmp_path / "b" / "train.csv")[-1]["fqr"]) < 8.0


def test_cli_arguments_and_run(runs, tmp_path):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--method", "fp32", "--data", str(runs["train"]), "--scale", "2", "--n-feats", "8",
                              "--n-resblocks", "1", "--patch", "12", "--batch", "2", "--iters", "2", "--workers",
                              "0", "--out", str(tmp_path / "cli"), "--no-progress", "--val", str(runs["val"])])
    assert run_train(args) == 0
    meta = checkpoint.read_metadata(tmp_path / "cli" / "last.safetensors")
    assert meta["arch"]["n_resblocks"] == 1 and meta["scale"] == 2
    d = parser.parse_args(["--data", "x"])
    assert d.method == "cadyq" and d.bits is None and d.val_every == 1000 and d.kd
    r = TrainConfig(data="x").resolved()
    assert (r.backbone, r.scale, r.iters, r.batch, r.patch, r.lr, r.alpha_lr, r.selector_lr, r.decay) == (
        "edsr", 4, 300_000, 16, 48, 1e-4, 1e-2, 1e-4, 150_000)
    assert r.arch["n_feats"] == 64 and r.teacher is None
    rc = TrainConfig(data="x", backbone="carn").resolved()
    assert (rc.iters, rc.decay, rc.selector_lr) == (600_000, 400_000, 1e-3)


def test_init_checkpoint_decides_architecture(runs):
    init = str(runs["root"] / "fp32" / "last.safetensors")
    r = TrainConfig(data="x", method="pams8", init=init).resolved()
    assert (r.backbone, r.scale, r.arch["n_feats"]) == ("edsr", 2, 8)
    with pytest.raises(CadyqError, match="scale"):
        TrainConfig(data="x", method="pams8", init=init, scale=4).resolved()


def test_python_m_cadyq_train_help():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-m", "cadyq", "train", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--resume" in p.stdout and "--w-bit" in p.stdout


def test_warm_start_leaves_batchnorm_statistics(runs, tmp_path):
    from cadyq import create_model, save

    fp = create_model("srresnet", 2, n_resblocks=1, n_feats=8)
    with torch.no_grad():
        for m in fp.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    save(fp.eval(), tmp_path / "fp.safetensors")
    t = Trainer(cfg(runs, tmp_path / "p8", method="pams8", backbone="srresnet", arch={}, init=str(tmp_path / "fp.safetensors"),
                    observe_batches=2, iters=1))
    own = t.model.state_dict()
    stats = [k for k in fp.state_dict() if "running_" in k]
    assert stats
    for k in stats:
        assert torch.equal(fp.state_dict()[k], own[k]), k


def test_frozen_gdq_controller_decides_as_at_inference(runs, tmp_path):
    """selector_lr 0 fine-tunes an allocation: the controller stays as written and its training-mode decisions are
    the argmax (no Gumbel sampling), so the weights learn the bits that inference will choose."""
    init = str(runs["root"] / "pams8" / "last.safetensors")
    t = Trainer(cfg(runs, tmp_path / "g", method="gdq", bits=(4, 5, 6, 8), mode="tile", init=init, selector_lr=0.0,
                    iters=2, val=None))
    with torch.no_grad():  # a controller whose three logits are close for every tile: Gumbel noise would flip them
        t.model.gdq.gbc.weight.normal_(0, 1e-3)
        t.model.gdq.gbc.bias.copy_(torch.tensor([0.0, 0.01, 0.02]))
    before = {k: v.clone() for k, v in t.model.gdq.state_dict().items()}
    optimized = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in t.model.gdq.parameters()}
    head = torch.randn(16, 8, 12, 12)
    entropy = torch.full((16,), 9.0)
    t.model.train()
    k_train = [t.model.gdq.decide(head, entropy)[1] for _ in range(5)]
    t.model.eval()
    k_eval = t.model.gdq.decide(head, entropy)[1]
    assert all(torch.equal(k, k_eval) for k in k_train)
    t.train()
    assert all(torch.equal(v, t.model.gdq.state_dict()[k]) for k, v in before.items())
    t.model.gdq.gbc.requires_grad_(True)  # a trained controller samples
    t.model.train()
    assert any(not torch.equal(t.model.gdq.decide(head, entropy)[1], k_eval) for _ in range(5))
