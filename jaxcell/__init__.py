"""jaxcell: image classifiers for ultra-small biomedical datasets, many models at once, and how far to trust them.

The Python API (jaxcell/api.py) is imported on first use, so `import jaxcell.data` stays light:

  jaxcell.run_study(config, workdir) -> StudyResults
  jaxcell.load_study(workdir) -> StudyResults
"""

_API = ("run_study", "load_study", "StudyResults")


def __getattr__(name):
  if name in _API:
    from jaxcell import api  # pylint: disable=import-outside-toplevel

    return getattr(api, name)
  raise AttributeError(f"module 'jaxcell' has no attribute {name!r}")


__all__ = list(_API)
