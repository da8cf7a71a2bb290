"""``python -m vostool`` (and ``torchrun -m vostool batch ...``, which runs this module on every rank)."""

from vostool.cli import main

if __name__ == "__main__":
    main()
