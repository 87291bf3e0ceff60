"""The client of ``napari-diffmed serve``: the package's task functions, run on a server's GPU.

>>> client = Client("https://gpu.lab:8765")  # doctest: +SKIP
>>> seg = client.segment_ensemble(scan, spacing, members=8, indices=range(40, 52))  # doctest: +SKIP

A :class:`Client` has the same task functions and ``iter_`` forms as the package root, with the same
arguments, and returns the same result dataclasses; their provenance also names the server and its
device. Models are the server's, by name; arrays travel as ``.npy`` without pickle. The token comes
from ``token=``, else ``$NAPARI_DIFFMED_TOKEN``, else the user's server list (:func:`config_path`).
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator

import numpy as np

from .progress import Progress, drive
from .server_list import ENV_CONFIG, ENV_TOKEN, config_path, save_server, saved_servers, token_for  # noqa: F401
from .wire import decode_result, from_npy, grow_preview, jsonable, to_npy

# plain form -> (module, iter form)
TASKS = {
    "synthesize": ("synthesis", "iter_synthesize"),
    "guidance_sweep": ("synthesis", "iter_guidance_sweep"),
    "segment_ensemble": ("ensemble", "iter_segment_ensemble"),
    "inpaint": ("inpainting", "iter_inpaint"),
    "anomaly_map": ("anomaly", "iter_anomaly_map"),
}


class ServerConnectionError(ConnectionError):
    """The server could not be reached, or went away before the job's result arrived."""


class ServerRefused(ValueError):
    """The server refused a request (``status``: 401 token, 413 too large, 422 bad settings, 429 busy)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the server refused the request ({status}): {message}")
        self.status = status


@dataclass(frozen=True)
class RemoteModel:
    """A server's model: its card and id (the weights stay on the server)."""

    card: Any
    model_id: str
    path: str


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as (kind, JSON data); a comment (the server's heartbeat) as ("heartbeat", {})."""
    kind, data = "message", []
    for line in lines:
        if line.startswith(":"):
            yield "heartbeat", {}
        elif not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class Client:
    """A napari-diffmed server at ``url``; see the module's docstring. ``timeout``: seconds without a word
    from the server (it sends one every few seconds) before the connection counts as lost."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        try:
            import httpx  # noqa: F401
        except ModuleNotFoundError:
            raise ValueError("a server client needs httpx: pip install 'napari-diffmed[server]'") from None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        self.url, self.timeout = url.rstrip("/"), float(timeout)
        self._token = token or token_for(self.url)
        self.last_job_id: str | None = None
        self.last_transfer: dict[str, float] = {}

    def __repr__(self) -> str:  # never shows the token
        return f"Client({self.url!r})"

    def _http(self):
        import httpx

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(self.timeout, connect=10.0))

    def _call(self, method: str, path: str, http=None, **kwargs):
        import httpx

        try:
            if http is None:
                with self._http() as own:
                    response = own.request(method, path, **kwargs)
            else:
                response = http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ServerConnectionError(f"cannot reach the server {self.url}: {err}") from None
        _check(response)
        return response

    def health(self) -> dict[str, Any]:
        """Version, device, GPU name and memory, queue."""
        return self._call("GET", "/health").json()

    def models(self) -> list[dict[str, Any]]:
        """The server's model cards (as JSON)."""
        return self._call("GET", "/models").json()

    def model(self, name: str, task: str) -> RemoteModel:
        """The server's model ``name``, checked to be made for ``task``."""
        from .models import ModelCard

        cards = {c["name"]: c for c in self.models()}
        if name not in cards:
            raise ValueError(f"unknown model {name!r} on {self.url}; it has {sorted(cards)}")
        card = ModelCard.from_dict({k: v for k, v in cards[name].items() if k != "source"}, source=self.url)
        if card.task != task:
            raise ValueError(f"model {name!r} is a {card.task} model; this needs a {task} model")
        return RemoteModel(card, f"{card.name}@{card.weights_sha256[:12]}", f"{self.url}/models/{name}")

    def load(self, task: str, model: str | None = None, device: str = "auto") -> RemoteModel:
        """The server's model for ``task``, as :func:`napari_diffmed.models.load` names it (``device``: the
        server's own)."""
        from .ensemble import check_segmentation_card
        from .models.registry import TASK_MODELS, default_model

        if task not in TASK_MODELS:
            raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_MODELS)}")
        kind = TASK_MODELS[task][0]
        loaded = self.model(_name(model) or default_model(kind, 2, task), kind)
        if task == "segmentation":
            check_segmentation_card(loaded.card)
        return loaded

    def run(self, task: str, arguments: dict[str, Any]) -> Generator[Progress, None, Any]:
        """Run ``iter_<task>`` on the server with ``arguments``; yields progress, returns the result.
        Closing the generator cancels the job on the server."""
        import httpx

        arrays = {k: np.asarray(v) for k in ("image", "mask", "fixed") if (v := arguments.pop(k, None)) is not None}
        arguments.pop("device", None)  # the server's device
        arguments.pop("metadata", None)  # the reader's header stays here; the server checks the scan itself
        settings = arguments.pop("settings", None)
        if arguments.get("model") is None:
            arguments.pop("model", None)  # None: the settings' model (or the server's default)
        else:
            arguments["model"] = _name(arguments["model"])
        body = {"task": task, "kwargs": jsonable(arguments)}
        if settings is not None:  # the task's settings object, as its JSON fields (the server rebuilds it)
            fields = settings.to_dict()
            fields.pop("device", None)
            if fields.get("model") is not None:
                fields["model"] = _name(fields["model"])
            body["settings"] = fields
        sent = received = 0
        start = time.perf_counter()
        try:
            with self._http() as http:
                refs = {}
                for name, array in arrays.items():
                    data = to_npy(array)
                    sent += len(data)
                    refs[name] = self._call("POST", "/uploads", http, content=data,
                                            headers={"Content-Type": "application/octet-stream"}).json()["id"]
                uploading = time.perf_counter() - start
                with http.stream("POST", "/jobs", json={**body, "arrays": refs}) as response:
                    if response.status_code != 200:
                        response.read()
                        _check(response)
                    job, final = yield from self._follow(http, response)
                    received += response.num_bytes_downloaded
                fetch = time.perf_counter()
                out = {}
                for name in final["arrays"]:
                    got = self._call("GET", f"/jobs/{job}/arrays/{name}", http)
                    received += len(got.content)
                    out[name] = from_npy(got.content)
                downloading = time.perf_counter() - fetch
                try:
                    http.delete(f"/jobs/{job}")
                except httpx.TransportError:
                    pass  # the server deletes it after its time to live
        except httpx.TransportError as err:
            raise ServerConnectionError(f"lost the connection to the server {self.url} before the result "
                                        f"arrived: {err or type(err).__name__}") from None
        self.last_transfer = {"sent": sent + len(json.dumps(body)), "received": received,
                              "transfer_seconds": round(uploading + downloading, 3)}
        result = decode_result(final["result"], out)
        server = final.get("server", {})
        gpu = (server.get("gpu") or {}).get("name")
        for res in getattr(result, "results", [result]):
            res.provenance.update(server=self.url, server_device=server.get("device"), server_gpu=gpu,
                                  server_version=server.get("version"))
        return result

    def _follow(self, http, response) -> Generator[Progress, None, tuple[str, dict[str, Any]]]:
        """Yield the job's progress; return its id and ``done`` event. Closing cancels the job."""
        job, waiting = None, None
        events = _events(response.iter_lines())  # held here: dropping it would close the stream before the cancel
        try:
            for kind, data in events:
                if kind == "accepted":
                    job = self.last_job_id = data["job"]
                elif kind == "queued":
                    waiting = Progress(0, 0, None, f"queued on {self.url}: number {data['position']} in line")
                    yield waiting
                elif kind == "heartbeat" and waiting is not None:
                    yield waiting  # a waiting job's consumer can still cancel it every few seconds
                elif kind == "started":
                    waiting = None
                elif kind == "progress":
                    yield Progress(data["done"], data["total"], _preview(data.get("preview")), data["message"])
                elif kind == "done":
                    return job, data
                elif kind == "failed":
                    if data["type"] == "ValueError":
                        raise ValueError(data["message"])
                    raise RuntimeError(f"the job failed on {self.url}: {data['type']}: {data['message']}")
                elif kind == "cancelled":
                    raise ServerConnectionError(f"the server {self.url} stopped the job: {data['reason']}")
        except GeneratorExit:
            if job is not None:
                try:
                    http.post(f"/jobs/{job}/cancel", timeout=5.0)
                except Exception:  # noqa: BLE001 - closing the stream cancels it as well
                    pass
            raise
        raise ServerConnectionError(f"the server {self.url} ended the progress stream before the job ended")


