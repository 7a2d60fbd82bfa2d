"""Coverage-guided fuzzing of the agent's CONNECT parser with atheris (libFuzzer).

    pip install atheris
    python tests/fuzz/fuzz_connect.py -runs=200000 -max_len=9000
    python tests/fuzz/fuzz_connect.py corpus/ -max_total_time=600   # keep a corpus

``check`` is the property; tests/unit/test_parsers_fuzz.py runs it over the
seeds below without atheris, and runs this file for a few thousand inputs
when atheris is installed. What must hold for every byte string:

- parse_connect_request raises nothing but ConnectProtocolError, whose reason
  is short and printable;
- whatever it accepts is a canonical target: normalised host, no control
  characters, and formatting it and parsing it again gives the same target;
- parse_connect_response and find_head_end raise nothing but
  ConnectProtocolError either.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

from sluice.connect import (
    MAX_HEAD_BYTES,
    ConnectProtocolError,
    find_head_end,
    format_connect_request,
    normalise_host,
    parse_connect_request,
    parse_connect_response,
)

_USED = (
    "MAX_HEAD_BYTES",
    "ConnectProtocolError",
    "find_head_end",
    "format_connect_request",
    "normalise_host",
    "parse_connect_request",
    "parse_connect_response",
)

SEEDS: list[bytes] = [
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"CONNECT [fd00::1]:8443 HTTP/1.1\r\n\r\n",
    b"CONNECT 10.20.0.1:80 HTTP/1.0\r\nX-A: b\r\n\r\n",
    b"CONNECT a.example:443 HTTP/1.1\r\nHost: x\r\nEvil: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"CONNECT a.example:443\r\nHost: b.example:80 HTTP/1.1\r\n\r\n",
    b"CONNECT a.example:443%0d%0aX:1 HTTP/1.1\r\n\r\n",
    b"CONNECT a.example\x00.evil:443 HTTP/1.1\r\n\r\n",
    b"CONNECT 127.1:22 HTTP/1.1\r\n\r\n",
    b"CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n",
    b"CONNECT xn--bcher-kva.example:1 HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 Connection established\r\n\r\n",
]


def check(data: bytes) -> None:
    """The property for one input; raises AssertionError (or anything else) on a bug."""
    reason: str | None = None
    try:
        target = parse_connect_request(data)
    except ConnectProtocolError as exc:
        reason = exc.reason
    else:
        assert len(data) <= MAX_HEAD_BYTES
        assert normalise_host(target.host) == target.host
        authority = target.authority()
        assert authority.isascii(), authority
        assert authority.isprintable(), authority
        assert " " not in authority
        assert 1 <= target.port <= 65535
        assert parse_connect_request(format_connect_request(target)) == target
    if reason is not None:
        assert reason, "a refusal must say why"
        assert len(reason) < 1024, reason[:100]
        assert reason.isprintable(), repr(reason[:100])
    for other in (parse_connect_response, find_head_end):
        with contextlib.suppress(ConnectProtocolError):
            other(data)


def main() -> None:
    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    # Import sluice.connect again with coverage instrumentation, and point the
    # names check() uses at the instrumented module.
    del sys.modules["sluice.connect"]
    with atheris.instrument_imports(include=["sluice.connect"]):
        import sluice.connect as instrumented
    for name in _USED:
        globals()[name] = getattr(instrumented, name)
    atheris.Setup(_with_seeds(sys.argv), check)
    atheris.Fuzz()


def _with_seeds(argv: list[str]) -> list[str]:
    """Without a corpus directory, start from SEEDS and a dictionary of the
    protocol's tokens (blind mutation rarely finds CRLF CRLF), both written to
    $FUZZ_CONNECT_WORKDIR or a new temporary directory (libFuzzer exits
    without running atexit, so a temporary one is left behind)."""
    import os
    import tempfile

    chosen = os.environ.get("FUZZ_CONNECT_WORKDIR")
    work = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="fuzz_connect_"))
    args = list(argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = work / "corpus"
        corpus.mkdir()
        for number, seed in enumerate(SEEDS):
            (corpus / f"seed{number}").write_bytes(seed)
        args.append(str(corpus))
    if not any(a.startswith("-dict=") for a in args):
        crlf = "\\x0D\\x0A"  # libFuzzer dictionaries spell bytes as \xNN
        tokens = [
            "CONNECT ",
            " HTTP/1.1",
            " HTTP/1.0",
            crlf,
            crlf * 2,
            ":",
            "[",
            "]",
            "Host: ",
            "HTTP/1.1 200 ",
            "Content-Length: ",
            "xn--",
            "::ffff:",
            "%",
        ]
        (work / "connect.dict").write_text("".join(f'"{t}"\n' for t in tokens))
        args.append(f"-dict={work / 'connect.dict'}")
    return args


if __name__ == "__main__":
    main()
