"""The data paths behind fast and bounded save/load (behaviour only: nothing here is timed).

* plain (contiguous, unfiltered) datasets are read with ``os.preadv`` at the offset HDF5
  reports, bit for bit, and only the bytes of the layers asked for;
* chunked / compressed datasets fall back to HDF5's reader, block by block;
* every block moves through buffers of the Transfer's size, whatever the tensor's size;
* a dataset whose recorded place lies outside the file is a FileFormatError, before anything
  is written into the module;
* offsets past 4 GiB (a sparse file, so the test stays small on disk);
* compression (gzip, lzf) is read by tf_keras and Keras 3;
* progress bars (tqdm);
* the accelerator pipeline (pinned double buffers), run on CPU tensors; on CUDA when present.
"""

from __future__ import annotations

import io
import os
import struct
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import ORACLE_WARNINGS, assert_close_rel, bits_equal, keras_module
from torch import nn

import torchkeras_io as tkio
from torchkeras_io._checkpoint.reader import open_checkpoint
from torchkeras_io._formats.hdf5_io import RawFile, Rows, Writer
from torchkeras_io._tensors.blockio import Transfer, device_blocks, in_root_order, load_blocks_to_device
from torchkeras_io.errors import FileFormatError, TorchKerasIOError

pytestmark = [*ORACLE_WARNINGS]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Linear(300, 90),
        nn.Embedding(40, 6),
    )


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(bits_equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def preadv_log(monkeypatch):
    """Every (offset, length) the library reads with os.preadv."""
    log = []
    real = os.preadv

    def spy(fd, buffers, offset, *args):
        n = real(fd, buffers, offset, *args)
        log.append((offset, n))
        return n

    monkeypatch.setattr(os, "preadv", spy)
    return log


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if t.dim() > 0)


# ----------------------------------------------------------------------------- the offsets path
@pytest.mark.parametrize("name", ["w.h5", "w.weights.h5"])  # legacy layout and the Keras 3 store
def test_plain_datasets_are_read_at_their_offsets_bit_exact(tmp_path, preadv_log, name):
    src, dst = _model(0), _model(1)
    path = tmp_path / name
    tkio.save_weights(src, path)
    tkio.load_weights(dst, path)
    assert _state_equal(src, dst)
    # every byte of tensor data came through preadv (BatchNorm's scalar counter included)
    assert sum(n for _, n in preadv_log) == sum(t.numel() * t.element_size() for t in src.state_dict().values())
    size = os.path.getsize(path)
    assert all(0 < off and off + n <= size for off, n in preadv_log)


def test_by_name_reads_only_the_requested_layers_bytes(tmp_path, preadv_log):
    torch.manual_seed(0)
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    path = tmp_path / "w.h5"
    tkio.save_weights(big, path)
    part = nn.Sequential()
    part.add_module("3", nn.Linear(256, 256))
    report = tkio.load_weights(part, path, by_name=True)
    assert report.loaded == ["3"]
    assert sum(n for _, n in preadv_log) == (256 * 256 + 256) * 4
    assert torch.equal(getattr(part, "3").weight, big[3].weight)


