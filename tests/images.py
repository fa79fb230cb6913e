"""Images for tests, made locally (no registry is reachable): ``FROM scratch`` plus Debian's static busybox."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BUSYBOX_IMAGE = "rack-test/busybox:1"
BUSYBOX = Path("/bin/busybox")

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/sh"]
"""


def ensure_busybox_image() -> str:
    """Build (once; cached by the engine) a busybox image from the static binary on this machine."""
    if subprocess.run(["docker", "image", "inspect", BUSYBOX_IMAGE], capture_output=True, check=False).returncode == 0:
        return BUSYBOX_IMAGE
    if not BUSYBOX.exists():
        raise RuntimeError("/bin/busybox is missing: install Debian's busybox-static (make test does)")
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(BUSYBOX, Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(DOCKERFILE)
        subprocess.run(["docker", "build", "-q", "-t", BUSYBOX_IMAGE, context], check=True, capture_output=True)
    return BUSYBOX_IMAGE
