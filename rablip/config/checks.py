"""Value checks of the config schema's ``__post_init__`` methods: a value of the right type that is not
allowed raises :class:`ConfigValueError` naming its dotted key, which the loader turns into a message
that also names the file the value came from."""

from __future__ import annotations

from rablip.errors import ConfigError


class ConfigValueError(ConfigError):
    """A value of the right type that is not allowed (a choice or range check)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigValueError(key, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")


def check_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigValueError(key, f"{value} is outside [{lo}, {hi}]")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigValueError(key, f"{value} must be {'>= 0' if allow_zero else '> 0'}")
