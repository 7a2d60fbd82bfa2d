"""Code shared by the Sluice relay (``server``) and agent (``agent``)."""

import warnings
from importlib.metadata import PackageNotFoundError, version

from cryptography.utils import CryptographyDeprecationWarning

try:
    __version__ = version("sluice")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# cryptography 51 deprecates DSA, and asyncssh names DSA's key types when it is
# imported, so every start would print a warning about a key type Sluice never
# uses (host keys are Ed25519, agents log in with a token). Only that warning,
# raised from asyncssh, is quieted; the relay and the agent import this package
# before asyncssh (tests/unit/test_import_warnings.py).
warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    category=CryptographyDeprecationWarning,
    module=r"asyncssh\.",
)

__all__ = ["__version__"]
