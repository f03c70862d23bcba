"""The audit options as the command line offers them, kept in ``flows/options.json`` so that ``featureaudit run``
builds its flags, shows its help and refuses a bad value without importing the table of methods (and with it
Prefect, SciPy, pandas and matplotlib: seconds, against a few milliseconds for the file).

The file is written from the table (:func:`build_spec`: ``python -m flows.option_spec``), and a test holds it equal
to the table, so a method's new option that is missing from it fails the tests, not a user. The value checks here
are the options' declared types and bounds; the full check (:func:`tasks.methods.table.parse_options`) still runs
before any model is loaded, for what only a method's own code can judge (``--ablation-budget``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("options.json")
BOUNDS = {"ge": "greater than or equal to", "gt": "greater than", "le": "less than or equal to", "lt": "less than"}


def build_spec() -> dict[str, Any]:
    """Every flat option of a run, from the table of methods: its type, default, bounds and help; and the
    methods, in table order."""
    import typing

    from tasks.methods.table import METHODS, AuditOptions, option_fields

    options = {}
    for name, info in option_fields().items():
        if name == "methods":
            continue
        kinds = [k for k in typing.get_args(info.annotation) if k is not type(None)] or [info.annotation]
        bounds = {key: getattr(m, key) for m in info.metadata for key in BOUNDS if hasattr(m, key)}
        options[name] = {"type": kinds[0].__name__ if kinds[0] in (int, float) else "str",
                         "default": info.get_default(call_default_factory=True), "bounds": bounds,
                         "help": info.description}
    return {"methods": list(METHODS), "default_methods": list(AuditOptions().methods), "options": options}


def load_spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def out_of_bounds(value: float, bounds: dict[str, float]) -> str | None:
    """Pydantic's words for the first bound ``value`` breaks ('Input should be greater than or equal to 1'), or
    None."""
    broken = {"ge": value < bounds.get("ge", value), "gt": "gt" in bounds and value <= bounds["gt"],
              "le": value > bounds.get("le", value), "lt": "lt" in bounds and value >= bounds["lt"]}
    key = next((k for k in BOUNDS if k in bounds and broken[k]), None)
    return None if key is None else f"Input should be {BOUNDS[key]} {bounds[key]:g}"


def unknown_method(methods: list[str], known: list[str]) -> str | None:
    """The table's words for a method it does not have, or None."""
    unknown = [m for m in methods if m not in known] or ([""] if not methods else [])
    if not unknown:
        return None
    return f"unknown method '{unknown[0]}'; choose from {','.join(known)}"


def precheck(argv: list[str], spec: dict[str, Any] | None = None) -> str | None:
    """The first bad audit option value in ``argv``, in the words :func:`tasks.methods.table.parse_options` uses
    ('--repeats 0: Input should be greater than or equal to 1'), or None. Reads only the spec: no method module is
    imported. Flags it does not know, abbreviations included, are left to the full parser."""
    import argparse

    from tasks.core.options import flag

    spec = spec or load_spec()
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--methods")
    for name in spec["options"]:
        parser.add_argument(flag(name), dest=name)
    given, _ = parser.parse_known_args(argv)
    if given.methods is not None:
        methods = [m.strip() for m in given.methods.split(",") if m.strip()]
        if (problem := unknown_method(methods, spec["methods"])) is not None:
            return f"--methods {methods or ['']!r}: {problem}"
    for name, option in spec["options"].items():
        text = getattr(given, name)
        if text is None or option["type"] == "str":
            continue
        try:
            value = int(text) if option["type"] == "int" else float(text)
        except ValueError:
            kind = "integer" if option["type"] == "int" else "number"
            return f"{flag(name)} {text!r}: Input should be a valid {kind}"
        if (problem := out_of_bounds(value, option["bounds"])) is not None:
            return f"{flag(name)} {value!r}: {problem}"
    return None


def spec_text() -> str:
    """``flows/options.json`` as :func:`build_spec` writes it."""
    return json.dumps(build_spec(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    SPEC_PATH.write_text(spec_text(), encoding="utf-8")
