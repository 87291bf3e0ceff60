"""``napari-diffmed serve`` on 127.0.0.1 (CPU, tiny models) and its client: the same results as local runs,
tokens, limits, cancellation, the queue, results' lifetime, the CLI's --server, refused starts. (A server
killed mid-job: tests/test_remote_widgets.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
import threading

import httpx
import numpy as np
import pytest

import napari_diffmed as dm
from napari_diffmed.remote import Client, ServerRefused
from server_helpers import one_thread

SERVER_KEYS = {"server", "server_device", "server_gpu", "server_version"}
RUN_KEYS = {"seconds", "model_path"}  # where and how long: the rest of the provenance must match


def assert_same_result(remote, local) -> None:
    assert type(remote) is type(local)
    for field in dataclasses.fields(local):
        a, b = getattr(remote, field.name), getattr(local, field.name)
        if field.name == "provenance":
            assert {k: v for k, v in a.items() if k not in SERVER_KEYS | RUN_KEYS} == json.loads(json.dumps(
                {k: v for k, v in b.items() if k not in RUN_KEYS}))
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        elif isinstance(b, list) and b and dataclasses.is_dataclass(b[0]):
            for x, y in zip(a, b, strict=True):
                assert_same_result(x, y)
        else:
            assert a == b


@pytest.fixture
def client(remote_server):
    url, token, _ = remote_server
    return Client(url, token=token)


def health(remote_server) -> dict:
    url, token, _ = remote_server
    return httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}).json()


@pytest.fixture
def calls(tiny_image_model, tiny_seg_model, small_volume):
    """task -> (positional args, keyword args of the local run, the same for the server)."""
    p = small_volume
    return {
        "synthesize": ((), dict(n=2, steps=4, seed=3, class_name="lesion", guidance=2.0)),
        "guidance_sweep": ((), dict(scales=(0.0, 2.0), n=1, steps=3, seed=1)),
        "segment_ensemble": ((p.image, p.spacing), dict(members=3, steps=3, seed=2, indices=[2, 3])),
        "inpaint": ((p.image, p.mask, p.spacing), dict(proposals=2, steps=4, jump_length=2, resamplings=2, seed=1)),
        "anomaly_map": ((p.image, p.spacing), dict(method="ddim", depth=200, steps=10, indices=range(2, 4), seed=4)),
    }


@pytest.mark.parametrize("task", ["synthesize", "guidance_sweep", "segment_ensemble", "inpaint", "anomaly_map"])
def test_each_task_through_the_client_equals_the_local_run(client, calls, task, tiny_image_model, tiny_seg_model,
                                                           remote_server):
    args, kwargs = calls[task]
    local_model = tiny_seg_model if task == "segment_ensemble" else tiny_image_model
    with one_thread():
        local = getattr(dm, task)(*args, model=local_model, device="cpu", **kwargs)
    events = []
    remote = getattr(client, task)(*args, model="tiny_seg" if task == "segment_ensemble" else "tiny_image",
                                   callback=events.append, **kwargs)
    assert_same_result(remote, local)
    for res in getattr(remote, "results", [remote]):
        assert res.provenance["server"] == remote_server[0] and res.provenance["server_device"] == "cpu"
    assert events and events[-1].done == events[-1].total > 0


def test_iter_form_streams_the_local_progress_with_bounded_previews(client, small_volume, tiny_seg_model):
    p = small_volume
    kw = dict(members=2, steps=3, seed=0, indices=[1, 2, 3])
    with one_thread():
        local = list(dm.iter_segment_ensemble(p.image, p.spacing, model=tiny_seg_model, device="cpu", **kw))
    remote = list(client.iter_segment_ensemble(p.image, p.spacing, model="tiny_seg", **kw))
    assert [(e.done, e.total, e.message) for e in remote] == [(e.done, e.total, e.message) for e in local]
    shown = [e for e in remote if e.preview is not None]
    assert shown and shown[-1].done == shown[-1].total  # the final state always arrives
    assert all(e.preview.shape == p.image.shape for e in shown)
    np.testing.assert_array_equal(shown[-1].preview, local[-1].preview)


def test_a_missing_or_wrong_token_gets_401_and_runs_nothing(remote_server, small_volume):
    url, token, _ = remote_server
    before = health(remote_server)["queue"]["jobs_started"]
    job = {"task": "iter_synthesize", "kwargs": {"model": "tiny_image", "n": 1, "steps": 2}}
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": f"Basic {token}"}):
        for path, body in (("/jobs", {"json": job}), ("/uploads", {"content": b"x" * 10}), ("/health", {})):
            response = httpx.request("GET" if path == "/health" else "POST", url + path, headers=headers, **body)
            assert response.status_code == 401 and "bearer token" in response.json()["detail"]
    with pytest.raises(ServerRefused, match="401") as err:
        Client(url, token="wrong-token-of-some-length").synthesize(model="tiny_image", n=1, steps=2)
    assert err.value.status == 401
    assert health(remote_server)["queue"]["jobs_started"] == before


def npy(array, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_oversized_or_malformed_requests_get_413_or_422_with_a_message(remote_server, client):
    url, token, _ = remote_server
    auth = {"Authorization": f"Bearer {token}"}
    before = health(remote_server)["queue"]["jobs_started"]

    def upload(data: bytes):
        return httpx.post(f"{url}/uploads", content=data, headers=auth)

    def submit(job):
        return httpx.post(f"{url}/jobs", json=job, headers=auth)

    refused = {
        "voxels": (upload(npy(np.zeros((400, 400), np.uint8))), 413, "160000 voxels, more than this server's limit"),
        "bytes": (upload(npy(np.zeros((600, 600), np.float32))), 413, "larger than this server's limit of 1048576"),
        "garbage": (upload(b"not an array at all"), 422, "not a .npy array"),
        "pickle": (upload(npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)), 422, "no objects or pickles"),
        "dims": (upload(npy(np.zeros((2, 2, 2, 2), np.float32))), 422, "at most 3 dimensions"),
        "truncated": (upload(npy(np.zeros((8, 8), np.float32))[:-5]), 422, "does not match its header"),
        "setting": (submit({"task": "iter_synthesize", "kwargs": {"n": 1, "stepz": 3}}), 422,
                    "unknown settings ['stepz']"),
        "task": (submit({"task": "iter_train", "kwargs": {}}), 422, "unknown task 'iter_train'"),
        "path": (submit({"task": "iter_synthesize", "kwargs": {"model": "/tmp/evil.safetensors"}}), 422,
                 "only the models it knows"),
        "json": (httpx.post(f"{url}/jobs", content=b"{not json", headers=auth), 422, "a job is JSON"),
        "upload id": (submit({"task": "iter_segment_ensemble", "arrays": {"image": "nope"}}), 422,
                      "unknown upload ids"),
        "no image": (submit({"task": "iter_segment_ensemble", "kwargs": {}}), 422, "missing a required argument"),
    }
    for name, (response, status, message) in refused.items():
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["detail"], (name, response.json())
    with pytest.raises(ValueError, match="only the models it knows"):  # refused by the client before sending
        client.synthesize(model="/some/where/my_model.safetensors", n=1)
    assert health(remote_server)["queue"]["jobs_started"] == before


def test_cancel_on_the_client_stops_the_server_job_within_one_step(client, remote_server):
    url, token, _ = remote_server
    run = client.iter_synthesize(model="tiny_image", n=2, steps=400, seed=0)
    seen = [next(run) for _ in range(3)]
    run.close()
    status = httpx.get(f"{url}/jobs/{client.last_job_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert status["state"] == "cancelled" and status["cancel_reason"] == "cancelled by the client"
    assert seen[-1].done <= status["done_at_cancel"] and status["done"] - status["done_at_cancel"] <= 1
    assert status["done"] < 400


def test_a_client_that_disconnects_has_its_job_cancelled(remote_server):
    url, token, _ = remote_server
    auth = {"Authorization": f"Bearer {token}"}
    job = {"task": "iter_synthesize", "kwargs": {"model": "tiny_image", "n": 2, "steps": 400}}
    with httpx.stream("POST", f"{url}/jobs", json=job, headers=auth) as response:
        job_id = response.headers["x-job-id"]
        lines = response.iter_lines()
        while "progress" not in next(lines):
            pass
    for _ in range(100):  # the server notices at its next send, within a heartbeat
        status = httpx.get(f"{url}/jobs/{job_id}", headers=auth).json()
        if status["state"] == "cancelled":
            break
        threading.Event().wait(0.1)
    assert status["state"] == "cancelled" and status["cancel_reason"] == "the client disconnected"


def test_two_clients_at_once_are_queued_in_order_and_both_finish(remote_server, tiny_image_model):
    url, token, _ = remote_server
    results, events = {}, {"a": [], "b": []}

    def work(name: str, seed: int) -> None:
        results[name] = Client(url, token=token).synthesize(model="tiny_image", n=2, steps=30, seed=seed,
                                                            callback=events[name].append)

    first = threading.Thread(target=work, args=("a", 1))
    first.start()
    while not events["a"]:  # a runs
        threading.Event().wait(0.02)
    second = threading.Thread(target=work, args=("b", 2))
    second.start()
    first.join(60)
    second.join(60)
    queued = [e.message for e in events["b"] if e.total == 0]
    assert queued and "number 1 in line" in queued[0]
    assert not any(e.total == 0 for e in events["a"])
    for name, seed in (("a", 1), ("b", 2)):
        with one_thread():
            local = dm.synthesize(model=tiny_image_model, n=2, steps=30, seed=seed, device="cpu")
        np.testing.assert_array_equal(results[name].samples, local.samples)


def test_a_full_queue_gets_429_and_runs_nothing(remote_server, client):
    url, token, _ = remote_server
    runs = [Client(url, token=token).iter_synthesize(model="tiny_image", n=1, steps=1000) for _ in range(3)]
    try:
        next(runs[0])  # running
        for run in runs[1:]:  # waiting: the server takes 2
            assert "in line" in next(run).message
        before = health(remote_server)["queue"]
        with pytest.raises(ServerRefused, match="queue is full") as err:
            client.synthesize(model="tiny_image", n=1, steps=2)
        assert err.value.status == 429
        assert health(remote_server)["queue"]["jobs_started"] == before["jobs_started"]
    finally:
        for run in runs:
            run.close()


def test_results_are_deleted_after_their_time_to_live(remote_server):
    url, token, _ = remote_server
    auth = {"Authorization": f"Bearer {token}"}
    job = {"task": "iter_synthesize", "kwargs": {"model": "tiny_image", "n": 1, "steps": 2}}
    with httpx.stream("POST", f"{url}/jobs", json=job, headers=auth) as response:
        job_id = response.headers["x-job-id"]
        assert any(line == "event: done" for line in response.iter_lines())
    assert httpx.get(f"{url}/jobs/{job_id}/arrays/r.samples", headers=auth).status_code == 200
    for _ in range(150):
        gone = httpx.get(f"{url}/jobs/{job_id}", headers=auth)
        if gone.status_code == 404:
            break
        threading.Event().wait(0.1)
    assert gone.status_code == 404 and "kept 5 s" in gone.json()["detail"]


def test_models_and_health_describe_the_server(client):
    names = {card["name"]: card for card in client.models()}
    assert names["tiny_seg"]["task"] == "segmentation" and names["tiny_image"]["class_names"] == ["healthy", "lesion"]
    state = client.health()
    assert state["device"] == "cpu" and state["gpu"] is None and state["version"] == dm.__version__
    assert set(state["queue"]) >= {"running", "waiting", "max_waiting", "concurrency"}
    assert client.load("segmentation", "tiny_seg").model_id.startswith("tiny_seg@")
    with pytest.raises(ValueError, match="is a segmentation model"):
        client.load("synthesis", "tiny_seg")


COMMANDS = {  # command -> (its arguments after the scan, the model it uses, its files)
    "segment": (["--members", "2", "--steps", "2", "--slices", "2:4"], "tiny_seg", 6),
    "anomaly": (["--steps", "10", "--depth", "200", "--slices", "2:4"], "tiny_image", 4),
    "inpaint": (["{mask}", "--steps", "4", "--jump-length", "2", "--proposals", "2"], "tiny_image", 5),
    "sample": (["-n", "2", "--steps", "3"], "tiny_image", 1),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_with_server_writes_what_a_local_run_writes(command, remote_server, tmp_path, small_volume,
                                                                tiny_seg_model, tiny_image_model, monkeypatch, capsys):
    from napari_diffmed.cli import main
    from napari_diffmed.io import read_nifti, write_nifti

    url, token, _ = remote_server
    options, model, n_files = COMMANDS[command]
    p = small_volume
    scan = write_nifti(tmp_path / "sub01.nii.gz", p.image, scale=p.spacing)
    mask = write_nifti(tmp_path / "lesion.nii.gz", p.mask.astype(np.uint8), scale=p.spacing, labels=True)
    inputs = [] if command == "sample" else [str(scan)]
    common = [command, *inputs, *(o.format(mask=mask) for o in options), "--quiet"]
    local_model = str(tiny_seg_model if model == "tiny_seg" else tiny_image_model)
    with one_thread():
        assert main([*common, "--out", str(tmp_path / "local"), "--model", local_model, "--device", "cpu"]) == 0
    monkeypatch.setenv("NAPARI_DIFFMED_TOKEN", token)
    assert main([*common, "--out", str(tmp_path / "remote"), "--model", model, "--server", url]) == 0
    files = sorted(p.name for p in (tmp_path / "local").glob("*.nii.gz"))
    assert files == sorted(p.name for p in (tmp_path / "remote").glob("*.nii.gz")) and len(files) == n_files
    for name in files:
        remote, local = (read_nifti(tmp_path / where / name)[0] for where in ("remote", "local"))
        np.testing.assert_array_equal(remote, local)
    record = json.loads(next((tmp_path / "remote").glob("*.json")).read_text())
    assert url in json.dumps(record) and token not in json.dumps(record)
    if command != "segment":
        return
    assert main([*common, "--out", str(tmp_path / "x"), "--server", url, "--model", local_model]) == 2
    assert "only the models it knows" in capsys.readouterr().err
    monkeypatch.setenv("NAPARI_DIFFMED_TOKEN", "a-wrong-token-of-some-length")
    assert main([*common, "--out", str(tmp_path / "y"), "--server", url]) == 2
    assert "refused the request (401)" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "gpu.example.org"])
def test_a_non_loopback_bind_without_a_token_is_refused(host, capsys):
    from napari_diffmed.cli import main

    assert main(["serve", "--host", host, "--device", "cpu"]) == 2
    assert f"refusing to listen on {host!r} without a token" in capsys.readouterr().err


def test_weak_or_exposed_tokens_are_refused(tmp_path, capsys):
    from napari_diffmed.cli import main

    short, shared = tmp_path / "short", tmp_path / "shared"
    short.write_text("abc\n")
    short.chmod(0o600)
    shared.write_text("a-long-enough-token-for-the-test\n")
    shared.chmod(0o644)
    assert main(["serve", "--token-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", "--token-file", str(shared)]) == 2
    assert "can be read by other users" in capsys.readouterr().err


def test_previews_are_bounded_and_restored_to_the_input_grid():
    from napari_diffmed.wire import grow_preview, shrink_preview

    full = np.arange(30 * 40 * 50, dtype=np.float32).reshape(30, 40, 50)
    part, stride = shrink_preview(full, 5000)
    assert part.size <= 5000 and stride == 3  # stride 2 would leave 15 x 20 x 25 = 7500 voxels
    back = grow_preview(part, stride, full.shape)
    assert back.shape == full.shape and back[4, 8, 13] == full[3, 6, 12]
    assert shrink_preview(full, full.size)[1] == 1


def test_the_client_and_the_wire_format_stay_light():
    import subprocess
    import sys

    code = ("import sys, napari_diffmed.remote, napari_diffmed.wire, napari_diffmed.server.config, napari_diffmed.cli\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'fastapi', 'uvicorn', 'httpx', "
            "'starlette', 'qtpy', 'napari'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_client_may_lower_a_jobs_memory_bound_but_not_raise_it():
    from napari_diffmed.ensemble import DEFAULTS as SEG
    from napari_diffmed.server.tasks import RequestRefused, prepare_call

    image = {"image": np.zeros((4, 4), np.float32)}
    for asked, used in ((2**50, SEG.max_bytes), (1000, 1000)):
        _, call = prepare_call("iter_segment_ensemble", {"max_bytes": asked, "device": "cuda"}, image, "cpu", 0.5)
        assert call["max_bytes"] == used and call["device"] == "cpu"  # and the server's device, always
    with pytest.raises(RequestRefused, match="max_bytes must be a whole number"):
        prepare_call("iter_segment_ensemble", {"max_bytes": "lots"}, image, "cpu", 0.5)