def test_blocks_go_through_buffers_of_the_transfer_size(tmp_path, preadv_log):
    """A transposed load of large kernels in 4 KB blocks: many reads, none larger than a block,
    and the Transfer holds nothing larger either."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(96, 130), nn.Conv2d(20, 12, 3))
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = nn.Sequential(nn.Linear(96, 130), nn.Conv2d(20, 12, 3))
    with open_checkpoint(path) as reader, Transfer(max_bytes=4096) as transfer:
        for i, layer in enumerate((reader.layer("0"), reader.layer("1"))):
            kernel = layer.weights[0]
            fn = (lambda a: a.t()) if i == 0 else (lambda a: a.permute(3, 2, 0, 1))
            kernel.map(fn).read_into(dst[i].weight.data, transfer)
        assert all(b.numel() <= 4096 for b in transfer.buffers())
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, src[1].weight)
    assert len(preadv_log) > 10 and max(n for _, n in preadv_log) <= 4096


@pytest.mark.parametrize("compression,opts", [("gzip", None), ("gzip", 9), ("lzf", None)])
def test_compressed_datasets_fall_back_to_hdf5_bit_exact(tmp_path, preadv_log, compression, opts):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(2048, 600), nn.Conv2d(64, 32, 3))  # the Dense kernel spans 3 blocks
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, compression=compression, compression_opts=opts)
    with h5py.File(path, "r") as f:
        kernel = f["0/0/kernel:0"]
        assert kernel.compression == compression and kernel.chunks is not None
        # chunks are the blocks save and load move: whole trailing dims, at most a block each
        assert kernel.chunks[1:] == kernel.shape[1:] and np.prod(kernel.chunks) * 4 <= 2 << 20
        assert f["1/1/kernel:0"].compression == compression
    dst = nn.Sequential(nn.Linear(2048, 600), nn.Conv2d(64, 32, 3))
    tkio.load_weights(dst, path)
    assert _state_equal(src, dst)
    assert preadv_log == []  # no plain dataset: HDF5 read (and decompressed) everything
    with open_checkpoint(path) as reader, Transfer(max_bytes=4096) as transfer:  # hyperslabs of a chunk
        target = torch.empty(32, 64, 3, 3)
        reader.layer("1").weights[0].map(lambda a: a.permute(3, 2, 0, 1)).read_into(target, transfer)
    assert torch.equal(target, src[1].weight)


def test_all_or_nothing_loads_of_compressed_files_need_no_tensor_copies(tmp_path, monkeypatch):
    """Compressed weights are proven readable before the module changes, block by block through
    the transfer buffers: no copy of the model, not even a tensor-sized scratch."""
    import weakref

    torch.manual_seed(0)
    src = nn.Sequential(*[nn.Linear(256, 256) for _ in range(6)])
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, compression="gzip", compression_opts=1)
    live, peak = {}, [0]
    real = torch.empty_like

    def spy(t, *args, **kwargs):
        out = real(t, *args, **kwargs)
        key = id(out)
        live[key] = out.numel() * out.element_size()
        peak[0] = max(peak[0], sum(live.values()))
        weakref.finalize(out, live.pop, key, None)
        return out

    monkeypatch.setattr(torch, "empty_like", spy)
    dst = nn.Sequential(*[nn.Linear(256, 256) for _ in range(6)])
    tkio.load_weights(dst, path)
    assert _state_equal(src, dst)
    assert peak[0] == 0  # stored data is proven block by block: no tensor-sized scratch at all


def test_compression_arguments_are_checked(tmp_path):
    m = nn.Linear(2, 2)
    for kwargs in ({"compression": "zstd"}, {"compression": "gzip", "compression_opts": 12},
                   {"compression": "lzf", "compression_opts": 1}, {"compression_opts": 4}):  # fmt: skip
        with pytest.raises(TorchKerasIOError):
            tkio.save_weights(m, tmp_path / "w.h5", **kwargs)
    assert not (tmp_path / "w.h5").exists()


def test_compression_is_for_the_legacy_layout(tmp_path):
    with pytest.raises(TorchKerasIOError, match="legacy"):
        tkio.save_weights(nn.Linear(2, 2), tmp_path / "w.weights.h5", compression="gzip")
    with pytest.raises(TorchKerasIOError, match="legacy"):
        tkio.save_model(nn.Sequential(nn.Linear(2, 2)), tmp_path / "m.keras", input_shape=(2,), compression="lzf")
    assert list(tmp_path.iterdir()) == []


def _corrupt_offset(path, offset: int, nbytes: int, new_offset: int) -> None:
    """Point a contiguous dataset's layout message (address, size) somewhere else (every copy
    of it: HDF5 may leave a stale one behind when an object header grows)."""
    data = path.read_bytes()
    key = struct.pack("<QQ", offset, nbytes)
    assert key in data
    path.write_bytes(data.replace(key, struct.pack("<QQ", new_offset, nbytes)))


@pytest.mark.parametrize("where", ["past_eof", "straddles_eof"])
def test_data_outside_the_file_is_a_file_format_error(tmp_path, where):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    with h5py.File(path, "r") as f:
        d = f["1/1/kernel:0"]
        offset, nbytes = d.id.get_offset(), d.id.get_storage_size()
    size = os.path.getsize(path)
    _corrupt_offset(path, offset, nbytes, size + 4096 if where == "past_eof" else size - nbytes // 2)
    dst = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(FileFormatError) as info:
        tkio.load_weights(dst, path)
    err = info.value
    assert err.filepath is not None and str(path) in str(err)
    assert err.layer == "1" and err.weight is not None and "kernel" in err.weight
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing applied


class _StubDataset:
    """What the offsets path asks of a dataset, with a hostile answer."""

    def __init__(self, offset, stored):
        self.offset, self.stored = offset, stored

    def get_type(self):
        return h5py.h5t.py_create(np.dtype("float32"))

    def get_offset(self):
        return self.offset

    def get_storage_size(self):
        return self.stored


@pytest.mark.parametrize("offset,stored", [(10**12, 400), (-8, 400), (0, 4000), (None, 400)])
def test_offset_checks(tmp_path, offset, stored):
    """HDF5 itself refuses most bad layout messages when it opens the dataset; the offsets path
    checks again, so that no read ever goes past the end of the file."""
    path = tmp_path / "w.h5"
    tkio.save_weights(nn.Linear(10, 10), path)
    with h5py.File(path, "r") as f:
        raw = RawFile.of(f)
        stub = _StubDataset(offset, stored)
        if offset is None:  # never written: left to HDF5, which supplies the fill value
            assert raw.offset_of(stub, (10, 10), np.dtype("float32"), str(path), "l", "w") is None
            return
        with pytest.raises(FileFormatError) as info:
            raw.offset_of(stub, (10, 10), np.dtype("float32"), str(path), "l", "w")
        assert (info.value.filepath, info.value.layer, info.value.weight) == (str(path), "l", "w")


# ---------------------------------------------------------------------------------- past 4 GiB
def test_offsets_past_4_gib(tmp_path):
    """A layer whose data starts past 4 GiB (after a 4.5 GiB dataset that is never written, so
    the file is sparse): read at its 64-bit offset, bit for bit; a block of the large dataset
    whose position needs more than 32 bits reads too."""
    path = tmp_path / "big.h5"
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(64, 48))
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        big_shape = (9 * 2**27,)  # 4.5 GiB of float32
        space = h5py.h5s.create_simple(big_shape)
        pad = f.create_group("padding")
        h5py.h5d.create(pad.id, b"big", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
        from torchkeras_io._checkpoint.records import LayerWeights
        from torchkeras_io._engine.plan import plan
        from torchkeras_io._formats.legacy_h5 import write_weights_group

        slots, _ = plan(src)
        write_weights_group(f, [LayerWeights(s.name, s.layer.weights, s.layer.extras) for s in slots])
    st = os.stat(path)
    if st.st_size < 4.5 * 2**30 or st.st_blocks * 512 > 2**30:
        pytest.skip("the file system does not keep this file sparse")
    with h5py.File(path, "r") as f:
        assert f["0/0/kernel:0"].id.get_offset() > 2**32
    dst = nn.Sequential(nn.Linear(64, 48))
    tkio.load_weights(dst, path)
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[0].bias, src[0].bias)

    with h5py.File(path, "r") as f:
        raw = RawFile.of(f)
        big = f["padding/big"].id
        offset = raw.offset_of(big, big_shape, np.dtype("float32"), str(path), "padding", "big")
        rows = Rows(None, big_shape, torch.float32, str(path), "padding", "big", raw, offset)
        out = torch.full((1024,), 7.0)
        rows.read_block((big_shape[0] - 1024,), out)  # byte position ~4.5 GiB + offset
        assert torch.equal(out, torch.zeros(1024))  # never written: the file's hole reads as zeros


def test_chunks_stay_below_hdf5s_4_gib_chunk_limit():
    w = Writer(Transfer(), "gzip", 4)
    for shape, itemsize in [((3 * 2**30,), 4), ((70000, 70000), 8), ((2, 3, 2**31), 1)]:
        chunk = w.dataset_plist(shape, itemsize).get_chunk()
        assert np.prod(chunk, dtype=np.float64) * itemsize < 2**32
        assert all(0 < c <= s for c, s in zip(chunk, shape))


# ------------------------------------------------------------------------------- Keras oracles
@pytest.mark.parametrize("flavor", ["tf_keras", "keras3"])
@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_weights_load_in_keras(tmp_path, flavor, compression):
    keras = keras_module(flavor)
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 700))  # the Dense kernel: 2 chunks
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, compression=compression)
    model = keras.Sequential(
        [keras.Input((5, 5, 3)), keras.layers.Conv2D(8, 3, name="conv"), keras.layers.Dense(700, name="dense")]
    )
    model.load_weights(str(path))
    conv_k, conv_b = (np.asarray(w) for w in model.get_layer("conv").get_weights())
    dense_k, dense_b = (np.asarray(w) for w in model.get_layer("dense").get_weights())
    assert np.array_equal(conv_k, src[0].weight.detach().permute(2, 3, 1, 0).numpy())
    assert np.array_equal(conv_b, src[0].bias.detach().numpy())
    assert np.array_equal(dense_k, src[1].weight.detach().t().numpy())
    assert np.array_equal(dense_b, src[1].bias.detach().numpy())


@pytest.mark.parametrize("flavor", ["tf_keras", "keras3"])
def test_compressed_model_loads_in_keras(tmp_path, flavor):
    keras = keras_module(flavor)
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    path = tmp_path / "m.h5"
    tkio.save_model(src, path, input_shape=(16,), compression="gzip", compression_opts=6)
    with h5py.File(path, "r") as f:
        names = []
        f["model_weights"].visit(names.append)
        datasets = [f["model_weights"][n] for n in names if isinstance(f["model_weights"][n], h5py.Dataset)]
        assert datasets and all(d.compression == "gzip" for d in datasets)
    model = keras.models.load_model(str(path), compile=False)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype("float32")
    with torch.no_grad():
        expected = src(torch.from_numpy(x))
    assert_close_rel(model.predict(x, verbose=0), expected, 1e-5)
    back = tkio.load_model(path)
    values = list(back.module.state_dict().values())
    assert len(values) == 4 and all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), values))


# ------------------------------------------------------------------------------------ progress
def test_progress_bar_counts_every_byte(tmp_path, monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    src, dst = _model(0), _model(1)
    total = sum(t.numel() * t.element_size() for t in src.state_dict().values())
    done = "{0}/{0}".format(tqdm.tqdm.format_sizeof(total, divisor=1024))  # the bar's final "n/total"
    tkio.save_weights(src, tmp_path / "w.h5", progress=True)
    out = err.getvalue()
    assert "save_weights" in out and "100%" in out and done in out
    err.seek(0)
    err.truncate()
    tkio.load_weights(dst, tmp_path / "w.h5", progress=True)
    out = err.getvalue()
    assert "load_weights" in out and "100%" in out and done in out
    assert _state_equal(src, dst)


def test_progress_auto_and_off(tmp_path, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    tkio.save_weights(_model(0), tmp_path / "w.h5")  # auto: small model, and stderr not a tty
    tkio.save_weights(_model(0), tmp_path / "w.h5", progress=False)
    tkio.load_weights(_model(1), tmp_path / "w.h5")
    assert err.getvalue() == ""
    from torchkeras_io._checkpoint import progress as _progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(_progress, "PROGRESS_THRESHOLD", 1)
    pytest.importorskip("tqdm")
    tkio.save_weights(_model(0), tmp_path / "w.h5")
    assert "save_weights" in tty.getvalue()


def test_progress_true_without_tqdm_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(TorchKerasIOError, match="tqdm"):
        tkio.save_weights(_model(0), tmp_path / "w.h5", progress=True)
    assert not (tmp_path / "w.h5").exists()
    tkio.save_weights(_model(0), tmp_path / "w.h5")  # auto quietly does without


# --------------------------------------------------------------------- the accelerator pipeline
def test_device_pipeline_logic_on_cpu(tmp_path):
    """The code that feeds an accelerator (two pinned buffers in turn, a copy per block), run on
    CPU tensors: bit-exact, and no block larger than the buffers."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(300, 70), nn.Conv2d(16, 24, 3))
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    with open_checkpoint(path) as reader, Transfer(max_bytes=4096) as transfer:
        for i, fn in ((0, lambda a: a.t()), (1, lambda a: a.permute(3, 2, 0, 1))):
            lazy = reader.layer(str(i)).weights[0].map(fn)
            view = lazy.strided()
            target = torch.zeros_like(src[i].weight)
            dst = in_root_order(target, view, tuple(view.root.shape))
            load_blocks_to_device(view.root, dst, torch.float32, transfer)
            assert torch.equal(target, src[i].weight)
        buffers = {b.data_ptr() for b in transfer.pinned()}
    value = src[0].weight.detach().t()  # a transposed (non-contiguous) tensor, as save sees it
    with Transfer(max_bytes=4096) as transfer:
        parts, ptrs = [], set()
        for origin, block in device_blocks(value, transfer):
            assert block.numel() * block.element_size() <= 4096
            ptrs.add(block.data_ptr())
            parts.append((origin, block.clone()))
        assert ptrs <= {b.data_ptr() for b in transfer.pinned()} and len(ptrs) == 2
    assert torch.equal(torch.cat([b for _, b in parts]), value)
    assert len(buffers) == 2


