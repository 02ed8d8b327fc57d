"""e5-omni tooling: the command line, data, evaluation, conversion, release folders, publishing and training.

The model itself is `modeling_e5omni` (the code that ships inside every Hub repo). This package holds what runs
around it; `e5omni.train` (the repository's `train/` folder) and `e5omni.model_card` (`model_card/`) are mapped into
it by pyproject.toml so that nothing we install has a generic top-level name.
"""

__version__ = "0.1.0"