def _check(response) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("detail", response.text)
        except ValueError:
            message = response.text
        raise ServerRefused(response.status_code, str(message))


def _name(model: Any) -> str | None:
    """A model name for the server; paths and loaded weights cannot be sent."""
    if model is None or isinstance(model, RemoteModel):
        return None if model is None else model.card.name
    text = str(model)
    if not isinstance(model, str) or text.endswith((".safetensors", ".json")) or os.sep in text or "/" in text:
        raise ValueError(f"a server runs only the models it knows, by name (no paths or weights); got {text!r}; "
                         "see Client.models()")
    return text


def _preview(data: dict[str, Any] | None) -> np.ndarray | None:
    if data is None:
        return None
    return grow_preview(from_npy(base64.b64decode(data["npy"])), int(data["stride"]), tuple(data["shape"]))


def _make(plain: str, iter_form: bool) -> Callable[..., Any]:
    module, iter_name = TASKS[plain]
    local = getattr(importlib.import_module(f"napari_diffmed.{module}"), iter_name if iter_form else plain)

    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(local).bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        for name, param in inspect.signature(local).parameters.items():
            if param.kind == param.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        if iter_form:
            return self.run(iter_name, arguments)
        progress = arguments.pop("callback", None)
        arguments.setdefault("preview", None)  # as the plain local form
        return drive(self.run(plain, arguments), progress)

    method.__name__ = method.__qualname__ = iter_name if iter_form else plain
    sig = inspect.signature(local)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()])
    method.__doc__ = f"{local.__doc__}\n\nRuns on the server (see :class:`Client`)."
    return method


for _plain in TASKS:
    setattr(Client, _plain, _make(_plain, False))
    setattr(Client, TASKS[_plain][1], _make(_plain, True))
