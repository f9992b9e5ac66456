"""Benchmark torchkeras_io.save_weights / load_weights against torch.save and safetensors.

Every measured operation runs in a fresh child process (``subprocess``) that first builds the
model, then records its resident memory (the baseline), then runs the operation once while a
thread samples ``/proc/self/statm`` every millisecond; ``ru_maxrss`` catches spikes between
samples. "Peak extra" is the peak resident memory during the operation minus the baseline;
"anon" leaves out file-backed pages (``torch.load(mmap=True)`` maps the file, and the pages it
touches count as resident although they are page cache).

All three formats are written to the same folder, the parent calls ``sync`` before each child
so that no earlier writeback overlaps a measurement, and methods alternate within each round.
Loads read the files the saves just wrote: warm page cache by default, ``--cold`` evicts each
file with ``posix_fadvise(DONTNEED)`` first. ``save_weights`` is atomic and fsyncs the file;
torch.save and safetensors do not, so their fsync is timed separately and shown as ``+fsync``.

    python benchmarks/bench_weights.py --size-gb 1.5 --repeat 3
    python benchmarks/bench_weights.py --quick          # ~200 MB smoke run
    python benchmarks/bench_weights.py --small          # 1000 Linear(32, 32): 2,000 tiny tensors
    python benchmarks/bench_weights.py --quick --compression gzip   # save_weights(compression=...)
    python benchmarks/bench_weights.py --by-name 2 --cold   # load 2 layers by name vs all: time, bytes read
    python benchmarks/bench_weights.py --targets --size-gb 1.5 --repeat 3   # both cases + issue 15's targets
    python benchmarks/bench_weights.py --targets --device cuda   # the model on the GPU (CUDA memory too)
    python benchmarks/bench_weights.py --assign   # loads materialise a model built on the meta device

``--by-name K`` saves the model once with save_weights, then alternates a full load_weights with
a ``by_name=True`` load into a module holding only the last K layers, and reports time and the
bytes each read: ``rchar`` (bytes the process asked the kernel for, page cache included) and
``read_bytes`` (bytes fetched from the disk: meaningful with ``--cold``) from ``/proc/self/io``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SAVE_METHODS = ("tkio", "torch", "safetensors")
LOAD_METHODS = ("tkio", "torch", "safetensors")
LABELS = {
    ("save", "tkio"): "tkio.save_weights",
    ("save", "torch"): "torch.save(state_dict)",
    ("save", "safetensors"): "safetensors save_file",
    ("load", "tkio"): "tkio.load_weights",
    ("load", "torch"): "torch.load(mmap) + load_state_dict",
    ("load", "safetensors"): "safetensors load_file + load_state_dict",
}
PEERS = ("torch", "safetensors")
EXT = {"tkio": "h5", "torch": "pt", "safetensors": "safetensors"}
MiB = 2**20


# ------------------------------------------------------------------------------------ the models
def build_model(spec: dict, seed: int):
    """A deterministic model: big (Linear 8192x8192 + Conv2d) or many small Linear layers."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if spec["case"] == "small":
        return nn.Sequential(*[nn.Linear(32, 32) for _ in range(spec["layers"])])
    total = int(spec["size_gb"] * 2**30)
    dim = 8192 if spec["size_gb"] >= 1 else 4096
    c = dim // 8
    conv_bytes = c * c * 9 * 4
    layers = [nn.Conv2d(c, c, 1)]  # a 1x1 convolution, then 3x3 ones for ~10% of the bytes
    layers += [nn.Conv2d(c, c, 3, padding=1) for _ in range(max(1, round(0.1 * total / conv_bytes)))]
    left = total - sum(p.numel() * 4 for m in layers for p in m.parameters())
    n_full, rest = divmod(left, (dim * dim + dim) * 4)
    layers += [nn.Linear(dim, dim) for _ in range(n_full)]
    if rest // (dim * 4) > 1:
        layers.append(nn.Linear(dim, rest // (dim * 4) - 1))
    return nn.Sequential(*layers)


def describe(model) -> dict:
    sd = model.state_dict()
    sizes = [t.numel() * t.element_size() for t in sd.values()]
    kinds = {}
    for m in model.children():
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return {"bytes": sum(sizes), "largest": max(sizes), "tensors": len(sizes), "layers": kinds}


def fingerprint(model) -> str:
    """An exact digest of every tensor (computed after the timed part)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


# ------------------------------------------------------------------------------------- the child
class Sampler:
    """Peak resident and anonymous memory, sampled from /proc/self/statm by a thread."""

    def __init__(self, interval: float = 0.001) -> None:
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.interval = interval
        self.peak_rss = self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple:
        fields = os.pread(self.fd, 200, 0).split()
        rss, shared = int(fields[1]) * self.page, int(fields[2]) * self.page
        return rss, rss - shared

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anon = self.sample()
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        rss, anon = self.sample()
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)


def _proc_io() -> dict:
    """rchar (bytes asked of read syscalls) and read_bytes (bytes from the disk) so far."""
    try:
        with open("/proc/self/io") as fh:
            fields = dict(line.split(": ") for line in fh.read().splitlines())
        return {k: int(fields[k]) for k in ("rchar", "read_bytes")}
    except (OSError, KeyError, ValueError):
        return {"rchar": 0, "read_bytes": 0}


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def child(job: dict) -> dict:
    import gc
    import resource

    import safetensors.torch as st
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torchkeras_io as tkio

    op, method, path = job["op"], job["method"], job["path"]
    device = job.get("device", "cpu")
    assign = bool(job.get("assign")) and op == "load"
    cuda = device.startswith("cuda")
    if assign:  # parameters materialised from the file: nothing to load into beforehand
        with torch.device("meta"):
            model = build_model(job["spec"], seed=1)
    else:
        model = build_model(job["spec"], seed=0 if op == "save" else 1)
        if device != "cpu":
            model = model.to(device)
    if op == "load_part":
        from torch import nn

        part = nn.Sequential()  # the listed layers only, under their names in the full model
        for i in job["layers"]:
            part.add_module(str(i), model[i])
        model = part
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    sampler = Sampler()
    base_rss, base_anon = sampler.sample()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fsync_s = 0.0
    compression = job.get("compression")
    io_before = _proc_io()
    with sampler:
        t0 = time.perf_counter()
        if op == "load_part":
            report = tkio.load_weights(model, path, by_name=True)
            assert report.loaded == [str(i) for i in job["layers"]], report
        elif op == "save" and method == "tkio":
            tkio.save_weights(model, path, compression=compression)
        elif op == "save" and method == "torch":
            torch.save(model.state_dict(), path)
        elif op == "save":
            st.save_file(model.state_dict(), path)
        elif method == "tkio":
            kw = {"assign": True} if assign else {}
            if assign and device != "cpu":
                kw["device"] = device
            tkio.load_weights(model, path, **kw)
        elif method == "torch":
            sd = torch.load(path, mmap=True, weights_only=True, map_location=device)
            model.load_state_dict(sd, assign=assign)
            del sd
        else:
            sd = st.load_file(path, device=device)
            model.load_state_dict(sd, assign=assign)
            del sd
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        if op == "save" and method != "tkio":
            t1 = time.perf_counter()
            _fsync(path)  # save_weights fsyncs (atomic write); time the same for the others apart
            fsync_s = time.perf_counter() - t1
    io_after = _proc_io()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = sampler.peak_rss
    if maxrss_after > maxrss_before:  # ru_maxrss sees spikes between samples
        peak = max(peak, maxrss_after)
    cuda_extra = torch.cuda.max_memory_allocated(device) - cuda_base if cuda else 0
    left_on_meta = [n for n, t in model.state_dict().items() if t.device.type == "meta"]
    if left_on_meta:
        raise SystemExit(f"tensors left on the meta device: {left_on_meta[:3]}")
    return {
        "time": elapsed,
        "fsync": fsync_s,
        "cuda_extra": cuda_extra,
        "peak_extra": max(0, peak - base_rss),
        "peak_extra_anon": max(0, sampler.peak_anon - base_anon),
        "digest": fingerprint(model),
        "io": {k: io_after[k] - io_before[k] for k in io_after},
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------------ the parent
def run_child(job: dict) -> dict:
    flags = ["-S"] if sys.flags.no_site else []  # lets `python -S` + PYTHONPATH pick the checkout
    proc = subprocess.run(
        [sys.executable, *flags, os.path.abspath(__file__), "--child", json.dumps(job)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {job['op']}/{job['method']} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.5, help="float32 weight bytes of the big model (GiB)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each operation (fresh process each)")
    ap.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rounds first (a VM's first touch of memory is slow)"
    )
    ap.add_argument("--quick", action="store_true", help="~200 MB model, for smoke runs")
    ap.add_argument("--small", action="store_true", help="1000 Linear(32, 32): 2,000 tensors of a few KB")
    ap.add_argument("--layers", type=int, default=1000, help="layers of the --small model")
    ap.add_argument("--cold", action="store_true", help="evict each file from the page cache before loading")
    ap.add_argument("--tmpdir", default=None, help="where the files go (default: a new folder in $TMPDIR)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--compression", choices=("gzip", "lzf"), default=None, help="save_weights(compression=...)")
    ap.add_argument("--by-name", type=int, default=0, metavar="K", help="time loading the last K layers by name vs all")
    ap.add_argument("--device", default="cpu", help="where the model lives: cpu (default) or cuda[:N]")
    ap.add_argument(
        "--assign",
        action="store_true",
        help="loads materialise a model built on the meta device (load_weights(assign=True), "
        "load_state_dict(assign=True))",
    )
    ap.add_argument(
        "--targets", action="store_true", help="run the big model and the small-tensor case, then issue 15's targets"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        del torch
    big = {"case": "big", "size_gb": 0.2 if args.quick else args.size_gb}
    small = {"case": "small", "layers": args.layers}
    if args.by_name:
        spec = small if args.small else big
        return run_by_name(args, spec, describe_spec(spec))
    specs = [big, small] if args.targets else [small if args.small else big]
    done = []
    for spec in specs:
        info = describe_spec(spec)
        results, sizes, loadavg = run_case(args, spec)
        report(args, spec, info, results, sizes, loadavg)
        done.append((spec, info, results))
        if args.json:
            name = args.json if len(specs) == 1 else args.json.replace(".json", "") + f".{spec['case']}.json"
            with open(name, "w") as fh:
                json.dump(
                    {
                        "spec": spec,
                        "info": info,
                        "device": args.device,
                        "assign": args.assign,
                        "machine": machine(),
                        "file_sizes": sizes,
                        "results": {f"{op}/{m}": rs for (op, m), rs in results.items()},
                    },
                    fh,
                    indent=1,
                )
    print_targets(args, done)
    return 0


def describe_spec(spec: dict) -> dict:
    import torch  # only to describe the model; the parent keeps no weights

    with torch.device("meta"):
        return describe(build_model(spec, 0))


def run_case(args, spec: dict) -> tuple:
    """Every method's save and load of one model, alternating, a fresh process each; checks that
    all saves saw the same model and every load restored it bit for bit."""
    workdir = tempfile.mkdtemp(prefix="tkio-bench-", dir=args.tmpdir)
    results = {(op, m): [] for op in ("save", "load") for m in SAVE_METHODS}
    digests, loaded = set(), []
    common = {"spec": spec, "device": args.device}
    try:
        paths = {m: os.path.join(workdir, f"model.{EXT[m]}") for m in SAVE_METHODS}
        load_before = os.getloadavg()
        for r in range(-args.warmup, args.repeat):
            keep = r >= 0
            for m in SAVE_METHODS if r % 2 == 0 else SAVE_METHODS[::-1]:
                if os.path.exists(paths[m]):
                    os.unlink(paths[m])
                os.sync()
                res = run_child(
                    {"op": "save", "method": m, "path": paths[m], "compression": args.compression, **common}
                )
                digests.add(res["digest"])
                if keep:
                    results[("save", m)].append(res)
                print(
                    f"  {'round ' + str(r + 1) if keep else 'warm-up'} {spec['case']} save {m:12s} {fmt_s(res['time'])}",
                    file=sys.stderr,
                )
            os.sync()
            for m in LOAD_METHODS if r % 2 == 0 else LOAD_METHODS[::-1]:
                if args.cold:
                    evict(paths[m])
                res = run_child({"op": "load", "method": m, "path": paths[m], "assign": args.assign, **common})
                loaded.append((m, res["digest"]))
                if keep:
                    results[("load", m)].append(res)
                print(
                    f"  {'round ' + str(r + 1) if keep else 'warm-up'} {spec['case']} load {m:12s} {fmt_s(res['time'])}",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
        sizes = {m: os.path.getsize(p) for m, p in paths.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if len(digests) != 1:
        raise SystemExit(f"saves disagree on the model: {digests}")
    (digest,) = digests
    bad = sorted({m for m, d in loaded if d != digest})
    if bad:
        raise SystemExit(f"loads did not restore the model bit-exactly: {bad}")
    return results, sizes, (load_before, load_after)


#: issue 15's targets: (case, device, op or "memory", limit)
TARGETS = (
    ("big", "cpu", "load", 1.5),
    ("big", "cpu", "save", 1.15),
    ("big", "cuda", "load", 1.0),
    ("big", "cuda", "save", 1.0),
    ("small", None, "save", 3.0),
    ("small", None, "load", 1.5),
)


def _median(runs: list, key: str = "time") -> float:
    return statistics.median(x[key] for x in runs)


def print_targets(args, done: list) -> None:
    """One line per issue-15 target this run measured: tkio's median over the faster peer's
    median (the peer's fsync not added: the strict reading), and whether the target is met."""
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    rows = [("target", "tkio median", "faster peer", "ratio", "(+fsync)", "limit", "met")]
    for spec, info, results in done:
        for case, dev, op, limit in TARGETS:
            if case != spec["case"] or (dev is not None and dev != device) or (op == "load" and args.assign):
                continue
            tk = _median(results[(op, "tkio")])
            peer = min(PEERS, key=lambda m: _median(results[(op, m)]))
            alt = _median(results[(op, peer)])
            fs = ""
            if op == "save":
                alt_fs = min(_median([dict(x, time=x["time"] + x["fsync"]) for x in results[(op, m)]]) for m in PEERS)
                fs = f"{tk / alt_fs:.2f}"
            name = f"{spec['case']} {device} {op} <= {limit}x" if dev else f"{spec['case']} {op} <= {limit}x"
            rows.append((name, fmt_s(tk), f"{fmt_s(alt)} ({peer})", f"{tk / alt:.2f}", fs, f"{limit}",
                         "yes" if tk / alt <= limit else "no"))  # fmt: skip
        if spec["case"] == "big" and device == "cpu":
            largest = info["largest"]
            for op in ("save", "load"):
                peak = max(x["peak_extra"] for x in results[(op, "tkio")])
                rows.append((f"big cpu {op} peak extra <= 0.05x largest", f"{peak / MiB:,.1f} MiB", "", f"{peak / largest:.3f}",
                             "", "0.05", "yes" if peak <= 0.05 * largest else "no"))  # fmt: skip
        if args.assign:
            peak = max(x["peak_extra"] for x in results[("load", "tkio")])
            rows.append((f"{spec['case']} assign=True load peak <= model + 5%", f"{peak / MiB:,.1f} MiB",
                         f"model {info['bytes'] / MiB:,.1f} MiB", f"{peak / info['bytes']:.3f}", "", "1.05",
                         "yes" if peak <= 1.05 * info["bytes"] else "no"))  # fmt: skip
    if len(rows) == 1:
        return
    print("\nissue 15 targets (medians; ratio = tkio / the faster peer):")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def run_by_name(args, spec, info) -> int:
    """Full load_weights vs a by_name load of the last K layers, alternating, fresh process each."""
    import torch

    with torch.device("meta"):
        meta = build_model(spec, 0)
    idx = list(range(len(meta) - args.by_name, len(meta)))
    part_bytes = sum(p.numel() * p.element_size() for i in idx for p in meta[i].state_dict().values())
    del meta, torch
    workdir = tempfile.mkdtemp(prefix="tkio-bench-", dir=args.tmpdir)
    res = {"all": [], "part": []}
    try:
        path = os.path.join(workdir, "model.h5")
        run_child({"op": "save", "method": "tkio", "path": path, "spec": spec, "compression": args.compression})
        os.sync()
        size = os.path.getsize(path)
        load_before = os.getloadavg()
        for r in range(-args.warmup, args.repeat):
            for kind in ("all", "part") if r % 2 == 0 else ("part", "all"):
                if args.cold:
                    evict(path)
                job = {"op": "load" if kind == "all" else "load_part", "method": "tkio", "path": path, "spec": spec,
                       "layers": idx}  # fmt: skip
                out = run_child(job)
                if r >= 0:
                    res[kind].append(out)
                print(
                    f"  {'round ' + str(r + 1) if r >= 0 else 'warm-up'} {kind:4s} {fmt_s(out['time'])}",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine: {machine()}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(
        f"file: {size / MiB:,.1f} MiB ({info['tensors']} tensors); by_name part: last {args.by_name} layer(s), "
        f"{part_bytes / MiB:,.1f} MiB of tensors; {'cold' if args.cold else 'warm'} page cache; "
        f"{args.repeat} run(s) each"
    )
    rows = [("load", "tensor MiB", "best", "median", "rchar MiB", "read_bytes MiB", "peak extra")]
    for kind, label, nbytes in (("all", "all layers", info["bytes"]), ("part", f"{args.by_name} by name", part_bytes)):
        runs = res[kind]
        rows.append(
            (
                label,
                f"{nbytes / MiB:,.1f}",
                fmt_s(min(x["time"] for x in runs)),
                fmt_s(statistics.median(x["time"] for x in runs)),
                f"{min(x['io']['rchar'] for x in runs) / MiB:,.1f}",
                f"{min(x['io']['read_bytes'] for x in runs) / MiB:,.1f}",
                f"{max(x['peak_extra'] for x in runs) / MiB:,.1f} MiB",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    best = {k: min(x["time"] for x in res[k]) for k in res}
    print(f"\npart/all: time {best['part'] / best['all']:.3f}, tensor bytes {part_bytes / info['bytes']:.3f}")
    return 0


def report(args, spec, info, results, sizes, loadavg) -> None:
    any_run = next(iter(results.values()))[0]
    largest = info["largest"]
    layers = ", ".join(f"{n} {k}" for k, n in info["layers"].items())
    print(f"\nmachine: {machine()}; torch {any_run['torch']} ({any_run['torch_threads']} threads)")
    print(
        f"load average (1 min) before/after: {loadavg[0][0]:.2f} / {loadavg[1][0]:.2f} "
        "(other processes compete for the CPUs when it exceeds 0)"
    )
    print(
        f"model: {info['bytes'] / MiB:,.1f} MiB float32 in {info['tensors']} tensors ({layers}); "
        f"largest tensor {largest / MiB:,.1f} MiB; {args.repeat} run(s) each, fresh process per run, "
        f"{'cold' if args.cold else 'warm'} page cache for loads"
    )
    print("files: " + ", ".join(f"{EXT[m]} {s / MiB:,.1f} MiB" for m, s in sizes.items()))
    if args.compression:
        print(f"tkio files saved with compression={args.compression!r}")
    cuda = args.device.startswith("cuda")
    print(
        f"device: {args.device}" + ("; loads with assign=True into a model on the meta device" if args.assign else "")
    )
    head = ("op", "method", "best", "median", "+fsync best", "tkio/best", "peak extra", "anon", "/largest")
    if cuda:
        head += ("CUDA extra",)
    rows = [head]
    for op in ("save", "load"):
        best = {m: min(x["time"] for x in results[(op, m)]) for m in SAVE_METHODS}
        med = {m: statistics.median(x["time"] for x in results[(op, m)]) for m in SAVE_METHODS}
        dur = {m: min(x["time"] + x["fsync"] for x in results[(op, m)]) for m in SAVE_METHODS}
        alt = min(best[m] for m in SAVE_METHODS if m != "tkio")
        alt_dur = min(dur[m] for m in SAVE_METHODS if m != "tkio")
        for m in SAVE_METHODS:
            runs = results[(op, m)]
            peak = max(x["peak_extra"] for x in runs)
            anon = max(x["peak_extra_anon"] for x in runs)
            ratio = ""
            if m == "tkio":
                ratio = f"{best[m] / alt:.2f}"
                if op == "save":
                    ratio += f" ({dur[m] / alt_dur:.2f} +fsync)"
            rows.append(
                (
                    op,
                    LABELS[(op, m)],
                    fmt_s(best[m]),
                    fmt_s(med[m]),
                    fmt_s(dur[m]) if op == "save" else "",
                    ratio,
                    f"{peak / MiB:,.1f} MiB",
                    f"{anon / MiB:,.1f} MiB",
                    f"{peak / largest:.2f}",
                )
                + ((f"{max(x['cuda_extra'] for x in runs) / MiB:,.1f} MiB",) if cuda else ())
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "\nbest/median: wall time of the operation; +fsync: plus fsync of the file (save_weights always "
        "fsyncs); tkio/best: tkio's best over the fastest alternative's best; peak extra: peak RSS "
        "during the operation minus RSS before it (anon: anonymous memory only); /largest: peak "
        "extra over the largest single tensor."
    )


if __name__ == "__main__":
    sys.exit(main())
