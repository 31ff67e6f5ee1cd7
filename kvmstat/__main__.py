"""``python -m kvmstat`` runs the ``kvm_stat`` command."""

from .frontends.cli import console_main

if __name__ == "__main__":
    console_main()
