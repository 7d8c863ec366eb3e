"""`make demo`: run the streamrec loop end to end on the local mini-cluster."""

from __future__ import annotations

from rich.console import Console

from infra import cluster
from infra.settings import get_settings

console = Console()


def main() -> None:
    """Start the mini-cluster and run every pipeline stage once, printing what each made."""
    settings = get_settings()
    console.rule("1. local mini-cluster")
    for state in cluster.up(settings):
        console.print(f"{state.name:7} {state.mode:8} {state.address:28} {state.detail}")
    console.print(f"\nThe cluster keeps running; stop it with `streamrec down`. Home: {settings.home}")


if __name__ == "__main__":
    main()
