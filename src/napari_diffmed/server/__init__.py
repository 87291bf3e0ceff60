"""``napari-diffmed serve``: the task functions behind HTTP, with a job queue on the server's GPU.

Only this package imports the web stack (FastAPI, uvicorn). :mod:`.config` stays light, so the
command refuses a bad start before loading anything; :func:`.app.create_app` builds the app.
"""
