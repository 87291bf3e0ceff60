"""Where a widget's job runs: "this computer" (with the widget's device choice) or a saved server."""

from __future__ import annotations

from typing import Any, Callable

from magicgui.widgets import ComboBox

LOCAL = "this computer"


class BackendChoice(ComboBox):
    """"this computer" or a server from the user's server list (:func:`napari_diffmed.remote.config_path`).

    A server runs its own models by name on its own device, so ``device`` (the widget's device
    choice) is disabled while a server is chosen. Tokens come from the environment or the server
    list, never from layers.
    """

    def __init__(self, device: ComboBox | None = None) -> None:
        super().__init__(label="run on", choices=self._choices, value=LOCAL,
                         tooltip="this computer, or a napari-diffmed server from your server list "
                                 "(see docs/remote.md)")
        self._device = device
        self.client = None
        self.changed.connect(self._changed)

    def _choices(self, *_: Any) -> list[str]:
        from ..server_list import saved_servers

        try:
            return [LOCAL, *(s["url"] for s in saved_servers())]
        except ValueError:  # an unreadable server list leaves this computer
            return [LOCAL]

    @property
    def server(self) -> str | None:
        """The chosen server's URL, or None for this computer."""
        return None if self.value in (None, LOCAL) else self.value

    def task(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` (a task's ``iter_`` form), or the chosen server's function of that name. The client
        is made when the job starts, in the job's thread."""
        url = self.server
        if url is None:
            return function

        def remote(*args: Any, **kwargs: Any) -> Any:
            from ..remote import Client

            self.client = Client(url)  # its last_job_id names the job on the server
            return getattr(self.client, function.__name__)(*args, **kwargs)

        remote.__name__ = function.__name__
        return remote

    def _changed(self, *_: Any) -> None:
        if self._device is not None:
            self._device.enabled = self.server is None
