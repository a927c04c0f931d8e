"""``python -m iotlb``: the same command as the ``iotlb`` console script."""
from .cli import main

raise SystemExit(main())
