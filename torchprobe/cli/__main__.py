"""``python -m torchprobe.cli``: the same as the ``torchprobe`` script."""

from torchprobe.cli import main

main()