class _ArraySource:
    """A block source over a tensor in file layout, recording every block read (and which
    thread read it); the read after ``fail_after`` reads is an OSError."""

    def __init__(self, value: torch.Tensor, fail_after=None) -> None:
        self.value, self.shape, self.fail_after = value, tuple(value.shape), fail_after
        self.reads, self.threads = [], set()

    def read_block(self, origin, out):
        import threading

        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise OSError("disk error")
        self.threads.add(threading.get_ident())
        self.reads.append(tuple(origin))
        out.copy_(self.value[tuple(slice(o, o + n) for o, n in zip(origin, out.shape))])


_LAYOUTS = [  # (file layout, file -> parameter view): Dense, Conv2D, Conv1D, LSTM-like kernels
    ((96, 130), lambda a: a.t()),
    ((3, 3, 20, 12), lambda a: a.permute(3, 2, 0, 1)),
    ((5, 24, 40), lambda a: a.permute(2, 1, 0)),
    ((64, 4 * 48), lambda a: a.t()),
]


@pytest.mark.parametrize("shape,fn", _LAYOUTS)
@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_loads_move_blocks_on_several_lanes_bit_exact(shape, fn, lanes):
    """A transposed load on ``lanes`` threads: every block read exactly once, each lane through
    buffers of its own of the Transfer's size, bit for bit."""
    from torchkeras_io._tensors import Lazy

    torch.manual_seed(0)
    value = torch.randn(shape)
    source = _ArraySource(value)
    target = torch.zeros(fn(value).shape)
    with Transfer(max_bytes=4096, lanes=lanes) as transfer:
        Lazy("k", shape, torch.float32, None, root=source).map(fn).read_into(target, transfer)
        buffers = [b for i in range(lanes) for b in transfer.lane(i)]
        assert all(b.numel() <= 4096 for b in buffers)
        assert len({b.data_ptr() for b in buffers}) == 2 * lanes
    assert torch.equal(target, fn(value))
    assert len(source.reads) == len(set(source.reads)) > 1


