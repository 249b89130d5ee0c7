"""Network options typed by users: ``"base_width=16, backbone=resnet50"`` -> a kwargs dict."""

from __future__ import annotations

from ..errors import MapSegError


def parse_net_options(text: str | None) -> dict:
    """Numbers become int or float, true/false booleans, anything else stays text."""
    options = {}
    for item in (text or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise MapSegError(
                f"Cannot read the network option '{item.strip()}': write key=value, e.g. "
                "'base_width=16' or 'backbone=resnet50'."
            )
        key, value = (s.strip() for s in item.split("=", 1))
        options[key] = _typed(value)
    return options


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(value.lower(), value)
