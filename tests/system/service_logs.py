"""What a failed system test prints: the end of every service's log it ran."""

from __future__ import annotations

from pathlib import Path


def log_tails(data_dir: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of each ``*.log`` under ``data_dir`` (the cluster's
    services log to ``DIR/<name>.log``), each under its name."""
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(data_dir.rglob("*.log"))
    )
