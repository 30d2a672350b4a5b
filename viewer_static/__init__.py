"""The embedded OHIF viewer: our committed configuration (app-config.js), the prebuilt bundle
`minipacs viewer install` unpacks next to it (ohif/, not committed), and the routes that serve
both at the site root."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "app-config.js"
BUNDLE_DIR = HERE / "ohif"
VERSION_FILE = ".ohif-version"  # inside BUNDLE_DIR: the @ohif/app version it holds
