"""Shared fixtures. SoftHSM: one private token directory per test session."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from pathlib import Path

import pytest
from support import require

from tokens import softhsm

# Fixture modules, registered as plugins so test modules use their fixtures by name
# without importing them.
pytest_plugins = ["fixtures_card", "fixtures_center", "inquiry_support"]


@pytest.fixture(scope="session", autouse=True)
def softhsm_conf(tmp_path_factory) -> Path:
    """DIR/softhsm2.conf, exported as SOFTHSM2_CONF for the whole test process.

    Autouse and session-scoped so it is set before any test loads a PKCS#11
    module: SoftHSM reads the variable once per process, at C_Initialize.
    """
    conf_path = softhsm.write_softhsm_config(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf_path)
    yield conf_path
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def softhsm_module() -> str:
    try:
        return softhsm.find_softhsm_module()
    except softhsm.SoftHsmError:
        require("SoftHSM (libsofthsm2.so)", False)


@pytest.fixture(scope="session")
def make_softhsm_token(softhsm_conf):
    """Factory: make_softhsm_token(label=None) -> (label, so_pin, user_pin).

    Each call initialises a fresh token in the session's token directory.
    open_pkcs11_token finds tokens made after the module was loaded.
    """
    require("softhsm2-util", shutil.which(softhsm.SOFTHSM_UTIL) is not None)
    serial_numbers = itertools.count(1)

    def make(label: str | None = None) -> tuple[str, str, str]:
        label = label or f"test-{next(serial_numbers)}-{secrets.token_hex(3)}"
        so_pin = "so-" + secrets.token_hex(6)
        user_pin = "pin-" + secrets.token_hex(4)
        softhsm.init_softhsm_token(softhsm_conf, label, so_pin, user_pin)
        return label, so_pin, user_pin

    return make
