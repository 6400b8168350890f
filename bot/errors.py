"""Errors that stop the bot before it connects; each becomes one readable line and exit status 2."""


class StartupError(Exception):
    """The bot cannot start; the message is shown to the operator as one line."""


class ConfigError(StartupError):
    """The configuration file or environment is invalid; the message names the offending key."""
