"""DDP on the CPU (gloo): two processes with half of the global batch each give the gradients (and
the training run) of one process on the whole batch."""
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from cadyq import checkpoint
from cadyq.models import create_model
from cadyq.quant import observe, quantize
from cadyq.train import ddp
from cadyq.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32",
                                reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, cfg_kw):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    info = ddp.init_from_env()
    assert info.world == world and info.rank == rank
    try:
        t = Trainer(TrainConfig(**cfg_kw), info)
        lr, hr = t.dataset_batch(0)
        assert lr.shape[0] == cfg_kw["batch"] // world
        t.forward_backward(lr, hr, 0)
        if rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}
            torch.save(grads, os.path.join(out_dir, "ddp_grads.pt"))
        t.train()
    finally:
        ddp.cleanup(info)


def _photo(seed, h, w):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def test_two_gloo_processes_match_one_process(tmp_path):
    (tmp_path / "hr").mkdir()
    for i in range(3):
        Image.fromarray(_photo(i, 40, 48)).save(tmp_path / "hr" / f"{i}.png")
    torch.manual_seed(0)
    teacher = quantize(create_model("edsr", scale=2, n_feats=8, n_resblocks=2), "pams8")
    with torch.no_grad(), observe(teacher):
        teacher(torch.rand(2, 3, 12, 12) * 255)
    checkpoint.save(teacher, tmp_path / "pams8.safetensors")
    kw = dict(method="cadyq", data=str(tmp_path / "hr"), init=str(tmp_path / "pams8.safetensors"), patch=10, batch=4,
              iters=3, workers=0, val=str(tmp_path / "hr"), val_max=1, val_every=2, log_every=1, progress=False,
              w_bit=1e-2, lr=1e-3, selector_lr=1e-2,
              # NCHW: channels_last convolutions of 2 and of 4 samples round differently, and one hard bit
              # decision near a tie then flips between the runs, which changes the gradients legitimately
              channels_last=False,
              precision="fp32")  # bf16 autocast (auto on CPUs with AVX512-BF16) rounds per batch shape too
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path), dict(kw, out=str(tmp_path / "ddp"))), nprocs=2, join=True)

    single = Trainer(TrainConfig(**kw, out=str(tmp_path / "one")))
    lr, hr = single.dataset_batch(0)
    assert lr.shape[0] == 4
    single.forward_backward(lr, hr, 0)
    ddp_grads = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    grads = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    assert set(grads) == set(ddp_grads)
    assert any(".input_quant.net." in n for n in grads)  # the bit loss reached the selectors
    for n, g in grads.items():
        assert torch.allclose(g, ddp_grads[n], rtol=1e-4, atol=1e-6), (n, (g - ddp_grads[n]).abs().max())

    single.train()
    a = checkpoint.load(tmp_path / "one" / "last.safetensors").state_dict()
    b = checkpoint.load(tmp_path / "ddp" / "last.safetensors").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert (tmp_path / "ddp" / "val.csv").read_text().count("\n") == 3  # header + iterations 2 and 3


def test_single_process_env():
    info = ddp.init_from_env()
    assert (info.rank, info.world, info.enabled, info.is_main) == (0, 1, False, True)
    assert ddp.any_true(True, info, torch.device("cpu")) is True
    x = torch.tensor([1.0, 2.0])
    assert ddp.all_mean(x, info) is x
