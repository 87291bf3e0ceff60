"""The command the shipped model cards record, ``python -m napari_diffmed.training.evaluate NAME --write``:
it runs :mod:`napari_diffmed.evaluation.model`, where model evaluation lives (training/ imports nothing from
evaluation/)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("napari_diffmed.evaluation.model", run_name="__main__", alter_sys=True)
