"""Hook for the ``pseudo`` connection: the pseudonymisation key and its options."""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from airflow_pseudo.pseudonymisation import PseudonymKey, Settings

#: Connection extras read by :meth:`PseudoHook.get_settings`, mapped to ``Settings`` fields.
_TEXT_EXTRAS = ("strategy", "profile", "uid_root", "pymedphys_config")


def _blank_to_none(value: Any) -> Any:
    """Treat an empty form value as unset."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def mask_key_text(text: str) -> None:
    """
    Register key text with the secrets masker of this process and of the task's supervisor.

    Airflow's :func:`~airflow.sdk.log.mask_secret` tells the supervisor by sending it the value,
    and the in-process supervisor of ``dag.test()`` logs every message it is sent at DEBUG
    level, the value included. The supervisor of a real task omits the body of that message; the
    in-process one shares this process's masker, so it needs no message at all.
    """
    from airflow.sdk._shared.secrets_masker import _secrets_masker
    from airflow.sdk.execution_time import supervisor, task_runner

    _secrets_masker().add_mask(text)
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None or isinstance(comms, supervisor.InProcessSupervisorComms):
        return
    from airflow.sdk.log import mask_secret

    mask_secret(text)


class PseudoHook(BaseHook):
    """
    Read the pseudonymisation key and options from a ``pseudo`` connection.

    The key is the connection's password; it is masked in task logs as soon as it is read and is
    never logged. If the password is empty, the key falls back to the ``AIRFLOW_PSEUDO_KEY``
    environment variable (the core's :func:`~airflow_pseudo.pseudonymisation.load_key`).

    Extras (all optional): ``strategy`` (``keyed`` or ``pymedphys``), ``profile``
    (``basic``, ``default``, ``research``, ``pymedphys`` or a profile file's path),
    ``uid_root``, ``date_shift_min_days`` and ``date_shift_max_days`` (or ``date_shift_days``
    as ``[min, max]`` / ``"min,max"``) and
    ``pymedphys_config`` (path to a PyMedPhys ``config.toml``).

    Example connection as an environment variable::

        AIRFLOW_CONN_PSEUDO_DEFAULT='{"conn_type": "pseudo", "password": "<secret>",
                                      "extra": {"uid_root": "1.2.826.0.1.1234"}}'

    :param pseudo_conn_id: The connection id. Defaults to ``pseudo_default``.
    """

    conn_name_attr = "pseudo_conn_id"
    default_conn_name = "pseudo_default"
    conn_type = "pseudo"
    hook_name = "DICOM pseudonymisation key"

    def __init__(self, pseudo_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pseudo_conn_id = pseudo_conn_id

    @cached_property
    def connection(self) -> Connection:
        """Return the Airflow connection (looked up once)."""
        return self.get_connection(self.pseudo_conn_id)

    def get_key(self) -> PseudonymKey:
        """Return the key from the connection's password, else from ``$AIRFLOW_PSEUDO_KEY``."""
        from airflow_pseudo.pseudonymisation import PseudonymKey, load_key
        from airflow_pseudo.pseudonymisation.keys import KEY_ENV_VAR

        environ_key = os.environ.get(KEY_ENV_VAR)
        password = _blank_to_none(self.connection.password)
        if password is None:
            if environ_key and environ_key.strip():
                mask_key_text(environ_key.strip())
            return load_key()
        # Airflow masked the password when it fetched the connection: masking it again would
        # only send it to the supervisor a second time.
        return PseudonymKey.from_text(password)

    def get_extras(self) -> dict[str, Any]:
        """Return the connection's extras as ``Settings`` keyword arguments (unset ones omitted)."""
        extra = {k: _blank_to_none(v) for k, v in self.connection.extra_dejson.items()}
        # The UI of older Airflow versions may prefix extras with ``extra__pseudo__``.
        for name in list(extra):
            if name.startswith("extra__pseudo__"):
                extra.setdefault(name.removeprefix("extra__pseudo__"), extra.pop(name))
        from airflow_pseudo.pseudonymisation.policy.recipe import parse_date_shift_days

        kwargs: dict[str, Any] = {k: extra[k] for k in _TEXT_EXTRAS if extra.get(k) is not None}
        if extra.get("date_shift_days") is not None:
            kwargs["date_shift_days"] = parse_date_shift_days(extra["date_shift_days"])
        low, high = extra.get("date_shift_min_days"), extra.get("date_shift_max_days")
        if low is not None or high is not None:
            if low is None or high is None:
                raise ValueError("set both date_shift_min_days and date_shift_max_days, or neither")
            kwargs["date_shift_days"] = parse_date_shift_days((low, high))
        return kwargs

    def get_settings(self, **overrides: Any) -> Settings:
        """
        Build the core's ``Settings`` from the connection, then apply ``overrides``.

        An override of ``None`` leaves the connection's value in place. The key is loaded unless the
        strategy is ``pymedphys`` and no key is configured.

        :param overrides: Any ``Settings`` field, e.g. ``strategy="pymedphys"``.
        :raises ConfigurationError: For invalid extras or settings.
        :raises MissingKeyError: When the keyed strategy has no key.
        """
        from airflow_pseudo.pseudonymisation import (
            ConfigurationError,
            MissingKeyError,
            build_recipe,
        )

        try:
            kwargs = self.get_extras()
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"connection {self.pseudo_conn_id!r} has an invalid extra: {exc}"
            ) from exc
        kwargs.update({k: v for k, v in overrides.items() if _blank_to_none(v) is not None})
        if "key" not in kwargs:
            try:
                kwargs["key"] = self.get_key()
            except MissingKeyError:
                if kwargs.get("strategy", "keyed") == "keyed":
                    raise
        return build_recipe(**kwargs)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key (present, long enough) and then the profile; never reveal the key.

        The UI's Test button calls this on the API server, so a key given only to the workers
        (``$AIRFLOW_PSEUDO_KEY``) is reported missing there.
        """
        from airflow_pseudo.pseudonymisation.keys import MINIMUM_KEY_BYTES

        try:
            settings = self.get_settings()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if settings.key is None:
            key = "no key (the pymedphys strategy uses its config)"
        else:
            key = f"key of at least {MINIMUM_KEY_BYTES} bytes, key id {settings.key.key_id}"
        return True, (
            f"Settings OK: {key}; profile {settings.profile} loads; strategy {settings.strategy}"
        )
