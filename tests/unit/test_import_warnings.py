"""The relay and the agent start without a dependency's import-time warning.

cryptography 51 deprecates DSA and asyncssh names DSA's key types as it is
imported: each start printed a CryptographyDeprecationWarning to the journal
(and the suite, which turns warnings into errors, could not collect).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
from cryptography.utils import CryptographyDeprecationWarning

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("package", ["server", "agent"])
def test_programs_import_without_warnings(package: str) -> None:
    entry = {"server": "server.cli", "agent": "agent.cli"}[package]
    # -W error: any warning while the program's modules load fails the import.
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {entry}, asyncssh"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr


def test_other_warnings_stay_loud() -> None:
    """Only asyncssh's DSA warning is quieted, not the category or other modules."""
    code = (
        "import sluice, warnings\n"
        "from cryptography.utils import CryptographyDeprecationWarning as W\n"
        "warnings.warn('DSA is deprecated', W)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode != 0
    assert "CryptographyDeprecationWarning: DSA is deprecated" in done.stderr


def test_the_suite_quiets_only_asyncssh_s_dsa_warning() -> None:
    """pytest's own filter (pyproject.toml) is as narrow as the programs':
    the same warning from another module is still an error in a test."""
    with pytest.raises(CryptographyDeprecationWarning, match="DSA is deprecated"):
        warnings.warn("DSA is deprecated", CryptographyDeprecationWarning, stacklevel=1)
