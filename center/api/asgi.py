"""ASGI entry point for uvicorn workers: each worker loads the center from CENTER_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from center.api.app import create_app
from center.api.ratelimit import limits_from_config
from center.ops.bootstrap import load_center
from center.storage.config import CenterConfig


def create_from_environment() -> FastAPI:
    config = CenterConfig.load(Path(os.environ["CENTER_DATA_DIR"]))
    return create_app(
        load_center(config), limits=limits_from_config(config), deadline_s=config.request_deadline_s
    )