def test_a_failing_block_stops_every_lane_before_the_error_is_raised():
    """An error in one lane is raised once every lane has stopped: after it, no thread still
    writes into the tensor, and the lanes stop at their next block."""
    from torchkeras_io._tensors import Lazy

    value = torch.randn(400, 64)
    source = _ArraySource(value, fail_after=3)
    target = torch.zeros(64, 400)
    with Transfer(max_bytes=1024, lanes=2) as transfer:
        with pytest.raises(OSError, match="disk error"):
            Lazy("k", (400, 64), torch.float32, None, root=source).map(lambda a: a.t()).read_into(target, transfer)
        seen = len(source.reads)
        snapshot = target.clone()
        import time

        time.sleep(0.05)
        assert len(source.reads) == seen and torch.equal(target, snapshot)  # nothing still running
    assert seen < 100  # the lanes stopped early (over 100 blocks in all)


@pytest.mark.parametrize("shape,fn", _LAYOUTS)
@pytest.mark.parametrize("lanes", [1, 4])
def test_device_lanes_logic_on_cpu(shape, fn, lanes):
    """The accelerator loader (reader lanes, each with a host block, a device block and a
    stream) run with a CPU "device": bit-exact, every block read once, buffers of the Transfer's
    size, and a dtype cast done in the device copy."""
    from torchkeras_io._tensors import Lazy

    torch.manual_seed(0)
    value = torch.randn(shape)
    for dtype in (torch.float32, torch.float64):
        source = _ArraySource(value)
        lazy = Lazy("k", shape, torch.float32, None, root=source).map(fn)
        target = torch.zeros(fn(value).shape, dtype=dtype)
        view = lazy.strided()
        with Transfer(max_bytes=4096) as transfer:
            dst = in_root_order(target, view, shape)
            load_blocks_to_device(source, dst, torch.float32, transfer, lanes=lanes)
            used = [transfer.device_lane(i, torch.device("cpu")) for i in range(lanes)]
            assert all(h.numel() <= 4096 and d.numel() <= 4096 and s is None for h, d, s in used)
        assert torch.equal(target, fn(value).to(dtype))
        assert len(source.reads) == len(set(source.reads)) > 1


