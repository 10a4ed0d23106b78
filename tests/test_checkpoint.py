import json
import re
import warnings

import pytest
import torch
from conftest import tiny

import cadyq
from cadyq import checkpoint, create_model, quantize
from cadyq.errors import CheckpointError
from cadyq.quant import dynamic_quantizers, observe


@pytest.mark.parametrize("name", ["edsr", "srresnet", "carn", "idn"])
@pytest.mark.parametrize("method", ["fp32", "pams8", "cadyq"])
def test_round_trip(name, method, tmp_path, photo_tiles):
    m = quantize(tiny(name), method)
    with torch.no_grad():
        if method != "fp32":
            with observe(m):
                m(photo_tiles[:4])
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "m.safetensors"
    cadyq.save(m, path)
    m2 = cadyq.load(path)
    meta = checkpoint.read_metadata(path)
    assert meta["backbone"] == name and meta["method"] == method and meta["bits"] == [4, 6, 8]
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(photo_tiles[:4]), m2(photo_tiles[:4]))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        cadyq.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable"):
        cadyq.load(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        cadyq.load(junk)


def test_mismatch_names_keys(tmp_path):
    m = quantize(tiny("edsr"), "cadyq")
    state = m.state_dict()
    state.pop("body.0.body.0.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: body\.0\.body\.0\.weight.*unexpected keys: extra\.weight"):
        checkpoint.load_state(quantize(tiny("edsr"), "cadyq"), state)


def test_transfer_pams8_to_cadyq():
    src = quantize(tiny("edsr"), "pams8")
    with torch.no_grad():
        for i, q in enumerate(dynamic_quantizers(src)):
            q.alpha.fill_(1.0 + i)
    dst = quantize(tiny("edsr"), "cadyq")
    checkpoint.transfer_state(dst, src.state_dict())
    for i, q in enumerate(dynamic_quantizers(dst)):
        assert q.alpha.tolist() == [1.0 + i] * 3
    assert torch.equal(dst.body[0].body[0].weight, src.body[0].body[0].weight)
    with pytest.raises(CheckpointError):
        checkpoint.transfer_state(quantize(tiny("carn"), "cadyq"), src.state_dict())


# ---- foreign checkpoints: keys written the way the official code names them (reference sec. 5) ----
def official_edsr_cadyq(model):
    """Our EDSR CADyQ state -> official EDSR_CADyQ keys (written independently of the importer)."""
    out = {"sub_mean.weight": torch.eye(3).view(3, 3, 1, 1), "sub_mean.bias": torch.zeros(3),
           "add_mean.weight": torch.eye(3).view(3, 3, 1, 1), "add_mean.bias": torch.zeros(3)}
    for k, v in model.state_dict().items():
        m = re.match(r"body\.(\d+)\.(.*)", k)
        if not m or not m[1].isdigit() or int(m[1]) >= model.config.n_resblocks:
            out[k] = v
            continue
        i, rest = m[1], m[2]
        sel = {"input_quant": "bitsel1", "body.2.input_quant": "body.2"}
        for ours, theirs in sel.items():
            if rest.startswith(ours + "."):
                leaf = rest[len(ours) + 1 :]
                if leaf == "alpha":
                    for j in range(3):
                        out[f"body.{i}.{theirs}.quant_bit{j + 1}.alpha"] = v[j : j + 1]
                        out[f"body.{i}.{theirs}.quant_bit{j + 1}.max_val"] = torch.tensor(1.0)
                else:
                    out[f"body.{i}.{theirs}.net_small.0.{leaf.split('.')[-1]}"] = v
                break
        else:
            if rest.startswith("body.2."):
                out[f"body.{i}.body.3.{rest[7:]}"] = v
            elif rest == "body_output_quant.alpha":
                out[f"body.{i}.quant_act3.alpha"] = v
                out[f"body.{i}.quant_act3.max_val"] = torch.tensor(1.0)
            else:
                out[k] = v
    return out


def test_import_official_edsr_cadyq(tmp_path):
    src = quantize(create_model("edsr", 4, n_resblocks=2, n_feats=16), "cadyq")
    with torch.no_grad():
        for p in src.parameters():
            p.copy_(torch.randn_like(p))
    state = official_edsr_cadyq(src)
    assert "body.1.body.3.weight" in state and "body.0.bitsel1.quant_bit3.alpha" in state
    path = tmp_path / "edsr_x4_cadyq.pth.tar"
    torch.save({"state_dict": state, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="does not match"):  # the default EDSR has 16 blocks
        checkpoint.load(path)
    m = checkpoint.import_checkpoint_into(quantize(create_model("edsr", 4, n_resblocks=2, n_feats=16), "cadyq"), path)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_import_edsr_pytorch_zoo_file(tmp_path, photo_tiles):
    """EDSR-PyTorch's edsr_baseline_x4-6b446fab.pt layout: our fp32 keys plus the mean-shift convs."""
    fp = create_model("edsr", 4)
    state = dict(fp.state_dict())
    for name, sign in (("sub_mean", -1), ("add_mean", 1)):
        state[f"{name}.weight"] = torch.eye(3).view(3, 3, 1, 1)
        state[f"{name}.bias"] = sign * 255 * torch.tensor([0.4488, 0.4371, 0.4040])
    path = tmp_path / "edsr_baseline_x4-6b446fab.pt"
    torch.save(state, path)
    m = cadyq.load(path)
    assert checkpoint.metadata(m)["method"] == "fp32" and m.config.scale == 4
    with torch.no_grad():
        assert torch.equal(m(photo_tiles[:2]), fp.eval()(photo_tiles[:2]))


def test_import_official_carn_rescales_gradient_columns(tmp_path):
    src = quantize(create_model("carn", 4), "cadyq")
    state = {}
    for k, v in src.state_dict().items():
        k2 = re.sub(r"^(b\d\.b\d)\.body\.0\.input_quant\.", r"\1.body.0.", k)
        k2 = re.sub(r"^(b\d\.b\d)\.body\.2\.input_quant\.", r"\1.body.3.", k2)
        k2 = re.sub(r"^(b\d\.b\d)\.body\.0\.(weight|bias)$", r"\1.body.1.\2", k2)
        k2 = re.sub(r"^(b\d\.b\d)\.body\.2\.(weight|bias)$", r"\1.body.4.\2", k2)
        k2 = k2.replace("upsample.up.", "upsample.up4.body.").replace(".net.", ".net_small.0.")
        if k2.endswith(".alpha") and v.numel() == 3:
            for j in range(3):
                state[k2.replace(".alpha", f".quant_bit{j + 1}.alpha")] = v[j : j + 1].clone()
        else:
            state[k2] = v.clone()
    state["upsample.up2.body.0.weight"] = torch.zeros(256, 64, 3, 3)  # multi-scale file
    path = tmp_path / "carn_cadyq.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="--scale"):
        cadyq.load(path)
    m = cadyq.load(path, scale=4)
    w_src, w = src.b1.b1.body[0].input_quant.net.weight, m.b1.b1.body[0].input_quant.net.weight
    assert torch.allclose(w[:, :2], w_src[:, :2] * 1e-3) and torch.equal(w[:, 2:], w_src[:, 2:])
    assert torch.equal(m.upsample.up[0].weight, src.upsample.up[0].weight)


def test_import_official_srresnet_shared_prelu(tmp_path):
    src = quantize(create_model("srresnet", 4, n_resblocks=2), "pams8")
    state = {}
    for k, v in src.state_dict().items():
        k2 = re.sub(r"^body\.(\d)\.conv(\d)\.input_quant\.", r"body.\1.quant_act\2.", k)
        if re.match(r"^body\.\d\.act\.weight$", k):
            continue  # one shared PReLU stored under head.1
        state[k2] = v
    state["head.1.weight"] = torch.tensor([0.3])
    torch.save(state, tmp_path / "srresnet_x4_pams_w8a8.pth.tar")
    m = checkpoint.import_checkpoint_into(quantize(create_model("srresnet", 4, n_resblocks=2), "pams8"),
                                          tmp_path / "srresnet_x4_pams_w8a8.pth.tar")
    assert m.body[1].act.weight.item() == pytest.approx(0.3)
    assert torch.equal(m.body[0].conv2.input_quant.alpha, src.body[0].conv2.input_quant.alpha)


def test_load_takes_zoo_names_and_files_alike(tmp_path):
    import cadyq
    from cadyq.errors import CheckpointError

    shipped = cadyq.list_models(pretrained=True)
    assert "edsr-tiny-cadyq-x2-cpu" in shipped and set(cadyq.list_models()) == {"carn", "edsr", "idn", "srresnet"}
    by_name = cadyq.load("edsr-tiny-cadyq-x2-cpu")
    from cadyq.zoo import path_of

    by_path = cadyq.load(path_of("edsr-tiny-cadyq-x2-cpu"))
    sa, sb = by_name.state_dict(), by_path.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert cadyq.create_model("edsr-tiny-cadyq-x2-cpu", pretrained=True).config.scale == 2
    with pytest.raises(CheckpointError, match="no shipped weights of that name .shipped: .*edsr-tiny-cadyq-x2-cpu"):
        cadyq.load("edsr-nope-x4")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        cadyq.load(tmp_path / "missing.safetensors")


# ---- whether the weights were ever trained ---------------------------------------------------------------------

def test_checkpoints_record_weights_that_were_never_trained(tmp_path, photo_tiles):
    """create_model's random weights stay "never trained" through quantize, calibration and save/load; any change of
    a convolution weight makes them trained; the Upscaler warns only for the untrained ones."""
    from safetensors import safe_open

    from cadyq.errors import UntrainedModelWarning
    from cadyq.models.training import is_trained

    m = quantize(tiny("edsr"), "cadyq")
    with torch.no_grad(), observe(m):
        m(photo_tiles[:4])  # calibrated clip values: still the random convolutions
    assert is_trained(m) is False
    cadyq.save(m, tmp_path / "untrained.safetensors")
    assert checkpoint.read_metadata(tmp_path / "untrained.safetensors")["trained"] is False
    loaded = cadyq.load(tmp_path / "untrained.safetensors")
    assert is_trained(loaded) is False
    with pytest.warns(UntrainedModelWarning, match="never trained"):
        cadyq.Upscaler(str(tmp_path / "untrained.safetensors"), device="cpu", backend="torch")

    with torch.no_grad():
        next(p for p in loaded.parameters() if p.dim() == 4).add_(0.01)  # one optimizer step's worth
    assert is_trained(loaded) is True
    cadyq.save(loaded, tmp_path / "trained.safetensors")
    with safe_open(str(tmp_path / "trained.safetensors"), "pt") as f:
        assert '"trained": true' in f.metadata()["cadyq"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        cadyq.Upscaler(str(tmp_path / "trained.safetensors"), device="cpu", backend="torch")
        cadyq.Upscaler("edsr-tiny-cadyq-x2-cpu", device="cpu", backend="torch")  # shipped: trained (its record)


def test_files_that_do_not_record_training(tmp_path):
    """A foreign checkpoint, or a cadyq file from before the record without a training record: nothing is claimed."""
    from safetensors.torch import save_file

    from cadyq.models.training import is_trained

    assert is_trained(cadyq.load("edsr-tiny-pams8-x2-cpu")) is True  # no "trained" field, a training record in "extra"
    m = tiny("edsr")
    meta = checkpoint.metadata(m)
    del meta["trained"]
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"cadyq": json.dumps(meta)})
    assert is_trained(cadyq.load(tmp_path / "old.safetensors")) is None
    torch.save(tiny("edsr").state_dict(), tmp_path / "foreign.pt")
    fresh = tiny("edsr")
    assert is_trained(fresh) is False
    assert is_trained(checkpoint.import_checkpoint_into(fresh, tmp_path / "foreign.pt")) is None


def test_info_says_whether_a_checkpoint_was_trained(tmp_path, capsys):
    from cadyq.cli import main

    cadyq.save(quantize(tiny("edsr"), "pams8"), tmp_path / "fresh.safetensors")
    assert main(["info", str(tmp_path / "fresh.safetensors")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training"))
    assert "never trained" in line and "cadyq models" in line
    assert main(["info", "edsr-tiny-cadyq-x2-cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training"))
    assert line.split()[-1] == "trained"


def test_an_unrelated_safetensors_is_not_told_to_pass_the_flags_it_passed(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.layer.0.weight": torch.zeros(8, 8), "decoder.bias": torch.zeros(8)},
              str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError) as e:
        cadyq.load(tmp_path / "other.safetensors", backbone="edsr", scale=4, method="fp32")
    assert "none of its tensor names" in str(e.value) and "cannot make it one" in str(e.value)
    assert "check --backbone" not in str(e.value)
