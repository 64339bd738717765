"""cxrlt: a staged pipeline for long-tailed multi-label chest X-ray competitions (CXR-LT)."""
import os

# albumentations asks the network for a newer version at import; competitors' machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