def test_row_copies_never_exceed_the_serial_grain(monkeypatch):
    """Copies inside the block loop stay below torch's parallel grain (rows longer than the
    grain are split too), so torch starts no OpenMP threads between single-threaded steps."""
    from torchkeras_io._tensors import blockio

    sizes = []
    real = torch.Tensor.copy_

    def copy_(self, src, *a, **k):
        sizes.append(self.numel())
        return real(self, src, *a, **k)

    src = torch.randn(3, 3, 40, 1500).permute(1, 0, 2, 3)  # rows of 60,000 elements
    dst = torch.empty(src.shape)
    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    blockio._serial_copy(dst, src)
    monkeypatch.undo()
    assert torch.equal(dst, src) and max(sizes) <= blockio._SERIAL_ELEMENTS


def test_probe_results_are_reused_only_for_pure_transforms():
    """A transform probe is cached by its code and captured immutable values: the same lambda
    with another captured permutation is probed again, and a closure over a tensor never
    reuses a result."""
    from torchkeras_io._tensors import Lazy
    from torchkeras_io._tensors import lazy as lazy_mod

    lazy_mod._PROBES.clear()

    def kernel(perm):
        return Lazy.of("k", torch.zeros(2, 3, 4, 5), lambda w: w.permute(perm))

    a, b = kernel((3, 2, 0, 1)), kernel((2, 3, 1, 0))
    assert a.shape == (5, 4, 2, 3) and b.shape == (4, 5, 3, 2)
    assert a.strided().stride == (1, 5, 60, 20) and b.strided().stride == (5, 1, 20, 60)
    assert len(lazy_mod._PROBES) == 2
    again = kernel((3, 2, 0, 1))
    assert len(lazy_mod._PROBES) == 2 and again.strided().stride == a.strided().stride
    scale = torch.ones(())
    c = Lazy.of("k", torch.zeros(2, 3), lambda w: w.t() * scale)
    assert c.strided() is None and len(lazy_mod._PROBES) == 2


