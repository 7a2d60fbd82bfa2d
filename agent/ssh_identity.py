"""Keep the agent's SSH client off the account it runs under.

asyncssh's client looks up the local user name and the home directory on
every connection, and reads files under ``~/.ssh`` (config, known hosts, CA
bundle, certificate directory, keys) unless each is given explicitly. Under
systemd's ``DynamicUser=`` without libnss-systemd, or in a container run as
an arbitrary UID (Kubernetes ``runAsUser``), there is no passwd entry and
often no ``$HOME`` or ``$USER``: those lookups raise, and the agent would
never connect. The agent authenticates with its token and pins the relay's
key by fingerprint; nothing of the account is needed.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from typing import Any, Final

from sluice.sshconfig import AGENT_USERNAME

# Where the home directory is said to be when the process has none; the
# Debian convention for accounts without a home. Nothing is read from it:
# every option below is explicit.
NO_HOME: Final = "/nonexistent"

# Each asyncssh client option that would otherwise come from ~/.ssh, the
# user's SSH agent or Kerberos. The host key check (known_hosts) is decided
# by the caller, per connection.
EXPLICIT_CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "config": None,
    "client_keys": None,
    "client_host_keys": None,
    "agent_path": None,
    "agent_forwarding": False,
    "pkcs11_provider": None,
    "x509_trusted_certs": None,
    "x509_trusted_cert_paths": [],
    "gss_host": None,
    "gss_kex": False,
    "gss_auth": False,
    "host_based_auth": False,
    "public_key_auth": False,
    "kbdint_auth": False,
    "password_auth": True,
}


def provide_account_defaults() -> None:
    """Called before each connection: give asyncssh a user name and a home
    when the process has neither (no passwd entry, no ``$USER``/``$HOME``).

    asyncssh calls ``getpass.getuser()`` and expands ``~/.ssh`` even when
    every path is given; both only name things, since nothing is read.
    """
    try:
        getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError from 3.13
        os.environ["LOGNAME"] = AGENT_USERNAME
    if os.path.expanduser("~").startswith("~"):
        os.environ["HOME"] = NO_HOME
