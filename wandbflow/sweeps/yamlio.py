"""Sweep configs as YAML, read and written the way W&B reads them.

W&B reads ``1e-4`` as a number, while YAML 1.1 (PyYAML) reads it as a string. The loader here reads such scalars
as floats, and the dumper quotes a string that the loader would otherwise read back as a number, so
``load(dump(config)) == config``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


@functools.cache
def loader() -> Any:
    """A safe YAML loader class that reads ``1e-4`` as a float."""
    import yaml

    class Loader(yaml.SafeLoader):
        """A safe YAML loader that reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


@functools.cache
def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        """A safe YAML dumper that resolves plain scalars as :func:`loader` does (so it quotes ``"1e-4"``)."""

    Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in loader().yaml_implicit_resolvers.items()}
    return Dumper


def dump(data: Mapping[str, Any]) -> str:
    """``data`` as YAML that :func:`loader` reads back unchanged, keys in the order given."""
    import yaml

    return str(yaml.dump(dict(data), Dumper=_dumper(), sort_keys=False))