def _gru_swap(t):
    u = t.shape[0] // 3
    return torch.cat([t[u : 2 * u], t[:u], t[2 * u :]])


@pytest.mark.parametrize(
    "shape,fn",
    [
        ((64, 3 * 40), lambda a: _gru_swap(a.t())),  # a GRU kernel: gates reordered after the transpose
        ((3 * 40,), _gru_swap),  # its bias
        ((2, 3 * 40), lambda b: _gru_swap(b[1])),  # one row of a (2, 3u) Keras bias
        ((64, 3 * 40), lambda a: torch.cat([a[:32].t(), a[32:].t()], dim=1)),
    ],
)
def test_concatenated_views_move_in_blocks(shape, fn):
    """A value that is a ``torch.cat`` of views of one dataset (gate reorders) is read block by
    block into place, never whole, bit for bit; ``scan`` covers it in blocks too."""
    from torchkeras_io._tensors import Lazy

    torch.manual_seed(0)
    value = torch.randn(shape)
    source = _ArraySource(value)
    lazy = Lazy("k", shape, torch.float32, None, root=source).map(fn)  # no reader: a whole read fails
    assert lazy.strided() is None and lazy.pieces() is not None
    target = torch.zeros(fn(value).shape)
    with Transfer(max_bytes=1024) as transfer:
        lazy.read_into(target, transfer)
        seen = []
        assert lazy.scan(lambda b: seen.append(b.numel()), transfer)
    assert torch.equal(target, fn(value))
    assert sum(seen) == value.numel() and max(seen) * 4 <= 1024


