"""What a loopback ``napari-diffmed serve`` costs against running the same task in this process.

    python benchmarks/bench_remote.py                                    # the defaults (several minutes on CPU)
    python benchmarks/bench_remote.py --slices 4 --members 4 --n 4 --steps 10 --repeat 2   # a short run

Starts a server on 127.0.0.1 in a subprocess (same device, same torch threads), warms both sides up
(models loaded, first-call costs paid), then alternates local and remote runs of the default
segmentation (the shipped mni_wm_seg_96 on the MNI152 T1 template at 2 mm, a slab of ``--slices``
axial slices) and the default synthesis (shipped mni_t1_axial_64_v). Prints, per task, the median
wall time of each, the client's time spent moving arrays (uploads and result downloads), the
overhead beyond that transfer time as a share of the local run (the goal: at most 10%), and the
bytes sent and received per job (arrays as .npy, the job request, the progress stream).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time


def start_server(device: str) -> tuple[str, subprocess.Popen]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "napari_diffmed.cli", "serve", "--port", str(port), "--device",
                             device, "--log-level", "warning"], env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    from napari_diffmed.ensemble import DEFAULTS as SEG
    from napari_diffmed.synthesis import DEFAULTS as SYN

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=12, help="axial slices segmented (the widget's default slab)")
    parser.add_argument("--members", type=int, default=SEG.members)
    parser.add_argument("--n", type=int, default=SYN.n, help="samples synthesised")
    parser.add_argument("--steps", type=int, default=SYN.steps, help="synthesis steps")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind per task (median)")
    args = parser.parse_args()

    import napari_diffmed as dm
    from napari_diffmed.remote import Client
    from napari_diffmed.training.templates import load_mni152

    t1 = load_mni152(resolution=2)
    scan, spacing = t1.t1.astype("float32"), t1.layer_kwargs["metadata"]["spacing"]
    mid = scan.shape[0] // 2
    slab = list(range(mid - args.slices // 2, mid - args.slices // 2 + args.slices))
    tasks = {
        "segment_ensemble": ((scan, spacing), dict(members=args.members, indices=slab, seed=0)),
        "synthesize": ((), dict(n=args.n, steps=args.steps, seed=0)),
    }
    url, proc = start_server(args.device)
    try:
        client = Client(url)
        print(f"server {url}: {client.health()['device']}; local device {args.device}; "
              f"slices {args.slices}, members {args.members}, n {args.n}, steps {args.steps}, repeat {args.repeat}")
        rows = []
        for task, (positional, kwargs) in tasks.items():
            local_fn, remote_fn = getattr(dm, task), getattr(client, task)
            local_fn(*positional, device=args.device, **kwargs)  # warm-up: models loaded, first calls paid
            remote_fn(*positional, **kwargs)
            local, remote, transfer = [], [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                local_fn(*positional, device=args.device, **kwargs)
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                remote_fn(*positional, **kwargs)
                remote.append(time.perf_counter() - start)
                transfer.append(client.last_transfer["transfer_seconds"])
            lo, re, tr = (statistics.median(v) for v in (local, remote, transfer))
            rows.append((task, lo, re, tr, (re - lo - tr) / lo, client.last_transfer["sent"],
                         client.last_transfer["received"]))
        print("\n| task | local s | remote s | transfer s | overhead beyond transfer | sent per job "
              "| received per job |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for task, lo, re, tr, over, sent, got in rows:
            print(f"| {task} | {lo:.2f} | {re:.2f} | {tr:.2f} | {over:+.1%} | {sent / 2**20:.2f} MiB | "
                  f"{got / 2**20:.2f} MiB |")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
