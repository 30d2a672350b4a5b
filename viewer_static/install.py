"""`minipacs viewer install`: fetch the prebuilt OHIF viewer (@ohif/app on npm) and unpack its
dist/ folder into viewer_static/ohif/. Idempotent: a bundle of the wanted version is kept."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from viewer_static import BUNDLE_DIR, VERSION_FILE

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.x"  # the app-config.js next to this module is written for OHIF 3.13
DIST = "package/dist/"
# Not needed to read images and 156 MB together: the ONNX runtime (AI segmentation) and the
# whole-slide microscopy viewer.
DROPPED = ("ort/", "dicom-microscopy-viewer/")
# Ours replaces it (served from viewer_static/app-config.js).
REPLACED = ("app-config.js",)
NPM_TIMEOUT = 600.0


class ViewerInstallError(Exception):
    """The viewer could not be installed; the message says why and what to do."""


def installed_version(bundle: Path = BUNDLE_DIR) -> str | None:
    """The @ohif/app version unpacked in `bundle`, or None when there is no usable bundle."""
    marker = bundle / VERSION_FILE
    if not (bundle / "index.html").is_file() or not marker.is_file():
        return None
    return marker.read_text(encoding="utf-8").strip() or None


def matches(version: str, spec: str) -> bool:
    """npm's x-range, as far as we use it: "3.13.x" takes 3.13.0, 3.13.2...; "3.13.2" only itself."""
    wanted = spec.split(".")
    have = version.split(".")
    return len(have) >= len(wanted) and all(w in ("x", "*", h) for w, h in zip(wanted, have))


def install_viewer(
    spec: str = OHIF_VERSION,
    *,
    force: bool = False,
    bundle: Path = BUNDLE_DIR,
    say: Callable[[str], None] = print,
) -> str:
    """Make `bundle` hold @ohif/app `spec`; the version installed. Downloads only when needed."""
    current = installed_version(bundle)
    if current and matches(current, spec) and not force:
        say(f"OHIF viewer {current} is already installed in {bundle}")
        return current
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerInstallError(
            "npm was not found: install Node.js and npm (Debian: apt-get install npm), then run "
            "`minipacs viewer install` again"
        )
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ohif-download-", dir=bundle.parent) as download:
        say(f"downloading {OHIF_PACKAGE}@{spec} from the npm registry (about 50 MB)")
        tarball = _npm_pack(npm, f"{OHIF_PACKAGE}@{spec}", Path(download))
        staging = bundle.parent / f".ohif-staging-{uuid.uuid4().hex[:8]}"
        try:
            version = unpack_dist(tarball, staging)
            (staging / VERSION_FILE).write_text(version + "\n", encoding="utf-8")
            _swap(staging, bundle)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    say(f"OHIF viewer {version} installed in {bundle}")
    return version


def _npm_pack(npm: str, package: str, destination: Path) -> Path:
    command = [npm, "pack", package, "--pack-destination", str(destination), "--silent"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=NPM_TIMEOUT, cwd=destination, check=False
        )
    except subprocess.TimeoutExpired:
        raise ViewerInstallError(f"npm pack {package} did not finish in {NPM_TIMEOUT:.0f} s") from None
    tarballs = sorted(destination.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ViewerInstallError(f"npm pack {package} failed: " + " / ".join(detail))
    return tarballs[0]


def unpack_dist(tarball: Path, target: Path) -> str:
    """Extract the package's dist/ (less DROPPED and REPLACED) into `target`; the package version.

    Safe extraction: members are renamed relative to dist/ and then go through tarfile's "data"
    filter, which refuses absolute paths, `..`, links leaving `target` and device files."""
    with tarfile.open(tarball, "r:gz") as archive:
        version = _package_version(archive)
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(DIST) or not (member.isfile() or member.isdir()):
                continue
            relative = member.name[len(DIST):]
            if not relative or relative.startswith(DROPPED) or relative in REPLACED:
                continue
            members.append(member.replace(name=relative, deep=False))
        if not any(m.name == "index.html" for m in members):
            raise ViewerInstallError(f"{tarball.name} has no {DIST}index.html: not a prebuilt OHIF viewer")
        target.mkdir(parents=True)
        archive.extractall(target, members=members, filter="data")
    return version


def _package_version(archive: tarfile.TarFile) -> str:
    try:
        member = archive.getmember("package/package.json")
        stream = archive.extractfile(member)
        manifest = json.load(stream) if stream is not None else {}
    except (KeyError, ValueError):
        manifest = {}
    if manifest.get("name") != OHIF_PACKAGE or not manifest.get("version"):
        raise ViewerInstallError(f"the downloaded package is not {OHIF_PACKAGE}")
    return str(manifest["version"])


def _swap(staging: Path, bundle: Path) -> None:
    """Replace `bundle` by `staging` with renames, so a running server sees one or the other."""
    old = bundle.parent / f".ohif-old-{uuid.uuid4().hex[:8]}"
    if bundle.exists():
        bundle.rename(old)
    staging.rename(bundle)
    shutil.rmtree(old, ignore_errors=True)