@pytest.mark.parametrize("shape", [(3 * 40, 64), (3 * 40,)])
def test_saves_of_concatenated_views_move_in_blocks(shape):
    """A GRU kernel saved (``cat(gates).t()``): blocks of the transposed pieces, in buffers of
    the Transfer's size, that together are the value; nothing of the value's size is made."""
    from torchkeras_io._tensors import Lazy, blocks

    torch.manual_seed(0)
    w = torch.randn(shape)
    fn = (lambda a: _gru_swap(a).t()) if len(shape) == 2 else _gru_swap
    lazy = Lazy.of("k", w, fn)
    assert lazy.strided() is None and lazy.pieces() is not None
    out = torch.zeros(lazy.shape)
    with Transfer(max_bytes=1024) as transfer:
        for origin, block in blocks(lazy, transfer):
            assert block.numel() * 4 <= 1024
            out[tuple(slice(o, o + n) for o, n in zip(origin, block.shape))] = block
    assert torch.equal(out, fn(w))


def test_a_concatenation_that_is_not_of_views_is_read_whole():
    from torchkeras_io._tensors import Lazy

    value = torch.randn(6, 4)
    lazy = Lazy("k", (6, 4), torch.float32, lambda: value.clone(), root=_ArraySource(value))
    doubled = lazy.map(lambda a: torch.cat([a * 2, a]))
    assert doubled.pieces() is None
    target = torch.zeros(12, 4)
    doubled.read_into(target)
    assert torch.equal(target, torch.cat([value * 2, value]))


def test_probing_a_gru_does_not_import_torch_dynamo(tmp_path):
    """torch's meta ``cat`` imports torch._dynamo (seconds, ~84 MiB): probes do without it."""
    import subprocess

    code = (
        "import sys, torch, torchkeras_io as tkio\n"
        "m = torch.nn.GRU(8, 6)\n"
        f"tkio.save_weights(m, {str(tmp_path / 'g.h5')!r})\n"
        f"tkio.load_weights(m, {str(tmp_path / 'g.h5')!r})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.gpu
def test_cuda_save_and_load_overlap_path(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(2048, 1500), nn.Conv2d(128, 96, 3)).cuda()
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = nn.Sequential(nn.Linear(2048, 1500), nn.Conv2d(128, 96, 3)).cuda()
    tkio.load_weights(dst, path)
    torch.cuda.synchronize()
    assert _state_equal(src.cpu(), dst.cpu())
    with Transfer() as transfer:
        assert all(b.is_pinned() for b in transfer.pinned())


@pytest.mark.gpu
@pytest.mark.parametrize("shape,fn", _LAYOUTS)
def test_cuda_reader_lanes_bit_exact_with_dtype_casts(shape, fn):
    """The reader lanes on a real device: pinned host blocks, device blocks owned by each
    lane's stream, the transpose and a dtype cast done on the device, work queued before the
    load (a fill on the current stream) ordered before it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from torchkeras_io._tensors import Lazy

    torch.manual_seed(0)
    value = torch.randn(shape)
    for dtype in (torch.float32, torch.float16):
        target = torch.empty(fn(value).shape, dtype=dtype, device="cuda")
        target.fill_(7)  # queued on the current stream before the lanes start
        with Transfer(max_bytes=4096) as transfer:
            Lazy("k", shape, torch.float32, None, root=_ArraySource(value)).map(fn).read_into(target, transfer)
            hosts = [transfer.device_lane(i, target.device)[0] for i in range(2)]
            assert all(h.is_pinned() for h in hosts)
        torch.cuda.synchronize()
        assert torch.equal(target.cpu(), fn(value).to(dtype))
