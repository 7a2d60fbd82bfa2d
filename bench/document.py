"""What a run prints and docs/BENCHMARKS.md: machine, versions, method and
commands, summary, target verdicts, raw numbers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from bench import cluster, targets
from bench.fleet import BACKOFF
from bench.link_report import LinkSummary
from bench.report import DASH, Summary
from bench.targets import ONPREM

RAW_COLUMNS = (
    "rep",
    "point",
    "path",
    "rps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "mb_s",
    "big_mb_s",
    "cpu_s",
    "cpu_us_per_req",
    "cpu_s_per_gib",
    "peak_rss_relay_mb",
    "peak_rss_agent_mb",
    "peak_rss_ssh_mb",
    "peak_rss_sshd_mb",
    "wall_s",
    "foreign_cores",
)


# The interleaved A/B runs behind the SSH sizes in sluice/sshconfig.py; kept
# here, with the numbers, rather than in the code.
TUNING_HISTORY = (
    "Channel window towards the relay, 256 KiB (with 32 KiB packets): on loopback it moved "
    "more bytes per second than 2 MiB; 192 KiB (3 rounds) made bulk ~15% slower with the "
    "p50 of small requests beside a download within noise; 128 KiB halved bulk speed.",
    "Channel window towards the relay, 1 MiB (issue 22, branch issue-23d): once packets "
    "grew to 256 KiB, a 256 KiB window held one packet, and each packet waited for the "
    "top-up of the one before (the relay sent every adjust with no credit left, 4 adjusts "
    "per MiB, each a write, a read and a wake-up of the agent; py-spy: 38% of the relay's "
    "samples in the adjust's socket write). With 1 MiB the agent still holds a packet's "
    "credit at each top-up (`tests/integration/test_download_pipeline.py`). Interleaved "
    "`python -m bench.ab --points down,downsf,up --openssh --sched` (medians; foreign load "
    "1.3-1.8 of the 2 cores in every run): 64 MiB download without sendfile 215 -> 316, 273"
    " -> 330, 383 -> 422, 380 -> 386 MB/s, with sendfile 195 -> 314, 252 -> 384, 310 -> "
    "338, 335 -> 396 MB/s; 2 MiB no better than 1 MiB; relay CPU 1.02 -> 0.83 ms/MiB, relay"
    " syscalls 12.8 -> 8.7 and context switches 5.1 -> 3.1 per MiB, the agent's 4.1 -> 2.3."
    " GETs beside a 1 GiB download (`--points mixed`, c=1, 5 reps: p50 2.03 -> 1.95 ms, p99"
    " 7.5 -> 8.2 ms, the download 236 -> 248 MB/s) and a 50 ms link (`bench.long_link`, 6 "
    "interleaved runs: download 154-173 -> 159-190 MB/s; GETs beside it p50 52-103 -> 59-94"
    " ms) within noise. What is left: on this machine every process of both paths (relay, "
    "agent; ssh, sshd) waits for a CPU 30-45% of a transfer, none is at a core, and relay +"
    " agent take 2.0-2.3 ms of CPU per MiB against ssh + sshd's 1.3-1.6: the download is "
    "CPU-bound in aggregate, and the ratio to OpenSSH follows the ratio of CPU per MiB "
    "(about 0.65). With four packets of credit the agent now meets the send scheduler's "
    "`TCP_NOTSENT_LOWAT` (128 KiB) whenever the relay's socket is full: a 262 KB packet "
    "then leaves in two or more writes. One interleaved run (7 reps, foreign load up to 1.6"
    " cores): without the low-water mark the agent took 1.03 instead of 1.24 ms/MiB (9.5 "
    "instead of 11.4 syscalls per MiB), down 340 -> 414 MB/s, with sendfile 379 -> 390; the"
    " scheduler off altogether 0.91 ms/MiB, 418 and 434 MB/s. Left as it is here: the "
    "low-water mark is what keeps small answers from queuing in the kernel on a long link "
    "(`sluice/send_scheduler.py`).",
    "The send scheduler's `TCP_NOTSENT_LOWAT` follows the link (issue 22, branch "
    "issue-23e): 2.5 ms of the connection's rate while busy (`tcpi_bytes_acked` over "
    "`tcpi_busy_time`, taken at most every 50 ms as channel data is sent, over at least 1 "
    "MiB and 20 ms), between 128 KiB and 1 MiB, instead of a fixed 128 KiB, which made the "
    "agent write each 256 KiB packet in two or more system calls whenever the relay's "
    "socket was full. With a relay socket smaller than the agent's credit "
    "(`tests/integration/test_packet_writes.py`) the agent makes 4.1-4.2 writes per MiB "
    "instead of 11-13. Interleaved `python -m bench.ab --points down,downsf,up,mixed --reps"
    " 5 --openssh --sched`, fixed mark / following / scheduler off (medians, foreign load "
    "up to 1.7 cores, uptime 3.0-3.5): agent system calls per MiB 9.88 / 9.45 / 9.44 "
    "(down), 10.39 / 9.47 / 9.42 (downsf), agent CPU 1.18 / 1.09 / 1.11 ms/MiB (down), the "
    "rest (rates 338 / 461 / 412 and 416 / 369 / 369 MB/s, mixed p50/p99, the relay) within"
    " this machine's noise; in two earlier runs the fixed mark's relay never fell behind "
    "and all three took 9.4-9.5 calls per MiB. On a 50 MB/s line (`bench.long_link --points"
    " beside --mbps 50`, 3 interleaved runs) the mark stays at 128-290 KiB: GETs beside a "
    "download p50/p99 69/99 -> 63/95 ms at 50 ms, 120/135 -> 112/143 ms at 100 ms; without "
    "a rate limit (7 runs at 50 ms, 3 at 100 ms) the GETs follow how fast the download "
    "beside them runs on this machine (p50 53-96 ms either way; at 100 ms 122/180 -> "
    "129/160 ms). A fixed 512 KiB mark: mixed p99 25 ms instead of 8 and uploads 25% slower"
    " in one run. Not the mark: the relay's 3 extra system calls per MiB of an upload with "
    "the scheduler on (11.3-12.0 against 8.3-8.6 off, every run) come from the scheduler's "
    "one-packet turns (a write a packet, where asyncssh's own flush writes a window's worth"
    " at once); letting a channel alone take turns of the mark's size brought 9.5, left out"
    " for want of a test.",
    "Packets of 256 KiB, up from 32 KiB (5 rounds, with malloc keeping buffers on the "
    "heap): 1 GiB download ~570 -> ~710 MB/s, relay+agent CPU 2.85 -> 2.2 s/GiB, uploads "
    "and small requests unchanged; 128 KiB fell in between.",
    "Agent receive window 1 MiB (request bodies): uploads ~160 -> ~260 MB/s on loopback; 2 "
    "MiB did no better.",
    "Send coalescing (issue 22, branch issue-23a): the channel packets of one event-loop "
    "turn leave the tunnel in one `writelines` at the end of the turn "
    "(`sluice/send_coalescing.py`; `SLUICE_SEND_COALESCING=off`). Interleaved `python -m "
    "bench.ab --points c1,c32,down,up --reps 3 --openssh` (foreign load 0.5-1.7 cores): "
    "c=32 5,693 -> 7,520 req/s, 144 -> 104 CPU us/req, write system calls per request 4.01 "
    "-> 2.14 (relay 2.01 -> 1.07, agent 2.01 -> 1.07); two more runs 139 -> 104 and 139 -> "
    "109 us/req; c=1 p50 within noise either way (-0.105 to +0.030 ms over the runs); "
    "downloads and uploads unchanged. Coalescing on one side only (the agent) saved nothing"
    " measurable: requests reach the agent spread out.",
    "Relay per-request work (issue 22, branch issue-23b): a caller's repeated head is not "
    "parsed again; the outbound head (joined target, rewritten fields, serialised head) is "
    "made once per distinct request and kept with the connection's cached settings "
    "(`server/proxy/prepared.py`; an edit or the 2 s expiry starts afresh); one head timer "
    "per stream instead of one per request; the admin token's hash remembered per caller "
    "connection while the token is current; the answer written before it is counted; the "
    "two per-request Prometheus series kept as plain counters until `/metrics` is read. "
    "Python calls per request 392 -> 287 (c=32), 415 -> 308 (c=1); interleaved `bench.ab "
    "--points c1,c32 --reps 3 --openssh` (load about 3): c=32 107 -> 79 and 110 -> 82 "
    "relay+agent CPU us/req (relay alone 89 -> 59), 7,129 -> 10,622 and 7,193 -> 9,648 "
    "req/s; c=1 p50 0.387 -> 0.226 and 0.357 -> 0.201 ms (6 reps).",
    "Window tuner, readers that pause (issue 22, branch issue-23c): a round that ends while"
    " data waits for a paused reader is judged but never sets the link's round trip or the "
    "pace a new stream starts from (a slow API on a busy loopback looked like a long link: "
    "the window grew to the budget); data waiting in a paused channel counts against its "
    "window (the tuner makes the top-ups until the buffer is empty; asyncssh's counted none"
    " of it, so 20 callers reading a piece per 0.1 s held 96-259 MB in the relay instead of"
    " 9-18). The earlier attempt (e175c23, reverted) dropped every round with a pause, so a"
    " download beside a held-back stream stalled at its starting window (8.7-9.2 MB/s at 50"
    " ms): `tests/integration/test_window_tuning.py` now catches that. `bench.long_link` at"
    " 50 ms, medians of 9, against main: within noise (download 158 vs 160 MB/s, GETs "
    "beside p50 62 vs 64 ms). Slow start growing 8x or 16x per round instead of 4x at 100 "
    "ms only sped up a connection's first download (74-79 -> 84-99 MB/s); kept at 4x.",
    "Relay and agent per-request work, second pass (issue 22, branch issue-24c). Profile "
    "first (`bench.ab --profile`, `perf record`, `strace -c`, and the new `python -m "
    "bench.calls`, which counts each process's function calls per request): at c=1 each "
    "process makes 7 system calls per request (2 epoll waits, 2 reads, 2 writes, and one "
    "getrandom, asyncssh's packet padding), the fewest one wake-up per direction allows; "
    "the relay spends 64% of its samples in the interpreter, 20% in the kernel, the agent"
    " 50% and 33%; a request costs about 2.5x the CPU at c=1 that it does at c=32 (every "
    "wake-up runs on cold caches), so Python calls are the latency. Cut: an answer head "
    "that repeats its stream's last one byte for byte (the same request again; Date "
    "changes once a second) is not parsed again, its body read raw "
    "(`server/tunnel/http1.py`, `AnswerMemo`), and the caller's fields and head made from"
    " it are reused (`server/proxy/exchange.py`, `server/proxy/front.py`); the "
    "per-request log line builds nothing while info is off (`sluice.logs.min_level`); no "
    "`typing.cast` and no `contextlib.suppress` on the tuned SSH path (14 casts and 3 "
    "context-manager calls per round trip); fewer calls in the stream, the front and the "
    "auth scheme per request. Python calls per request (`bench.calls`) c=1: relay 157 -> "
    "108 (C calls 163 -> 99), agent 59 -> 46; c=32: relay 139 -> 99 (157 -> 103), agent "
    "42 -> 35. Interleaved `bench.ab --points c1,c32 --reps 5 --openssh` against main "
    "(load 3.2-3.8, foreign 0.8-1.7 cores): c=1 p50 0.239 -> 0.184 ms (OpenSSH 0.127; "
    "lower in each of the 5 reps), 2,818 -> 3,331 req/s (OpenSSH 3,341), 224 -> 171 CPU "
    "us/req; c=32 84 -> 73 relay+agent CPU us/req (lower in each rep; OpenSSH 17), req/s "
    "within noise (8,000 vs 7,587, ranges 6,359-8,956 and 5,929-8,570); an earlier run of"
    " the first cuts (load 3.0-3.5): c=1 p50 0.274 -> 0.212 ms, c=32 89 -> 71 us/req. "
    "Left, in asyncssh's per-packet path under `sluice/ssh_tuning.py`: a keepalive timer "
    "cancelled and made again for every read (three calls and a timer handle), "
    "`SSHChannel.write`'s debug log call and cast, `os.urandom` for each packet's "
    "padding; in the agent, asyncssh and the tuned path are 39 of its 46 calls per "
    "request.",
    "Fewer copies per packet (issue 22, branch issue-24d). Why the download without "
    "sendfile lost more: not the agent's reads (nginx writes 32 KiB at a time, yet the "
    "agent, slower than nginx, read whole 256 KiB packets either way: 1350 reads for 1280 "
    "full packets without sendfile, 1316 with), but OpenSSH's ssh, cheaper without "
    "sendfile (0.72-0.82 against 1.2-1.37 ms/MiB); Sluice's relay + agent took 2.0-2.2 "
    "ms/MiB either way against ssh + sshd's 1.3-1.4. Cut: the agent reads an API's bulk "
    "answer into the plaintext of the packet it leaves in and encrypts it with "
    "`AESGCM.encrypt_into` into an output buffer reused once the transport holds no view of"
    " it (`ssh_tuning.send_framed`; it was copied by `SSHChannel.write`, joined into a "
    "plaintext and encrypted into a fresh, zeroed object); other bulk packets sent are "
    "encrypted into reused buffers too; a bulk packet read is decrypted with "
    "`decrypt_into` into a reused buffer, straight from a view of the shared read buffer "
    "(`ssh_reads` copied every read; a packet spanning reads gathers only what it lacks); a"
    " channel alone takes send-scheduler turns of the kernel's mark, in one write (1402eef "
    "re-applied with `tests/unit/test_send_scheduler_turns.py`). perf: the agent's memmove "
    "+ memset 10.8% -> 4.7% of its samples, the relay's 8.6% -> 6.9%. Interleaved "
    "`python -m bench.ab --points down,downsf,up --reps 9 --openssh --sched` (foreign load "
    "up to 1.65 cores, load average 2.5-3.9), main -> branch: agent 1.17 -> 1.06 ms/MiB "
    "(down), 1.45 -> 1.26 (downsf), relay 0.91 -> 0.83 and 0.99 -> 0.90; upload relay 1.35"
    " -> 1.28 ms/MiB and 11.2 -> 9.6 system calls per MiB, agent 0.91 -> 0.77; 64 MiB "
    "download 404 -> 450 MB/s (OpenSSH 541), with sendfile 374 -> 427 (OpenSSH 473). Tried"
    " and left out: waiting for the relay's grant instead of reading a whole buffer when "
    "under 32 KiB of window is left (a third of the agent's reads took the copying path "
    "then): no difference measured.",
    "Per-agent window budget 32 -> 64 MiB (issue 22, branch issue-24b): at 100 ms every "
    "traced download's window reached the old cap (33 MiB with its start), about 335 MB/s; "
    "same code with only the budget changed, 1 GiB at 100 ms, interleaved: 275 -> 447 MB/s "
    "at load 0.8 (128 MiB: 382), medians 182 -> 229 over three rounds at load 3-4. 20 "
    "stalled streams with the default: 75-87 MB in flight against the 89 MB allowed; agent "
    "peak RSS in a 1 GiB loopback download unchanged (69-76 MB), at 100 ms 106-137 MB "
    "against 101-105 (the agent holds more while it may send faster than the line and "
    "relay take it). Found, not changed: at 10 ms the tuner, not CPU, holds the rate (its "
    "credit-loop samples run 2-6 ms over the shortest on a busy machine, outside its 1.5 ms "
    "growth band: the window stays at 4-5 MiB, about 350 MB/s; fixed 16 MiB windows "
    "487 MB/s against the tuner's 247 in one interleaved run), and the delay line spins "
    "between uvloop's millisecond timers (1.0-1.8 CPU s/GiB; a waker thread or a timerfd "
    "made the line itself slower at full speed, so it stays).",
    "A pooled stream's next answer starts again (issue 22, branch issue-24a). The queue "
    "probe on both ends at 50 ms: the relay's receive queue almost always empty, the agent's"
    " socket holding 4 MB (the download's window waits between the agent and the line), so "
    "a GET beside it takes about the window over the delivery rate, and a dip of that rate "
    "on 2 cores is the p99. The tuner's queue check fired but barely shrank the window "
    "(25.29 -> 25.28 MB): its target was the best pace of ten rounds, including the rounds "
    "of the answer the stream carried before it sat in the relay's pool. Now a stream idle "
    "for more than 1.5 round trips starts slow start again from its window, its paces and "
    "samples forgotten (forgetting alone cost the next 64 MiB download at 100 ms a third). "
    "Interleaved `bench.long_link --points down,beside`, 4 reps, load 0.6-1.1, main -> "
    "branch: 100 ms GET beside p99 279 -> 109 ms, p50 106 -> 102.4, the 64 MiB download 116"
    " -> 105 MB/s, the download beside the GETs 387 -> 275; 50 ms p99 141 -> 117, p50 74 ->"
    " 72, download 203 -> 194; 10 ms unchanged. Tried and left out: capping slow start by "
    "the burst rate (the line's timer batches showed 450-3,700 MB/s), doubling instead of "
    "quadrupling (the ramp-up test failed: 14-31 MB/s), sizing the window by the queued "
    "rounds' pace (it spiralled down under load, 27-55 MB/s beside the GETs).",
    "Relay and agent per-request work, third pass (issue 22, branch issue-25c). What "
    "the second pass left in asyncssh's per-packet path, cut under "
    "`sluice/ssh_tuning.py` (each behind its shape check, `SLUICE_SSH_TUNING=off` "
    "leaves all stock): a read notes its time and the one keepalive timer running sets "
    "itself again for the interval after the last read when it fires "
    "(`sluice/ssh_keepalive.py`; asyncssh cancelled and made a timer per read); the "
    "padding of the packets framed here is cut from a 64 KiB pool of `os.urandom` "
    "bytes, each used once, dropped in a forked child (`sluice/ssh_padding.py`; RFC "
    "4253 asks for random padding, OpenSSH draws it from `arc4random_buf` in user "
    "space, under AES-GCM it is encrypted and authenticated like the payload); "
    "`SSHChannel.write` without its debug call and cast below debug level 2; channel "
    "data handed to the session inline where `_accept_data`/`_deliver_data` would only "
    "count it (asyncssh's own channel classes only, no top-up due, reading on); the GCM "
    "invocation counted inline; no keepalive work at all on a connection without "
    "keepalives; the outbox and connection state looked up inline; `ssh_reads` without "
    "a cast per read. Relay: the caller's head memo matches an equal field list from "
    "another stream (at c=32 a caller's answers come from many streams, so the head was "
    "made again each time); the channel transport feeds its HTTP stream without "
    "`feed()`. Agent: no `send_framed` call for a read below its least size, no cast. "
    "Python calls per request (`bench.calls`, load 2.8-5) c=1: relay 109 -> 84-88, "
    "agent 49 -> 24; c=32: relay 99 -> 80 (C calls 105 -> 92), agent 36 -> 18.5 (48 -> "
    "45). `strace -c` at c=1 over 3 s: `getrandom` 4,452 per 4,449 requests -> 4 per "
    "3,807 (relay), 4,445/4,445 -> 3/3,809 (agent): 6 system calls per request in each "
    "process, not 7. Interleaved `bench.ab --points c1,c32 --reps 7 --openssh` against "
    "main (load 4.3-5.1, foreign 1.0-1.8 cores): c=32 relay+agent CPU 70.4 -> 62.7 "
    "us/req (lower in each of the 7 reps; OpenSSH 17.0), req/s 7,893 -> 9,226 (ranges "
    "5,040-8,755 and 4,966-13,927; OpenSSH 9,280), p50 3.67 -> 2.86 ms; c=1 CPU 188 -> "
    "166 us/req (lower in 6 of 7), p50 0.256 -> 0.221 ms (OpenSSH 0.146), 2,375 -> "
    "2,604 req/s (OpenSSH 3,161). A c=1 rerun (`--reps 5`, load 2.5-4.6): 185 -> 163 "
    "us/req and p50 0.215 -> 0.207 ms (both lower in 4 of 5, the fifth at the highest "
    "foreign load); p99 follows the foreign load, not the version (4.7-7.4 ms for both "
    "below 1.2 foreign cores, 20-25 ms for both above 1.35). Profile at c=32 (`perf`, "
    "py-spy): the relay 67% in the interpreter, 25% in the kernel, its Python self time "
    "mostly the caller's and the tunnel's socket writes; the agent 51% and 33%, 62% of "
    "its py-spy samples in the event loop itself. Left: the send scheduler's turn (5 "
    "calls a flush, `sluice/send_scheduler.py`), three `is_closing` calls a request "
    "through the channel transport, the auth scheme's 6 calls, a `Handle` and a `Grant` "
    "per request (a `Handle` is mutated by the schemes, so it is not shared).",
    "Tried and reverted: the shared window as one whole packet (issue 22, branch "
    "issue-25d). In the full `make bench` on a quiet machine with it (256 KiB), the mixed "
    "point missed both its targets: GET p50 1.134 ms (0.920-1.307) and the download 0.69x "
    "solo (709 vs 1021 MB/s), where 128 KiB had measured 0.853 ms and 0.63x; so the "
    "window stays 128 KiB. What the branch measured, under load: a bulk "
    "answer's window while small answers run beside it on the same agent connection at "
    "256 KiB instead of 128 KiB (`server/tunnel/window_share.py`). At 128 KiB, half of "
    "a 256 KiB packet, the agent sent half packets, each waiting for its own top-up: "
    "twice the packets, adjusts and wake-ups per MiB while the GETs already take the "
    "CPU (`--sched`: relay 13.8 -> 10.7 system calls and 5.1 -> 3.7 context switches "
    "per MiB, agent 13.7 -> 11.6 and 4.0 -> 3.3). Ten interleaved loopback A/Bs of "
    "`--points mixed,down1g` in both orders (load 2.5-7, 0.9-1.9 cores of outside "
    "load): the download beside the GETs +15% (median of the runs; -4% to +26%), GET "
    "p50 +9% (+3% to +43%). Tried and left out: 512 KiB (p50 +84% / +33%, download +3% "
    "/ +4%), 512 KiB with a top-up at every packet (p50 +43% / +86%, download +12% / "
    "+4%), no sharing (p50 +55%, download +28%), 384 KiB (worse than 128 KiB). On "
    "loopback the bytes in flight wait in the relay's socket, not the agent's send "
    "queue, so the send scheduler cannot put a GET ahead of them: each byte of window "
    "adds to the GET's wait. 50 ms link, 7 interleaved rounds of 3: GETs beside p50 "
    "61.5 vs 61.7 ms, p99 138 vs 150, the download beside 145 vs 139 MB/s (noise). "
    "`bench.ab`'s mixed point runs its GETs for 2 s, longer than a fast 1 GiB download: "
    "`make bench` (`bench/perf.py`) times them from the solo download instead.",
    "A pooled stream's next answer without a second slow start (issue 22, branch "
    "issue-25a). Traces with new debug lines for the pool and spare channels "
    "(`stream_taken`, `stream_dialed`, `spare_taken`, `channel_opened`, `spare_opened`, "
    "each with the monotonic time) at 100 ms: GETs beside a download always ran on a "
    "pooled stream, no channel was opened after start-up, the spare refilled in 51-146 "
    "ms: not the cause. The cause of 3-5 round-trip GETs: a grown stream coming back "
    "from idleness (the pool, or a stall of 1.5 round trips mid-download under load) "
    "began slow start again from its grown window, took its first round as rising "
    "(against no pace yet) and quadrupled the window, up to the whole budget (21.9 -> "
    "68 MB at 100 ms; the first GET beside it 487 ms, the spare's CHANNEL_OPEN 455 ms "
    "behind the same queue). Now it goes straight to what the connection learned (its "
    "pace times the round trip plus the headroom a queue leaves), or keeps its window "
    "with nothing learned. `tests/integration/test_gets_beside_a_pooled_download.py` "
    "(100 ms line): the credit granted on the wire stays within 1.6x the settled credit "
    "+ 2 MiB (with the fix 11.7-12.0 MiB; without, the whole 64 MiB budget in 5 of 5 "
    "runs). Interleaved `bench.long_link --rtt 50 --rtt 100 --points down,beside`, 3 "
    "reps, four runs at load 1-7, main -> branch: GET-beside p99 at 100 ms 177 -> 158, "
    "328 -> 180, 301 -> 312, 313 -> 287 ms, at 50 ms 157 -> 155, 173 -> 150, 190 -> "
    "141, 165 -> 149; p50 unchanged (108.8 -> 108.6 at 100 ms); the download beside the "
    "GETs at 100 ms 5-25% lower (ranges overlap). Left: every 3-round-trip GET left "
    "ended with the 1 GiB download's last bytes, when the relay received nothing on any "
    "stream for about 220 ms.",
    "Window changes on probation by the pace (issue 22, branch issue-25b). On a busy "
    "machine at 10 ms every credit-loop sample runs 2-6 ms long, so the samples tell "
    "neither a window that holds the stream back (growth needs most within 1.5 ms of "
    "the shortest) nor a queue: the queue check fired on that noise and shrank the "
    "window to the pace times the shortest loop (about 11 ms, while the loop ran 14-16 "
    "ms), the pace followed the window down, and the next shrink went lower (1-2 MiB in "
    "the simulator). Now, in the manner of BBR's probing, where the samples show "
    "neither the window grows by a quarter (at most the pace times what the queue check "
    "lets stand) and keeps it only if the pace of the next three rounds rose by half as "
    "much, else goes back and waits twice as long before the next probe (up to 16 "
    "rounds); a shrink for a queue stays only if the pace did not fall by half as much, "
    "else the window goes back and the queue check rests; the queue check waits for its "
    "three samples; rounds timed by a slow reader keep a shrink and undo a growth; a "
    "new stream whose jump to the learned window found no budget stays in slow start. "
    "`tests/unit/test_window_tuning.py::"
    "test_a_window_grows_on_a_busy_machine_whose_samples_run_long` "
    "(top-ups 2-6 ms late): main's tuner 77 MB/s with a 1.1 MiB window. Interleaved "
    "`bench.long_link --paths sluice-onprem` against main, load 2-7 (0.4-1.7 cores of "
    "outside load): before branch issue-25a's restart change, at 10 ms 1 GiB down 141 "
    "-> 246 MB/s (7 pairs), up 131 -> 140, 64 MiB down 187 -> 193 and up 160 -> 177 (18 "
    "pairs); with it, 10 ms 1 GiB down 365 -> 378 (7 pairs; 530-590 either way at "
    "near-zero outside load). GETs beside, p50/p99 (4 pairs): 10 ms 34/67 -> 25/50 ms, "
    "50 ms 69/128 -> 66/152, 100 ms 120/248 -> 119/197. At 10 ms under load each of "
    "delay line, agent and relay waits longer for a CPU than it runs (schedstat: "
    "running 0.25-0.34, 0.23-0.30, 0.16-0.20 cores; waiting 0.46-0.48, 0.31-0.35, "
    "0.28-0.31).",
    "Keys renewed every 64 GiB, not every 1 GiB (issue 22, branch issue-25f). The GETs "
    "beside a 1 GiB download that took three round trips at 100 ms all finished with "
    "the download's last bytes. `ss -tinm` on the relay's SSH socket every 15 ms: the "
    "bytes it had received stopped rising for about 200 ms just past 2^30 and 2^31 "
    "bytes of tunnel traffic (1,074,008,424 and 2,147,836,676), while its receive queue "
    "was empty; the kernel's counters (TCPTimeouts, TCPRcvQDrop, TCPBacklogDrop, "
    "PruneCalled, TCPZeroWindowDrop, sampled every 20 ms) stayed at 0 and the delay "
    "line held nothing. It was the SSH key exchange: asyncssh renews keys after 1 GiB "
    "by default (Sluice kept that, with a comment that said it matched OpenSSH), and "
    "while keys are exchanged no channel data moves, about two round trips for every "
    "stream of the agent. OpenSSH renews AES keys after 2^32 blocks, 64 GiB (RFC 4344, "
    "3.2), as `sluice/sshconfig.py` now does (the relay's `ssh_rekey_bytes` and the "
    "agent's `rekey_bytes` still override it; keys are still renewed hourly). "
    "`tests/unit/test_rekey_limit.py`. Interleaved `bench.long_link --rtt 50 --rtt 100 "
    "--points beside,down --repetitions 3`, 4 rounds each (12 runs; load 1.4-4.2), main "
    "-> branch: GET-beside p99 at 100 ms 305 (146-378) -> 157 (125-206) ms, runs over 2 "
    "RTT + 10 ms 9/12 -> 0/12; at 50 ms 133.5 (65-208) -> 96.6 (78-136), 8/12 -> 5/12 "
    "(four of the five in a first repetition, while the windows grow); p50 and the "
    "downloads within noise.",
    "Uploads: what the relay writes to a channel is not copied (issue 22, branch "
    "issue-26b). perf on the relay during 256 MiB uploads: memmove was 25% of its "
    "samples, two of its four sources asyncssh's: every write copied into a bytearray "
    "(5.0%), and the rest of it copied again when a packet was cut at the window's edge "
    "(`del buf[:size]` reallocates once less than half is left; 3.0%). Now "
    "`SSHChannel.write` keeps a `bytes` object as it is (the relay writes an upload as "
    "the caller's reads, `bytes` of 256,000), a cut leaves the rest as a view, and the "
    "entries become bytearrays only before asyncssh's own flush may cut them "
    "(`sluice/ssh_send.py`); anything a caller may reuse (the agent's views of its read "
    "buffer) is still copied before `write` returns. memmove 25% -> 17% of the relay's "
    "samples (the rest: uvloop's bytes per caller read and the joins of the front's body "
    "feed, `server/proxy/front.py`, and the plaintext of each packet). "
    "`tests/unit/test_ssh_send_copies.py` (16 MB written while the window holds it back: "
    "15.4 MB of new memory before, under 4 MB now; across key exchanges, where asyncssh's"
    " flush cuts the entries). Relay CPU per MiB of a 256 MiB upload from "
    "`/proc/<pid>/schedstat`, main and branch alternating, 10 pairs, four runs (load "
    "3.3-3.9, 1-1.6 cores of outside load): 1.17 -> 1.01, 1.20 -> 0.98, 1.27 -> 1.04, "
    "1.16 -> 0.87 ms/MiB; 398 -> 458, 369 -> 392, 340 -> 420, 524 -> 602 MB/s; the 64 "
    "MiB download unchanged (agent 1.05 vs 1.07 ms/MiB). `bench.ab --points "
    "down,downsf,up,mixed --reps 5 --openssh --sched` (64 MiB, 0.15 s a transfer) gave "
    "1.18 -> 1.04, 1.08 -> 1.16 and 1.32 -> 1.39 ms/MiB for the relay in three runs: too "
    "short for this machine's load. Found, not changed: the relay's three extra system "
    "calls per MiB of an upload with the send scheduler (issue-23e) are gone since branch"
    " issue-24d (8.6 on, 8.3 off, 7 reps); the agent's reads of nginx without sendfile "
    "are whole 256 KiB (254 of 258 bulk reads; with sendfile 251 of 261), 4 packets and 4"
    " writes per MiB either way, so there is nothing to merge; a third of them land while"
    " the window is used up and are copied into the channel. Tried and left out: pausing "
    "the agent's reads until the relay's grant when under 32 KiB of window is left "
    "(`wait_for_window`), so that every read is framed in place: agent 1.12 -> 1.06 "
    "(down) and 1.32 -> 1.30 ms/MiB (downsf) in 9 interleaved reps, the opposite in "
    "another run, up to 1.8 more system calls per MiB (the pause and resume): within "
    "noise, as branch issue-24d found for the same idea.",
    "Relay and agent per-request work, fourth pass (issue 22, branch issue-26c). A "
    "request the fast path sent twice is kept whole with the connection's cached "
    "settings (`PreparedRequests.requests` in `server/proxy/prepared.py`, keyed by "
    "method, path, the caller's fields and body size, used only with the very settings "
    "object it was made from): its repeat finds its head in one dictionary look, "
    "without joining the target again, asking the auth scheme for its grant (6 calls "
    "and a `Grant`) or looking up the kept target and head; only what is made from the "
    "settings alone is kept so (a grant the scheme gives at once, no templated field, "
    "no TLS context, which is looked up per request), and secrets a grant adds to the "
    "handle's masks are added again on each repeat. `ChannelTransport.is_closing` is "
    "the channel's own method (the stream's three looks a request were two calls each); "
    "the pool asks the running loop, not the stream's `loop` property; the head timer "
    "and `resume_reading` are called only with something to do; a body that completes "
    "its answer is not fed through `_feed`, and the fast path takes and releases a "
    "whole answer in one call; the front tries the fast path and writes a whole answer "
    "inline; the traffic stats count the minute in `record`; no `canonical_line` call "
    "while info is off; the agent sizes its API read in `_Upstream.get_buffer` (no "
    "`read_size`). Python calls per request (`bench.calls`, main at b83afa6 vs the "
    "branch merged with it, load 3.2-3.6): c=32 relay 80.4 -> 56.7 (C calls 91.7 -> "
    "85.0), agent 18.5 -> 17.5; c=1 relay 84.9 -> 61.3 (97.5 -> 90.9), agent 24.1 -> "
    "23.1. Budgets in `tests/integration/test_repeated_answers.py` (auth 6 -> 0, "
    "channel transport 5 -> 2, stream 15 -> 9, front 10 -> 8, none into `prepared.py`, "
    "no `is_error`, `_Minute.add` or `canonical_line` call) and the new "
    "`tests/integration/test_agent_request_calls.py` (the real agent counted by "
    "`bench/calls_site`: at most 4 calls into `agent/proxy.py` per request). "
    "Interleaved `bench.ab --points c1,c32 --reps 7 --openssh` against main (load "
    "3.2-4.6, foreign 0.3-1.8 cores): c=32 relay+agent CPU 68.1 -> 62.7 us/req (lower "
    "in each of the 7 reps; OpenSSH 17.6), req/s 7,951 -> 8,605 (OpenSSH 9,289), p50 "
    "3.84 -> 3.13 ms; c=1 180 -> 173 us/req, p50 0.257 -> 0.231 ms (OpenSSH 0.141), "
    "1,962 -> 3,696 req/s (OpenSSH 3,338; both wide, 937-5,403). (That run also had "
    "`Http1Response._finish` inlined at the exchange's end, one call, since put back: "
    "main's body-deadline timer stops there, and a copy would have to follow it.) An "
    "earlier run of all but the last two cuts (`--reps 5`, load 2.7-4.9): c=32 60.8 -> "
    "58.8 us/req (lower in each of 5 reps; OpenSSH 16.4), c=1 176 -> 145 us/req, p50 "
    "0.227 -> 0.168 ms. The final code (merged with main at b83afa6), `--reps 5` "
    "against that main (load 4.2-4.7, foreign 0.1-1.8 cores): c=32 66.2 -> 62.7 us/req "
    "(lower in 4 of 5; OpenSSH 17.4), c=1 184 -> 164 us/req, p50 0.261 -> 0.223 ms "
    "(OpenSSH 0.152). Still 3.6x ssh + sshd at c=32: the target (2x) is missed. Profile "
    "at c=32 (`perf`, py-spy): the relay still 62% in libpython (31% in the eval loop "
    "itself), the caller's and the tunnel's socket writes about 20% of its py-spy "
    "samples each; the agent 53% libpython though it makes 17 Python calls a request "
    "(the receive path's per-packet loop, the send path). Left: the send scheduler's "
    "turn (`_flush_send_buf`, `_sched`, `follow_rate`, `pump`, `flush_quantum`: 5 calls "
    "a flush in each process), the window tuner's and share's 5 calls a request on the "
    "relay (`grown` twice, `received`, `held_back`, `WindowShare.received`), asyncssh's "
    "`is_closing` three times, a `Handle` per request "
    "(`ConnectionService.cached_handle`), `AdminTokens.epoch`, "
    "`DebugLog.surely_closed`, `TunnelRegistry.is_online`, `TunnelHTTP.pool`.",
    "Relay CPU per MiB of a bulk answer (issue 22, branch issue-26g). A Content-Length "
    "answer's body goes to the caller straight from the stream's `data_received` "
    "(`Http1Response.piped`, `_SocketSink.pipe`, `FrontProtocol.pipe_write`): no "
    "future, task step, `readany`, sink write and `drain` per packet; the pipe stops "
    "when the caller's transport pauses writing (what arrives then waits in the answer, "
    "which pauses its stream at 512 KiB) and starts again once it drained. Chunked, "
    "length-less, recorded (debug log) and aiohttp answers keep the reader loop. "
    "Reader-side calls for an 8 MiB answer 163 -> 3 "
    "(`tests/integration/test_piped_answers.py`). perf of the relay and of sshd during "
    "the same 1 GiB downloads (load 3.0-3.4): both 58% kernel; sshd 28% libcrypto, the "
    "relay 25% libpython, 9% AES-GCM, 3% uvloop; `_raw_spin_unlock_irqrestore` (the "
    "loopback send waking the reader) 20.7% of the relay's samples, 13.7% of sshd's; "
    "py-spy: 40% of the relay's samples in the caller's `write`, 12% in "
    "`_take_data_packets` (decrypt included), the body path's own Python under 2%. "
    "`bench.ab --points down,downsf,down1g,mixed,c1 --reps 5 --openssh --sched` "
    "(load 3.0-3.6, foreign 1.1-1.6 cores), relay ms/MiB main -> branch: down 0.758 -> "
    "0.649, downsf 0.811 -> 0.741, down1g 0.789 -> 0.779, mixed 1.188 -> 1.173 (sshd "
    "0.566, 0.595, 0.635, 0.657); pooled over five interleaved runs (10-31 reps each) "
    "down 0.758 -> 0.728, down1g 0.786 -> 0.806, downsf 0.780 -> 0.742: a few per cent "
    "at most, within this machine's noise. Tried and left out: the pieces of one "
    "tunnel read written to the caller in one write (kept until `call_soon`, then "
    "`writelines`): system calls 8.0 -> 5.5 per MiB and fewer context switches, relay "
    "CPU per MiB not measurably lower (down1g 0.786 -> 0.760, 8 reps), and how many "
    "packets one read brings depends on timing, so no test could hold it.",
    "Send path per flush and window top-ups (issue 22, branch issue-26h). (1) The send "
    "scheduler's flush (`sluice/send_scheduler.py`) of a channel alone (no channel "
    "waiting for a turn, the transport not paused, no turn under way) whose data or "
    "window fits one turn calls the flush beneath directly: the round robin "
    "(`ready`, `pump`, `flush_quantum`) would do the same there; `_sched` is inline and "
    "`follow_rate` is called only when its sample is due (never without a socket). 5 "
    "calls a flush -> 2. `bench.calls` (c=1): relay 60.2 -> 57.7 Python calls a "
    "request, agent 23.1 -> 19.1 (c=32, main at ded6332: relay 56.5 -> 52.4, agent "
    "17.3 -> 13.3); `tests/unit/test_packet_calls.py` budget 26 -> 21 a "
    "round trip. (2) A window top-up (`SSH_MSG_CHANNEL_WINDOW_ADJUST`, sent while no key "
    "exchange is due) joins the send coalescing's outbox: it leaves at the end of the "
    "loop turn it was made in, with the turn's channel packets, not as a write of its "
    "own (`sluice/ssh_send.py`, `sluice/send_coalescing.py`). Counted at the mixed "
    "point (a counting copy of the tree): 18% of the relay's turns with a top-up had "
    "another packet to join (a GET), 1.03 top-ups a turn. "
    "`tests/unit/test_window_top_up_writes.py`: two streams received at once, 199 "
    "top-ups in 101 writes (101 in 101 before). `bench.ab --points c1,c32,mixed,down1g "
    "--reps 5 --openssh --sched`, main at ded6332 vs the branch (merged at 4ad947e), interleaved "
    "(load 1.9-3.8, foreign up to 1.7 cores): c=32 relay+agent 53.0 -> 49.6 us/req "
    "(lower in 5 of 5; OpenSSH 15.1: 3.5x -> 3.3x, target 2x missed), 14.5k -> 13.6k "
    "req/s; c=1 142 -> 128 us/req, p50 0.147 -> 0.126 ms (OpenSSH 0.074); mixed GET "
    "p50 1.32 -> 1.37 ms, p99 12.5 -> 9.2 ms, download 342 -> 340 MB/s (solo 499 -> "
    "488: 0.69x -> 0.70x), relay 1.26 -> 1.10 ms/MiB and 19.5 -> 15.5 system calls/MiB."
    " Two runs of mixed alone with (1) and (1)+(2) as separate trees (7 and 5 reps, load"
    " 3-4.2): GET p50 1.70/1.67 (main), 1.67/1.64 ((1)), 1.37/1.33 ((1)+(2)) ms, p99 "
    "7.9/7.5, 10.3/6.6, 7.3/6.2 ms, download 327/344, 345/345, 350/353 MB/s. The mixed "
    "targets (p50 <= 1 ms, 0.7x solo) stay missed or at the edge on this loaded "
    "machine (OpenSSH's GET p50 0.76-1.4 ms in the same runs).",
    "Bulk packets' Python work and copies (issue 22, branch issue-27a). Profile first "
    "(`perf` and py-spy of relay and agent over 2 GiB of 64 MiB downloads without sendfile,"
    " `strace`): every system call and copy per MiB was already what OpenSSH makes or fewer"
    " (agent: 4 reads of 262,144 from nginx and 4 writes of 262,180 a MiB; relay: 4 reads, "
    "4 writes of 262,144 to the caller; ssh makes 65 system calls a MiB); the agent's "
    "samples 53-55% kernel (socket copies, loopback delivery: ssh's 62%), 21-23% libpython,"
    " 13% AES-GCM, 6% libc, 3% uvloop; the relay's 49-50%, 28-29%, 12%, 3-4%, 4%; ssh's own"
    " code 5%, libcrypto 23%. The interpreter's time is spread over reference counts "
    "stalling on caches each 256 KiB packet has just gone through, so it goes with the "
    "Python work per packet. Python calls per MiB (`bench/calls_site` during 5 transfers of"
    " 64 MiB), main -> branch: download relay 113 -> 63, agent 88.5 -> 46; upload relay 84 "
    "-> 63, agent 81.5 -> 39. Cut (`sluice/ssh_send.py`, `ssh_framed.py`, "
    "`ssh_receive.py`): a window top-up is framed and encrypted by the tuned path "
    "(`send_window_adjust`: asyncssh's `send_packet` was some 20 calls a top-up and a "
    "`getrandom` for its padding; 1.4-1.6 top-ups a MiB); `send_framed` without its calls "
    "for the AESGCM object, the padding, the output buffer, the invocation counter and the "
    "outbox (10 -> 2 a packet), the packet written at once when the outbox holds nothing; a"
    " flush that leaves nothing to send pauses or resumes the session itself (asyncssh's "
    "flush, `_pause_resume_writing`, its logger and debug call: about once a MiB each way);"
    " the pooled plaintext and sealed buffers tried inline; `WindowTuner.received` tells "
    "the relay's channel whether its window may be shared (no `grown`/`held_back` calls a "
    "packet); the agent's read size takes the window inline; and a bulk packet's plaintext "
    "is gathered into one reused buffer, not joined into a fresh 256 KiB object. Tests: "
    "`tests/unit/test_bulk_packet_calls.py` (an 8 MiB echo each way: on main 13 `urandom` "
    "calls for top-ups, 37 calls of asyncssh's channel flush, 164 joins of bulk plaintexts;"
    " now none) and `test_framed_sends.py::test_a_framed_packet_takes_few_python_calls` "
    "(287 calls for 32 packets on main, budget 66). Interleaved `bench.ab --points "
    "down,downsf,up,mixed,c32 --reps 7 --seconds 3 --openssh --sched` (load 2.2-3.0, "
    "foreign up to 1.3 cores), main -> branch: relay 0.896 -> 0.771 ms/MiB (down), 0.793 ->"
    " 0.733 (downsf), 1.242 -> 1.138 (up); agent 0.978 -> 0.982, 1.200 -> 1.200, 0.745 -> "
    "0.705; down 503 -> 516 MB/s (OpenSSH 646: 0.80x), downsf 467 -> 501 (OpenSSH 498: "
    "1.0x), up 412 -> 469 (OpenSSH 536: 0.87x); mixed download 362 -> 386 MB/s, GET p50 "
    "1.105 -> 1.239 ms (an earlier run 0.758 -> 0.720: with the foreign load, lower in 6 of"
    " 14 pairs), c32 53.9 -> 54.8 us/req (noise). 64 MiB points are short for this machine,"
    " so also 10 rounds of 8 x 64 MiB per tree, interleaved in alternating order on one "
    "nginx (an ad-hoc script): upload relay + agent 1.901 -> 1.744 ms/MiB (relay lower in 8"
    " of 10 rounds, agent in 10), the reused plaintext alone a further relay -0.124 ms/MiB "
    "(8 of 10); download 1.878 -> 1.864 and 1.826 -> 1.734 in two runs (6-8 of 10 rounds "
    "lower): within noise. The final code against main that way (load 1.8-2.2): download "
    "1.931 -> 1.860 ms/MiB (agent lower in 9 of 10 rounds, relay in 7), 521 -> 527 MB/s; "
    "upload 1.953 -> 1.866 (agent 10 of 10, relay 6), 426 -> 453 MB/s. Tried and left out: "
    "512 KiB packets (2 MiB windows, scheduler turns and read sizes to match): system calls"
    " per MiB halved (relay 7.9 -> 4.6, agent 9.4 -> 4.8), context switches 2.9 -> 2.0, CPU"
    " per MiB not lower (7 interleaved reps: down relay 0.88 -> 0.85, agent 0.78 -> 0.93; "
    "up relay 1.04 -> 1.16). Found, not kept: 2 MiB starting windows for answers "
    "(`stream_window`, `sshconfig.CHANNEL_WINDOW`) on top of this branch: relay+agent "
    "1.81-1.88 -> 1.72-1.73 ms/MiB of a 64 MiB download (lower in every round of two runs "
    "of 10 interleaved rounds, and in a third run's medians; 529-583 -> 540-640 MB/s), with"
    " sendfile 549 -> 735 MB/s (7 reps; the agent's context switches 2.0 -> 0.5 a MiB: its "
    "credit ran out less often), GETs beside a download unchanged (9 reps: p50 1.32 -> 1.12"
    " ms, p99 3.7 -> 3.8, the download 359 -> 374 MB/s); an earlier 7-rep run on the code "
    "before this branch, at 1.5-2.4 cores of foreign load, showed no gain. At 50 ms "
    "(`bench.long_link --rtt 50 --points beside,down --paths sluice-onprem --relay-env "
    "SLUICE_SERVER_STREAM_WINDOW=...`, 4 alternating pairs): downloads faster (solo 134-203"
    " -> 167-193 MB/s, beside the GETs 84-205 -> 188-207), the GETs beside them slower (p50"
    " 57.5/80.9/82.7/104.8 -> 86.8/101.5/83.3/93.5 ms, p99 87/189/164/156 -> "
    "172/226/137/167): not kept without a longer long-link A/B (100 ms too), and the "
    "long-link tuner tests' floors are multiples of the starting window (a 100 ms download "
    "reached 41 MB/s against a floor of 2.5 x 21). A connection that knows its link is "
    "short could start its streams at 2 MiB: a follow-up. Top-ups at a quarter of the "
    "window used instead of half (1 MiB windows): no gain. Left: the download's agent "
    "(about 1.0 ms/MiB against ssh's 0.78: 0.6 ms of kernel against 0.5, and the "
    "interpreter's 0.25), and the third of its reads that land while the window is used up "
    "and are copied into the channel.",
    "Relay and agent per-request work, fifth pass (issue 22, branch issue-27b). (1) `perf"
    " trace` of the relay at c=32 showed two `getpid` system calls a request: in Python "
    "3.11 `asyncio.get_running_loop()` checks the process id each time, and the stream "
    "pool asked it twice a request (`begin_prepared`, `_idle_again`); it reads the "
    "stream's loop now (`Http1Stream.bound_loop`). Relay system calls per request (`perf "
    "stat`, per read of a caller's socket) 4.05 -> 2.15 (`getpid` 1.91 -> 0.004); the "
    "agent's 2.1 as before. (2) Python calls: `WindowTuner.received` returns whether the "
    "share may size the window (no `grown` twice and `held_back`); `AdminTokens.epoch` is"
    " an attribute; the fast path tests the answer's size and counts it inline "
    "(`is_small`, `counted`); `_send_data_fast` makes `_gcm_ready`'s tests inline (both "
    "sides); `ChannelTransport.write` is the channel's own write on each instance while "
    "`sluice.ssh_send`'s is in place; the agent's upstream protocol has the stream's "
    "`upstream_data` as its `buffer_updated`. (3) Per packet: a channel write sent whole "
    "is joined into its packet without a memoryview made and released; channel data of at"
    " most 2 KiB (`ssh_receive._COPIED_MOST`) is delivered as bytes even to a channel "
    "that takes views (a view costs more to make, compare and slice than the copy: 490 ->"
    " 210 ns for the relay's memo test, slice and join of a small answer). `bench.calls`,"
    " main at 46b59b8 -> branch: c=32 relay 52.5 -> 44.8 Python calls a request (C calls "
    "80.8 -> 77.0), agent 13.4 -> 10.4 (40.5 -> 38.5); c=1 relay 56.6 -> 50.0 (86.2 -> "
    "83.6), agent 19.1 -> 16.1 (48.2 -> 46.1). Held by "
    "`tests/integration/test_repeated_answers.py` (no `get_running_loop` from the relay's"
    " code, no `grown`, `held_back`, `epoch`, `is_small`, `counted` or `_gcm_ready` call,"
    " channel transport 2 -> 1 call a request), "
    "`tests/integration/test_agent_request_calls.py` (`agent/proxy.py` 4 -> 3), "
    "`tests/unit/test_packet_calls.py` (no `memoryview.release` a packet) and "
    "`tests/unit/test_ssh_tuning.py` (little data as bytes to a view-taking channel). "
    "Interleaved `bench.ab --points c32,c1 --reps 9 --openssh` against main (load "
    "1.6-2.4, foreign up to 1.1 cores): c=32 relay+agent 55.4 -> 51.9 us/req (median; "
    "lower in 9 of 9 reps, by 2.2-7.4; OpenSSH 18.0: 3.1x -> 2.9x, target 2x missed), "
    "14.1k -> 15.4k req/s, p50 2.13 -> 1.94 ms; c=1 145 -> 137 us/req, within this "
    "machine's noise (per rep -31..+55). Repeated (9 reps, load 1.5-2.5): c=32 57.2 -> "
    "53.1 us/req (lower in 9 of 9, by 3.3-6.1; OpenSSH 16.4), 14.2k -> 15.3k req/s; c=1 "
    "157 -> 137 us/req (lower in 7 of 9), p50 0.196 -> 0.165 ms (OpenSSH 0.155). Which "
    "part: three trees interleaved (`--points c32 --reps 9`, load 0.9-2.8): main 59.9, "
    "(1)+(2) without the channel transport's write 57.3 (lower than main in 8 of 9), the "
    "branch 55.4 us/req (lower than that in 8 of 9, than main in 9 of 9; OpenSSH 19.5); "
    "an earlier 7-rep run of that middle tree against main had shown no change (56.8 -> "
    "56.6, per rep -6.0..+4.6). Left: the relay's perf profile is still two-thirds "
    "libpython; what remains is spread over about 45 calls a request, none above a few "
    "per cent. Not done: the fast path's answer future (a future, its callback `Handle` "
    "and three calls on it, about 0.6 us a request in a micro-benchmark) replaced by a "
    "direct callback: the stream resolves it before the body is in, so the callback would"
    " have to move to the exchange's end.",
    "Answer windows per connection (issue 27, branch issue-27c): unless `stream_window` is "
    "set, an agent whose link is short starts its answer streams at 2 MiB "
    "(`sshconfig.SHORT_LINK_CHANNEL_WINDOW`), every other at 1 MiB as before "
    "(`server/tunnel/link_window.py`). Short: both the agent's login (from its `none` "
    "request to its password: one round trip plus both ends' work, never shorter than the "
    "link's) and the kernel's smoothed round trip of its SSH socket (`TCP_INFO` tcpi_rtt, "
    "`send_scheduler.kernel_rtt`: never longer, but only to the next TCP hop) below 5 ms "
    "(2 ms on the branch, raised at the merge: a busy machine stretches the login past 2 "
    "ms on loopback). "
    "The kernel alone is not enough: behind a TCP proxy, or bench/delay_line.py, it sees "
    "the proxy (measured: login 0.68 ms and kernel 0.26 ms on loopback; login 21.5 ms and "
    "kernel 9.5 ms behind a 20 ms line). `python -m bench.ab --tree main=merge27 "
    "--tree new=branch --points down,downsf --reps 9 --sched` (load 0.4-1.5): relay + "
    "agent 1.90 -> 1.68 ms/MiB (down, lower in 9 of 9 pairs; agent context switches 2.0 ->"
    " 1.1 a MiB), 2.04 -> 1.92 (downsf, 7 of 9); 588 -> 672 MB/s (down), 610 -> 736 "
    "(downsf). Earlier runs at a load of 1.4-2.6 (7 reps, `--openssh`): 1.85 -> 1.72 and "
    "2.04 -> 1.92, then 1.79 -> 1.75 and 2.02 -> 2.02 (within noise). GETs beside a "
    "download (`mixed`, the GETs run 1 s so that the download outlasts them in both trees:"
    " with the default 2 s the branch's faster download ended first, and its GETs ran "
    "partly alone): p50 1.21 -> 1.23, 0.80 -> 0.82 and 1.21 -> 1.13 ms in three runs, p99 "
    "4.0 -> 5.6 and 1.9 -> 2.4 (worse in 6 of 7 pairs each), then 4.2 -> 3.2 (better in 6 "
    "of 7): within noise. Long link, unchanged (the same 1 MiB start; `bench.long_link "
    "--rtt 50 --points beside,down --paths sluice-onprem`, 4 alternating pairs): GETs "
    "beside p50 87/63/74/77 -> 60/64/78/77 ms, p99 138/96/118/161 -> 84/85/115/163, "
    "downloads 174/105/269/298 -> 111/212/286/277 MB/s. Tried and dropped: a stream that "
    "once shared its window with small answers (`window_share`) going back to 1 MiB, not "
    "2, once alone: a pooled stream keeps that for good, so the next downloads on it lost "
    "the gain (down 1.75 -> 2.04 ms/MiB against the plain branch) and the GETs' p99 was no "
    "better (4.7 ms against 3.2).",
    "First transfers on a long link (issue 22, branch issue-28a; `sluice/window_tuning.py`)."
    " Traced with the tuner's debug logs (`bench.long_link --keep`, the settings' log level):"
    " at 50 ms the connection's first download waited two round trips at its starting 1 MiB"
    " (slow start's first step only when its first round ended, a round trip after the "
    "first top-up), then one at 4 MiB and one at 16; the agent's first upload the same. (1)"
    " Slow start's first step goes out at the stream's first top-up where the link is known"
    " to be long and nothing is learned: by a round, or before any by the connection's "
    "setup round trip (`WindowBudget.setup_rtt`: the relay's login, the agent's ready "
    "signal; 8 ms or more). (2) Slow start grows by 16, not 4, while no other stream of the"
    " connection holds growth. (3) A pooled stream whose answer ended in slow start (right "
    "after its last step, to the whole budget, never seen to pay) rejoins at the best pace "
    "its rounds showed times the round trip and goes on with slow start from there: it kept"
    " 68 MB, which queued ahead of the GETs beside the next download at 100 ms (p99 344 ms)."
    " `bench.long_link --rtt 50 --rtt 100 --points down,up,beside --paths sluice-onprem "
    "--repetitions 3`, 5 alternating pairs of main and branch trees (load 3.0-5.7: other "
    "A/Bs ran), MB/s, first repetitions (the cold transfers) of each pair: 50 ms download "
    "191/195/167/165/166 -> 249/239/186/271/206, upload 148/206/141/132/162 -> "
    "243/163/148/232/206; 100 ms download 107/112/97/104/98 -> 152/135/147/176/143, upload "
    "81/103/76/89/83 -> 135/103/101/142/113. Medians of all 15: 50 ms down 171 -> 239, up "
    "143 -> 187; 100 ms down 189 -> 176, up 103 -> 128 (later repetitions within noise). "
    "GETs beside: 50 ms p50 65 -> 66, p99 105 -> 115; 100 ms p50 122 -> 118, p99 177 -> 163"
    " (within noise). 10 ms, 4 pairs: down 247 -> 304 (first repetitions 213/347/196/320 ->"
    " 430/441/329/414), up 206 -> 254, GETs beside p50 20 -> 23, p99 57 -> 52 ms. On this "
    "loaded machine a grown window still moved only 200-300 MB/s (rounds of 55-100 ms at 50"
    " ms: the relay and agent waiting for a core), so the rest of the gap to direct is not "
    "the ramp. Tests: `test_the_first_transfers_on_a_cold_connection_ramp_within_two_round"
    "_trips` (integration: within two round trips of each body's first 64 KiB the line "
    "passed on >8 MiB; without (1) and (2) 4.5 MiB down, 0.5 up; without (1) 3.0 and 0.5), "
    "two unit tests (the first step; the rejoin: 172 ms queued without (3)). Tried and "
    "dropped: the learned pace as the best any stream showed over 10 s, slow-start rounds "
    "included (so that a download after a cut-off one beside GETs would not start from that"
    " one's smaller window): 4 pairs, GETs beside at 50 ms p99 93 -> 140 ms (the rejoined "
    "window above what the CPU-bound relay moved), downloads no faster.",
    "Tried and reverted: agent reads of an API paused once a send leaves the answer's "
    "window below 32 KiB (half "
    "the smallest stream window), until the relay grants more (issue 22, branch issue-28b): "
    "before, the next "
    "read of up to 256 KiB landed with no window, was copied into the channel's buffer and "
    "again into a packet (about a third of a loopback download's reads). Interleaved A/B "
    "against main (`bench.ab --points down,downsf,mixed --reps 9 --openssh --sched`, a busy "
    "machine: 0-1.7 foreign cores): agent CPU 0.87 -> 0.83 ms/MiB without sendfile (lower "
    "in 8 of 9 pairs), 1.10 -> 0.98 with it (7 of 9), 1.27 -> 1.14 beside GETs (7 of 9); "
    "download MB/s median of pairs +6% and +18%; GETs beside p50 1.22 -> 1.01 ms, p99 7.3 -> "
    "8.1 (within noise). With the upload window below (since reverted), 11 pairs (`--points "
    "down,downsf,up,mixed`): agent 0.88 -> 0.84 (8 of 11), 1.13 -> 1.06 (10 of 11), 1.25 -> "
    "1.16 beside GETs (11 of 11); MB/s +7% and +2%; GETs beside p50 1.27 -> 0.96 ms, p99 "
    "12.7 -> 7.6 (both noisy); c=1/c=32 CPU per request and writes unchanged. One run of 7 "
    "pairs at up to 2.1 foreign cores showed no gain without sendfile (agent +3%). Pausing "
    "per packet (issue 26e, 256 KiB windows) had cost more than the copies. Reverted at the "
    "merge: in the full suite on a loaded machine its own test "
    "(`test_a_used_up_window_stops_the_agent_reading_the_api`) saw a 256 KiB read land with "
    "no window once (2,359,206 read, 2,097,102 sent: the pause does not always hold), and "
    "`test_packet_writes` saw 9.4 agent writes per MiB (limit 8; the pause and resume add "
    "about 8% system calls per MiB), for a download gain within noise over 25 pairs.",
    "Tried and reverted: the agent's receive window for request bodies on a short link at "
    "2 MiB, as answers start (issue 22, branch issue-28b; the tunnel's ready signal, timed, "
    "and the kernel's round trip both below 5 ms). It halved an upload's window top-ups "
    "(`bench.ab --points up --reps 13 --openssh --sched`, 1.0-1.6 foreign cores: agent CPU "
    "0.82 -> 0.75 ms/MiB, lower in 11 of 13 pairs; relay 1.17 -> 1.15; upload MB/s within "
    "noise), but with it the agent's peak RSS over a 50 MiB echo through an API grew by "
    "14-30 MB over the 10 MiB echo's "
    "(`test_large_bodies_are_streamed_with_flat_agent_memory`, 3 of 3 runs and 1 of 2 on the"
    " branch alone; about 1 MB with 1 MiB, and with the read pause above alone). Reverted at "
    "the merge. The cause (issue 28h, not malloc: as bad with MALLOC_MMAP_THRESHOLD_=131072): "
    "the stream's first round timed the relay sending its first 2 MiB (6-18 ms), which as the"
    " connection's first sample made loopback look long; slow start granted 32-66 MiB at "
    "once and up to 39 MB waited in the agent. Fixed (`WindowBudget.sampled`); with the fix "
    "the echo passes (5 of 5, +1.3-1.8 MB), but the lever's wire test (fewer than 32 top-ups "
    "per 32 MiB) had passed only through that growth: 32 without it, so its gain needs a "
    "new A/B.",
    "Diagnosis of the GETs beside a download at 10 ms (issue 22, branch issue-28e; no lever"
    " kept). The beside point's p99 is set by the share of its 3 s of GETs that run while "
    "the 1 GiB download lasts (at 450-620 MB/s it ends 1.7-2.4 s in): after it every GET "
    "takes 10.8-11.2 ms, during it p50 19-27, p90 25-37, p99 30-47 ms (OpenSSH: download "
    "176 MB/s for all 3 s, GETs p50 11.6, p99 16-19; direct through the same line at ~1 "
    "GB/s: p50 18-32 during its 0.7-1.2 s). Timestamps in relay and agent (one run, "
    "steady repetitions, per GET p50/p90, idle in brackets): the relay's answer to wrk "
    "until its next request begins 2/7 ms (0.3/3), relay to agent through the line 7-9/"
    "10-14 (5.4/6.2), agent and nginx 1-2/4-17 (0.2/1.4), agent to relay 8/10-12 (5.3/"
    "6.9). The request's way, with no bulk data in it, loses as much as the answer's, "
    "which waits behind the download's queued bytes: the grown window's queue (credit "
    "round trips of 18-24 ms against a shortest of 11-15, the window 1.5-2.5x the pace "
    "times the round trip: the queue shrink aims at the best of 10 rounds' paces, which "
    "burst rounds inflate, and probes add 5 ms of the pace every few rounds) is 2-4 ms of"
    " a GET at the median. The rest is the saturated 2 cores: relay and agent each find "
    "their loop late by more than 2 ms for 27-49% of every second of the download (timer"
    " lateness), up to 35 ms. Through a line limited to 400 MB/s the direct path's GETs "
    "stay at p50 10.5, p99 11-16 ms during its download, so the line itself is not it. "
    "Tried and dropped (interleaved, foreign load 1.3-2.8): while small answers flow "
    "beside a grown stream, no probes and the queue shrink from the median pace and the "
    "median sample: beside p99 24.1-36.9 against 27.5-37.1 ms, downloads alike (the GETs "
    "during the download p50 16-22 against 19-32 ms in a busier run, the download 168-360 "
    "against 191-601 MB/s); a window cap of 3 MiB (`SLUICE_SERVER_MAX_INFLIGHT_PER_AGENT`"
    "=2 MiB): during p50 15, p99 28-36, download 206-221 against 328-331 MB/s; top-ups "
    "every 1/8 or 1/16 of a grown window instead of 1/64: no change beyond noise; relay "
    "and agent at nice -10: no change. Bench fix: `bench/nginx.py` reads each sparse file "
    "once before any measurement: the first read of the 1 GiB file's holes cost nginx "
    "40-90% of a core in kernel time (2.6 s of it, measured alone) inside the first "
    "repetition of a run that does not start with the direct path, which then showed GETs"
    " at p50 30-50 ms and a download at 185-300 MB/s. What the download costs: relay 1.4, "
    "agent 1.1, delay line 0.65 ms of CPU per MB beside the GETs (4 runs, 4.3 GB each), so"
    " at 500 MB/s these three alone want 1.6 of the 2 cores, before curl, nginx and wrk.",
    "The window tuner's own top-ups (a stream whose reader holds it back, a grown window) go "
    "out as the tuned `sluice.ssh_send.send_window_adjust`, not asyncssh's `send_packet` "
    "(issue 22, branch issue-28f): some 21 Python calls and a `getrandom` system call fewer "
    "per top-up (`bench.calls --mixed`, a window grown on the busy loopback: relay Python "
    "calls per MiB 91 -> 48 at 2.1 top-ups/MiB). A plain loopback download sends 0.85 "
    "top-ups per MiB (1.0-1.3 MiB each, asyncssh's half-window rule, already tuned) and "
    "pauses for its caller about once per download, so it gains nothing there: interleaved "
    "`bench.ab --points down,downsf,up,mixed --reps 7 --openssh --sched` in both orders, "
    "relay ms/MiB paired 0.94x/1.13x (down), 0.87x/1.13x (downsf): the tree listed first "
    "lost each time, so within noise; mixed GET p50 0.99 vs 1.12 and 0.61 vs 0.58 ms.",
    "What the link carried, not what the rounds timed (issue 22, session 32; "
    "`sluice/window_tuning.py`). Traced with a debug line per round (`bench.long_link --rtt "
    "100 --points up,down --repetitions 4 --keep`): a cold connection's first 64 MiB answer "
    "timed two rounds (1 MiB, then 16 MiB: 163 MB/s), stepped to the whole budget (68 MiB) "
    "and ended before a round showed that window; the next answer on the pooled stream "
    "rejoined at the pace of the 16 MiB window (17 MiB), went fast on the credit its peer "
    "still held (273-349 MB/s), and every answer after it ran at 118-153 MB/s, window-"
    "limited, with no round long enough to grow it. Now a stream also notes the most its "
    "data arrived at over spans of half a round trip (at least 50 ms; arrivals, not "
    "deliveries to a reader that paused; the span an answer ended in counts), and where "
    "that beat what the rounds showed by a quarter the connection learns it. Unit test: "
    "64 MiB answers on a pooled stream at 100 ms (without: the third took 0.45 s, with "
    "0.29 s). Interleaved `bench.long_link --rtt 100 --rtt 50 --points up,down,beside "
    "--paths sluice-onprem --repetitions 3`, 3 pairs on a quiet machine (load 0.7-1.0), "
    "medians of 9, main -> this code: 100 ms upload 135 -> 180 MB/s (third repetitions "
    "138 -> 285), download 205 -> 215 (224 -> 317), GETs beside p50 104.2 -> 103.1, p99 "
    "126.9 -> 127.3 ms; 50 ms upload 206 -> 233, download 298 -> 302, p50 52.4 -> 52.3, "
    "p99 77.7 -> 84.8. With the grant at open below as well (3 pairs, 10 ms too): 10 ms "
    "upload 350 -> 364, download 478 -> 547, p99 35.2 -> 32.2. Without the GETs between "
    "transfers (`--points up,down --repetitions 4`, 3 pairs, load 1.4-2.4, with the grant "
    "at open), 100 ms third and fourth repetitions: download 149/150 -> "
    "206/259, upload 121/132 -> 195/188. Tried and reverted: a channel opened on a warm "
    "long connection given the learned credit when it opens, a round trip before its "
    "first top-up (a simulated 64 MiB answer on a new stream 0.41 -> 0.29 s): the relay "
    "opens its next spare as a stream takes the last one, so the spare took the budget "
    "the starting download needed (it jumped to 5 of 64 MB and grew by a quarter a "
    "round): a 1 GiB download at 100 ms after a minute's idleness ran at 223-236 MB/s "
    "against 535-580 (full `make bench`, then `bench.long_link --points "
    "down,up,beside,down_1g --paths openssh,sluice-onprem`). Also left out: granting the "
    "learned pace to channels that had carried nothing when the connection learned it.",
    "Long-link uploads and the relay's pooled streams (issue 22, branch issue-i33a). Traced "
    "with the pool's `stream_taken` lines and the tuner's debug logs (`bench.long_link --rtt"
    " 100 --points down,up,beside,fresh --paths direct,openssh,sluice-onprem --keep`): from "
    "the second repetition the 64 MiB transfers ran on the stream the GETs beside the "
    "download had opened (the latest idle, LIFO) with its starting 1 MiB, while the stream "
    "that had carried the last transfer sat idle beneath with 45-68 MB of credit each way: 1"
    " MiB, a round trip's wait for the jump, then the rest (PUT 390 ms, about 170 MB/s). "
    "Kept (`sluice/window_tuning.py`): a carried pace below a starting window per round trip"
    " is not learned. The agent's side of a stream carrying only GET heads (one a round "
    "trip) taught an agent with nothing learned 2.5-3.4 KB/s, and its next upload neither "
    "jumped nor took slow start's first step at its first top-up (104 MB/s at 100 ms); "
    "`test_request_heads_teach_the_connection_no_pace` (unit; 300 bytes learned without). "
    "No A/B of its own (it acts only where nothing is learned). Tried and not kept (branch "
    "issue-i33a-upload-choice): a request whose body exceeds a starting window takes the "
    "idle stream holding the most credit toward the agent (`ssh_tuning.channel_credit`, "
    "under the shape check; an integration test through a 100 ms line: 22-24 MiB passed "
    "within 0.7 round trips of the second upload's first 64 KiB, 0 with LIFO). Interleaved "
    "`bench.long_link --points down,up,beside --paths sluice-onprem --repetitions 3`, mean "
    "of repetitions 2-3 per run, main -> branch: 100 ms upload 161->306, 179->237, 223->239,"
    " 237->244 (4 pairs, load 0.7-1.0; median 179 -> 275 MB/s), 50 ms 296->310, 191->312, "
    "295->317 (median 232 -> 317), better in 14 of 18 pairs at load 1.0-3.6; but the 64 MiB "
    "download fell: 50 ms median 400 -> 315 (1 of 3 pairs), and 325 against 404 in another"
    " run; 100 ms better in only 8 of 24 pairs over all runs (327 -> 316, 310 -> 271), GETs"
    " beside unchanged (p50 104 -> 104 ms). Not traced to its cause before the deadline: "
    "uploads and downloads no longer share one stream, and the download after an upload "
    "then starts on a stream whose credit toward the relay is 1 MiB. Also dropped: the same"
    " choice for requests without a body (by the credit toward the relay): small GETs moved"
    " onto the richest stream, and a stream that answers a GET each round trip never sits "
    "idle, so it kept the whole budget its window had grown to and the next download got 7 "
    "of 64 MB (80-192 MB/s, one at 32, against 182-249); and the round trip rising only to "
    "the shortest of six 10 s periods (with downloads on credited streams every round queued"
    " and it rose to 126-129 ms, unseen 30 ms queues ahead of the GETs beside; no gain "
    "otherwise).",
    "Relay and agent per-request work, sixth pass (issue 22, branch issue-33b). Profile "
    "first: `bench.ab` now splits CPU per request by process (`cpu_us_relay`, "
    "`cpu_us_agent`), and `bench.calls --opcodes` counts the bytecodes each process runs "
    "per request, by function and line (the calls are few now, their bodies long). At "
    "c=32 the relay took 37-38 us a request and the agent 20 (ssh + sshd 21 together); "
    "the agent made 9.6 Python calls a request, the relay 45; of about 1,100 bytecodes a "
    "request in the agent and 2,400 in the relay (beside the settings reloads a slowed "
    "run adds), the shared SSH path took some 560 for each packet sent (`write`, the send "
    "scheduler's turn, `_flush_send_buf`, `_send_data_fast`, `Outbox.add`) and 400 for "
    "each received (`_take_data_packets` 257, the window tuner's `received` and `_carry` "
    "150). py-spy at c=32: a third of each process's samples in its two socket writes a "
    "request (caller or API, and the tunnel), the agent's Python under a quarter. Cut: "
    "(1) a small write (under 63 KiB) on an idle channel (nothing queued, window and "
    "packet size enough, no flush under way, the scheduler holding no turn and not "
    "paused, AES-GCM keys in place and no key exchange due) is framed, encrypted and "
    "held in the outbox by `write` and one call (`sluice/ssh_send.py`, `_send_small`), "
    "the same packet, padding, counters and write the whole path makes; anything else, "
    "and a view that is not one run of bytes, takes the whole path; (2) each packet's "
    "AES-GCM invocation counter is stepped with one `Struct.unpack` and one `pack` "
    "(`ssh_gcm._IV`: 190 against 330 ns, four times a request in each process). Tests: "
    "`tests/unit/test_packet_calls.py` (Sluice's calls a round trip 19 -> 14, budget 14; "
    "no `int.from_bytes`/`to_bytes` a packet: 160 in 20 round trips on main), "
    "`tests/unit/test_small_sends.py` (no flush, `_send_data_fast` or `Outbox.add` call "
    "for a small write; echoes intact across 8 key exchanges; views of 4-byte items and "
    "strided views, which the first version framed with the wrong length: MACError). "
    "`bench.calls`, main at f1873c7 -> branch: c=32 relay 44.5 -> 41.4 Python calls a "
    "request (C calls 77.7 -> 70.6), agent 9.6 -> 6.6 (39.8 -> 32.8); c=1 relay 50.1 -> "
    "47.0 (84.7 -> 77.7), agent 15.3 -> 12.5 (47.3 -> 40.4). Interleaved `bench.ab --points c32 "
    "--openssh` with each tree twice in the order main, branch, branch, main (6 reps, "
    "load 1.7-3.0) and branch, main, main, branch (5 reps with c1, load 1.6-2.5): "
    "relay + agent 58.4/57.7 -> 54.2/53.4 and 58.7/59.6 -> 53.5/53.4 us a request "
    "(lower in 24 of 24 and 20 of 20 same-rep pairs; OpenSSH 21.0: 2.8x -> 2.5x, the 2x "
    "target still missed), relay 38.4/37.7 -> 35.7/35.6 and 38.2/38.9 -> 34.8/35.0, agent "
    "20.0/19.9 -> 18.2/17.9 and 20.1/20.7 -> 18.7/18.6; 14.7k/14.6k -> 15.8k/15.9k and "
    "15.0k/14.0k -> 16.0k/15.7k req/s, p50 1.95 -> 1.78/1.83 ms. The final code "
    "(merged with main at 404e758) against that main, branch, main, main, branch (6 "
    "reps, load 1.7-2.8, up to 0.9 cores of outside load), medians of the 12 runs each: "
    "59.7 -> 54.8 us a request (lower in 21 of 24 same-rep pairs; OpenSSH 21.6), relay "
    "38.9 -> 36.4, agent 20.9 -> 18.5, 14.8k -> 15.3k req/s, p50 1.79 -> 1.86 ms (noise). "
    "A first run in one order "
    "each way (first cut only, 5 and 7 reps) showed the tree listed first 2-4 us dearer "
    "whichever it was: 60.1 -> 55.6, then 56.1 (branch first) against 55.9, hence the "
    "mirrored orders. c=1 (9 reps mirrored, load 1.7-2.7): p50 0.190 -> 0.176 ms "
    "(OpenSSH 0.164; both trees bimodal, 0.13 or 0.19-0.21 ms a rep), CPU 152 -> 143 us "
    "a request: within this machine's noise. Transfers (`--points down,up,mixed --reps 5 "
    "--sched`, one run in each order, load 1.8-3.5): agent 0.905 -> 0.978 and 1.008 -> "
    "0.991 ms/MiB (down), 0.793 -> 0.858 and 0.897 -> 0.879 (up), relay 0.824 -> 0.812 and "
    "0.867 -> 0.898 (down), 1.073 -> 1.081 and 1.134 -> 1.218 (up), MB/s and the GETs "
    "beside a download (p50 1.39 -> 1.18 and 1.35 -> 1.35 ms, p99 9.8 -> 9.9 and 5.7 -> "
    "7.7) within noise: bulk packets take the whole path as before. Left: at c=32 the agent's "
    "Python is a fifth of its samples, the rest its two writes a request, uvloop's reads "
    "and the loop; per packet the window tuner's `received` (about 150 bytecodes, 1 us "
    "a packet in each process, called for every small answer and request on loopback, "
    "where it never grows the window) is the largest single piece left in the shared "
    "path (`sluice/window_tuning.py`, not touched here); the relay's remaining 41 calls "
    "are each a few per cent at most.",
    "Relay and agent per-request work, seventh pass (issue 22, branch issue-i34b): the "
    "window tuner's `received` ran its whole path for every delivery (121 bytecodes a "
    "small packet on a busy stream; 200-208 and two or three more calls, `_carry`, "
    "`_learn_carried`, `_start_again`, where requests come apart, each one then idle or "
    "ending a span of what the link carried), though on a short link nothing it decides "
    "can change for a small request or answer. Cut: (1) two fast paths in "
    "`WindowTuner.received` (`sluice/window_tuning.py`), for a stream neither grown nor "
    "held back with nothing in its channel's buffer: not idle, no top-up since the last "
    "delivery and the round under way not over, only the counts move on (a span that "
    "ends, `_carry`, inline); idle on a short link (round trip known, under `LONG`), "
    "the stream starts again, nothing learned, no round timed across the idleness. Each "
    "does exactly what the whole path would (the budget keeps `idle_gap` and `span` "
    "with its round trip): 600,000 random deliveries (starting windows 64 KiB-1 MiB, "
    "setups 0-50 ms, reader pauses, growth on long links) left main's tuner and this one "
    "state for state alike, and tests/integration/test_window_tuning.py passes as it "
    "was. Bytecodes a small delivery (`tests/unit/test_window_tuning.py`, budgets "
    "80/125/125): 0.1 ms apart 121 -> 70, 10 ms apart 200 -> 97, 100 ms apart 208 -> "
    "103. (2) No property on the relay's fast path (a property is a Python call 3.11 "
    "cannot inline: ~250 ns against ~90 inline): `StreamPool._take` looks at the "
    "stream's closed state inline, the fast path at the caller's transport (was "
    "`hung_up`), and `_complete_exchange` finishes the answer inline "
    "(`Http1Response._finish`): `tests/integration/test_repeated_answers.py` budgets "
    "http1 9 -> 7, front 8 -> 7 calls a repeated request. (3) The fast path's exchange is "
    "held by a `functools.partial` of its callback, not an object of a class made per "
    "request (its `__init__` another call 3.11 cannot inline: 307 against 156 ns): the "
    "same test budgets the fast path's calls, 3 -> 2. `bench.calls --opcodes` (main "
    "at 4b57c73 -> branch; slowed runs, where every delivery is idle or ends a span; "
    "main's totals vary by ~100 bytecodes and 4-6 calls run to run, with the API's Date "
    "field missing the answer memo): `received` 121 (+ `_carry` 25) -> 87 at c=32 and "
    "121 -> 74 at c=1 a request in each process; the relay's `closed`, `hung_up`, "
    "`_finish` and the exchange's `__init__` (56 bytecodes, 4 calls) gone; totals c=32 "
    "relay 2,798 -> 2,647 bytecodes (56.9 -> 50.6 Python calls), agent 909 -> 845 (8.0 "
    "-> 7.0); c=1 relay 2,790 -> 2,674 (56.2 -> 51.6), agent 1,125 -> 1,075. "
    "Interleaved `bench.ab --points c32,c1 --reps 6 --openssh`, main, branch, branch, "
    "main, three runs (the first two without (3)): c=32 relay + agent 50.8/52.4 -> "
    "49.6/50.1 us a request (lower in 15 of 24 same-rep pairs; load 2.6-3.1, up to 1.1 "
    "cores of outside load; OpenSSH 16.9), 53.1/53.4 -> 52.7/53.0 (19 of 24; relay "
    "34.9/34.7 -> 34.4/34.2, 20 of 24; load 1.3-2.4; OpenSSH 20.3), and, disturbed by a "
    "transfer A/B beside it, 50.6/50.1 -> 49.0/49.1 (16 of 24); spread within a tree "
    "4-7 us; c=32 p50 1.94/1.95 -> 1.80/1.89 and 1.64/1.63 -> 1.59/1.58 ms (22 and 17 "
    "of 24). c=1: 117.5/117.3 -> 119.2/120.2 and 158.5/165.1 -> 165.4/163.6 (8 and 10 "
    "of 24): noise. Transfers (`--points down,mixed --reps 3`, same order): down "
    "437/471 -> 442/446 MB/s, the download beside GETs 366/361 -> 373/366 MB/s, GET p50 "
    "1.31/1.15 -> 1.15/1.24 ms: within noise (bulk packets take the whole "
    "path as before). So 0.5-2 us a request, barely above this machine's noise, of the "
    "2x target's 11: relay + agent still 2.6-2.9x OpenSSH at c=32. Tried and dropped: `__slots__` "
    "on the exchange's class (its creation 335 against 307 ns: none; the partial above "
    "instead); perf's instruction counts for a steadier measure (no hardware counters "
    "in this VM).",
    "Tried and not merged: upload bodies read into the packet they leave in (issue 22, "
    "branch issue-i34a, kept). The relay's front read the rest of a Content-Length body "
    "streaming to an on-premise stream with a BufferedProtocol whose reads landed in a "
    "`sluice.ssh_framed.FrameBuffer` (the agent's, shared), sized to the body still due and "
    "the channel's credit, and left by `send_framed`; out of credit, the caller's reads "
    "paused until the agent's grant (asyncssh's private `_send_paused`, set so its flush on "
    "a window adjust resumed them; reading on without credit framed 0 of 261 reads). perf "
    "over three 64 MiB uploads: memmove 4.8% -> 0.6% of the relay's samples (last session's "
    "19% from py-spy did not hold with more samples), its CPU 0.98 -> 0.80 s. Interleaved "
    "`bench.ab` in both orders, 50 runs each (load 0.8-4.5): relay 1.110 -> 1.074 ms/MiB "
    "up (median; quartiles 1.065-1.167 -> 0.991-1.136), main dearer in 22 of 25 same-rep "
    "pairs, 387 -> 403 MB/s; 1.5-3 more system calls per MiB (a pause and resume per "
    "grant); down, c=32 and long links (10 and 50 ms, 3 pairs) within noise. Not merged: "
    "3-6% of one process's CPU on uploads, which already meet their loopback target, for a "
    "protocol switch in the front, a second flow-control path and a write to a private "
    "asyncssh field. Its test of a caller leaving mid-upload found a bug that was merged "
    "on its own: the lingering close's `write_eof` on a reset socket raised ENOTCONN "
    "under asyncio's loop and left the connection registered and busy "
    "(`tests/integration/test_proxy_front.py`).",
    "Long-link uploads, traced again (issue 22, branch issue-i35a; `sluice/window_tuning.py`"
    "). With the pool's `stream_taken` lines carrying both credits (branch "
    "issue-i35a-choice-trace) and the tuner's lines, `bench.long_link --rtt 100 --points "
    "up,down,beside`: in that order the 64 MiB upload always takes the stream the cut 1 "
    "GiB download beside the GETs went idle on last, which is also the one holding the "
    "most credit toward the agent, so i33a's upload choice changes nothing there (and the "
    "download after it shares that stream); in the order `down,up,beside` the next "
    "download takes whichever of the two streams went idle last, a race: one took the GET "
    "stream with its 1 MiB while the other sat idle 100 ms with 43 MB of credit toward the "
    "relay (166 MB/s), too briefly idle to be reclaimed. What kept uploads low and spread "
    "them (98-284 MB/s at 100 ms): (1) in 3 of some 20 runs at 100 ms the connection's "
    "first upload took 3.3 s (20 MB/s): the agent's first round was long (135 ms against "
    "102: the relay was late with what followed its starting credit) having moved under "
    "its starting 1 MiB, was judged a queue, and slow start ended at once at that round's "
    "pace (window 16 -> 1 MiB, then a quarter every three rounds); the connection learned "
    "62 MB/s, and the next two uploads ran at 56-89 MB/s. Kept: a first round of slow "
    "start that moved no more than a starting window judges nothing (the peer had not "
    "used the credit it started with; the next round judges the step); unit test "
    "`test_a_source_slow_to_start_does_not_end_slow_start_at_its_first_round` (a 35 ms "
    "late first top-up: 2.6 s without, 0.49 with). Interleaved A/B (A,C,C,A and C,A,A,C, "
    "`--rtt 100 --rtt 50 --rtt 10 --points up,down,beside --repetitions 3`): no first "
    "upload went slow in either tree (8 runs each), so no gain shows: medians of "
    "repetitions 2-3, main -> this, 100 ms upload 211 -> 195 MB/s (spread 143-315 and "
    "144-313), download 238 -> 215, GETs beside p99 177 -> 161 ms; 50 ms upload 228 -> "
    "230, download 275 -> 284; 10 ms upload 264 -> 278, download 349 -> 355 (load "
    "1.1-2.4): within the spread, kept for the traced failure it removes. (2) Past the "
    "first, an upload ends "
    "before its rounds can grow the window, and what the link carried cannot beat what the "
    "window lets through: the agent's window stepped 24 -> 37 MiB over the answers and "
    "stayed (190-205 MB/s). Tried and dropped (branch issue-i35a-window-bound): an answer "
    "carried at 0.9 of its window a round trip or more teaches a quarter more (a simulated "
    "pooled stream whose link sped up from 200 to 600 MB/s: 0.41 s per 64 MiB answer for "
    "good without, 0.21 with); two interleaved pairs (A,B,B,A and B,A,A,B, load 1.8-4.0), "
    "medians of repetitions 2-3: 100 ms upload 222 -> 172 (one B run's first upload went "
    "slow, see (1)), download 265 -> 274, 50 ms upload 188 -> 217, download 246 -> 289, "
    "10 ms upload 254 -> 234, download 348 -> 319: no repeatable gain.",
    "The per-agent budget held with readers that barely read (issue 22, 96cf3e4, a97227e "
    "and the review's mend; "
    "`sluice/window_tuning.py`). CI failed `test_readers_that_barely_read_hold_no_more_"
    "than_the_budget` (20 downloads at 40 ms, then each caller taking a piece every 0.1 s): "
    "32.2 MB waited in the relay against 27.3 allowed (a 4 MiB budget, 20 MiB of starting "
    "windows, 2 MiB of control traffic); here 4 of 16 runs failed (18.1-32.2 MB). Every "
    "window change recorded, and the channels sampled each 0.1 s: their buffers held 29.2 "
    "MB while all windows together were 25.2. The reclaim took the growth of any grown "
    "stream without a delivery for 1.5 round trips, and a stream whose reader holds it back "
    "has none while its data waits in its buffer: its 4 MiB went to another stream, which "
    "jumped to 4 MiB at its next top-up, slowed in turn and was taken back in turn, each "
    "time after the peer had sent under the old window. Now the reclaim skips a stream "
    "whose reader holds it back now, its channel paused (data waits only then, and the "
    "peer may still send the credit it holds: that growth is in use); an idle pooled "
    "stream gives its growth back as before, also one whose reader paused after the "
    "answer's last data and read again (the tuner's held-back flag stays set until the "
    "next delivery: the first cut, which skipped on that flag, would have kept such a "
    "stream's growth in the pool). Unit tests: a stream paused with its credit used up in "
    "its buffer keeps its growth (fails without the skip), one paused just after a top-up "
    "with nothing waiting yet keeps it (fails with a skip on waiting data alone), one "
    "paused and resumed with nothing waiting gives it back when idle (fails with a skip on "
    "the flag alone). The integration test: 15.2-21.3 MB in 10 runs, 4 beside a busy loop "
    "(the first cut 15.9-22.3 in 21). "
    "`bench.long_link --rtt 100 --rtt 50 --points down,beside --paths sluice-onprem "
    "--repetitions 2`, main and the fix alternating, two runs each: downloads 203-274 "
    "against 209-319 MB/s, GETs beside p99 68-236 against 81-133 ms (noise). Also "
    "re-measured then: the relay's upload reads into the packet (branch issue-i34a, merged "
    "with main for the run) in `bench.ab --points up,down --reps 9 --openssh --sched`, "
    "mirrored order on a quiet machine: relay 0.999/1.017 -> 1.011/0.986 ms/MiB up, 571/570 "
    "-> 558/572 MB/s (OpenSSH 690): no gain, still not merged.",
    "Relay and agent per-request work, eighth pass (issue 22, branch issue-i36a): no window "
    "tuner on a link its setup showed short. `bench.calls --opcodes` at c=32 still ran the "
    "tuner's `received` for every small request and answer (90 bytecodes and a call a "
    "packet in each process, of some 2,700 a request in the relay and 860 in the agent), "
    "on a link where nothing it decides can change the window (below `LONG`, 4 ms, nothing "
    "grows). Cut (`sluice/window_tuning.py`): a connection whose setup round trip (the "
    "relay: the agent's login; the agent: its listener's ready request, refused by the "
    "relay) and its socket's kernel round trip (`TCP_INFO`) are both under `LONG` "
    "(`short_link`; the two measures of the 2 MiB short-link windows, each wrong in a "
    "known direction, there under 5 ms) gives its streams a `ShortWindow`: the starting "
    "window for good, "
    "nothing timed, and fed (`feed`) only while its reader holds the stream back, when it "
    "makes the top-ups counting what waits in the buffer, as the tuner's for a window not "
    "grown. The relay's `ChannelSession` and the agent's `ChannelProxy` skip the call "
    "otherwise. Unlike the tuner it does not notice a kept connection's link turning long "
    "later (the tuner renews its round trip every 10 s). Tests: "
    "`tests/integration/test_short_link_windows.py` (no call into `window_tuning.py` in 20 "
    "small answers on a short-link tunnel; main: a `WindowTuner.received` per answer), "
    "`tests/integration/test_agent_request_calls.py` (none in the agent either; main: 30 "
    "for 30 requests), unit tests for `ShortWindow` (what waits for a paused reader stays "
    "within the window; its top-ups are the tuner's on loopback, top-up for top-up, over "
    "slow readers of 10-400 MB/s) and `short_link`. `bench.calls`, main at f607cbd -> "
    "branch: c=32 relay 37.4 -> 36.4 Python calls a request (C calls 69.6 -> 67.6), agent "
    "6.4 -> 5.5 (31.6 -> 29.7); c=1 relay 42.8 -> 41.8 (76.6 -> 74.5), agent 12.1 -> 11.1 "
    "(39.1 -> 37.1); agent bytecodes a request (c=32) 863 -> 758. Interleaved `bench.ab "
    "--points c32,c1 --reps 6 --openssh`, main, branch, branch, main (load 2.6 -> 1.3, "
    "up to 1.0 cores of outside load), then branch, main, main, branch (load 0.8 -> 3.9, "
    "up to 1.7 cores): c=32 relay + agent 49.1/48.2 -> 48.5/47.0 and 50.7/49.5 -> "
    "48.0/47.2 us a request (same-rep pairs lower in 18 of 24 and 17 of 24, median -0.95 "
    "and -1.66), and a third run, `--points c32 --reps 8`, main, branch, branch, main (load "
    "3.9, up to 1.0 cores outside): 53.2/51.6 -> 50.4/50.7 (27 of 32, -2.17; relay "
    "35.3/34.5 -> 34.0/33.8, agent 18.0/17.1 -> 16.4/16.7); over the three runs -1.5 us, "
    "about 3% (lower in 62 of 80 pairs; relay -0.75, 56 of 80; agent -0.8, 65 of 80); "
    "OpenSSH 19.8, 16.5 and 17.5; 21.4k/21.8k -> 21.7k/22.4k "
    "and 15.5k/14.9k -> 15.9k/16.1k req/s, p50 1.43/1.43 -> 1.41/1.38 and 1.88/1.86 -> "
    "1.81/1.82 ms. c=1: noise (pairs lower in 27 of 48). Transfers (`--points "
    "down,up,mixed --reps 5 --sched`, main, branch, branch, main, load 2.5-5.6, up to 2.7 "
    "cores outside): down 369 -> 424 MB/s (medians; ranges 174-490 and 315-492), up 371 -> "
    "370, relay 0.865 -> 0.861 and 1.075 -> 1.159 ms/MiB (up: lower in 9 of 20), agent "
    "0.935 -> 0.929 and 0.853 -> 0.844 (up again alone, 8 reps, load 1.6-2.4: relay 1.220 "
    "-> 1.105 ms/MiB, lower in 28 of 32 pairs, 355 -> 391 MB/s; a copy of main logging "
    "each window change at warning logged none); mixed download 331 -> 345 MB/s, GET p50 1.28 -> "
    "1.24 ms, p99 24 -> 10 (lower in 14 and 15 of 20), 685 -> 699 GETs a second beside it, "
    "and with them agent system calls 17.9 -> 18.7 a MiB of the download (relay 18.6 -> "
    "19.3; they follow the GETs per MiB, rep by rep): within this loaded machine's noise. "
    "So about 1.4 us of the 5 the 2x target needs. Not tried: stepping the"
    " receive nonce once per read (one `Struct.unpack` fewer a packet after a read's first: "
    "~60 ns a packet, at c=32 one packet a request in each process).",
    "GETs beside a download on long links, measured beside it (2026-12-06). The GETs' "
    "companion had been the 1 GiB file: at 10 ms the direct path moved it in 0.7 s and "
    "Sluice in 1.8 s, so of the 3 s of GETs (from 0.5 s) most ran after it had ended, on "
    "an idle link (`bench.long_link --points beside_trace`: Sluice's GETs during the "
    "download p50 19-25 ms, all of them 11). Now an 8 GiB sparse file, cut off after the "
    "GETs; a run whose download ended first is not judged. Measured so, at 10/50/100 ms "
    "(2 reps): direct p50 16-19/57/106-107 ms, Sluice 19-21/63-65/112-117, OpenSSH (whose "
    "download is slower) 51/101 at 50/100; direct misses the p50 target (RTT + 5 ms) at "
    "10 and 50 ms too: on two cores the line, curl, nginx and the endpoints all wait for "
    "the CPU. `ss` during a 50 ms run: the relay's tunnel socket held 2 MB on average "
    "(6 MB at most) unread, the line's socket toward it 1.9 MB unsent, the agent's 1.2 MB: "
    "about 10 ms of data at 600 MB/s ahead of each small answer, with the download's "
    "window 36-41 MB where the pace times the round trip was 29-33 MB (the relay's "
    "debug log). Tried and left out: (1) a queue's shrink to the pace of the rounds that "
    "queued rather than the best of the last ten (`sluice/window_tuning.py`; a simulated "
    "reader swinging between 400 and 600 MB/s: median queue 9.1 -> 7.3 ms at 50 ms, 1% "
    "less throughput); two interleaved `bench.long_link` A/Bs (8 reps each at 10 and 50 ms, "
    "4 at 100): GET-beside p50 -3 ms "
    "at 10 and 50 ms, +1.8 at 100 ms, the download beside the GETs -3 to -8%, the 64 MiB "
    "download at 10 ms -7% in one run and unchanged in the other. (2) Lanes: a second "
    "SSH connection per relay on a long link, the GETs on the one without the download "
    "(branch merged as d06aed5, reverted): a second agent process had given the GETs p50 "
    "56.6-59.8 against 63.5-63.9 ms at 50 ms, but lanes in one process gave nothing "
    "(10 ms 19.4-22.5 vs 19.2-20.3, 50 ms 65.8-67.8 vs 63.1-67.0) and the 64 MiB upload at "
    "10 ms fell (214-251 vs 236-384 MB/s): the second process's gain was its own share "
    "of the saturated CPU. (3) Python built with PGO and LTO (Debian's 3.11.2, as the "
    "images and a systemd install on Debian run it) against pyenv's 3.11.7 without them "
    "(this venv): 15-25% faster on pure-Python loops, but c=32 relay + agent CPU 47-49 "
    "us a request on either (`bench.ab --points c32 --openssh`, 3 and 2 runs, OpenSSH "
    "21.0-21.2).",
)


def _md_table(grid: list[list[str]]) -> str:
    lines = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(grid[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in grid[1:]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _foreign(rows: list[dict[str, Any]]) -> str:
    got = sorted(float(r.get("foreign_cores", 0.0)) for r in rows)
    if not got:
        return "not measured"
    busy = sum(1 for v in got if v > 0.25)
    return (
        f"median {got[len(got) // 2]:.2f}, max {got[-1]:.2f} cores; {busy} of {len(got)} "
        "points had more than a quarter core of outside load"
    )


def _load_warning(rows: list[dict[str, Any]]) -> list[str]:
    got = sorted(float(r.get("foreign_cores", 0.0)) for r in rows)
    if not got or got[len(got) // 2] <= 0.25:
        return []
    return [
        f"**Outside load**: other processes on this machine used a median of "
        f"{got[len(got) // 2]:.2f} cores during the points (see `foreign_cores` in the raw "
        "numbers), so absolute numbers are lower and noisier than on an idle machine; "
        "ratios between paths measured back to back hold up better.",
        "",
    ]


def render(s: Summary) -> str:
    r = s.results
    plan = r["plan"]
    env = r["environment"]
    quick = r["quick"]
    out = [
        "# Benchmarks" + (" (quick check: small sizes, one repetition)" if quick else ""),
        "",
        f"Written by `{'make bench-quick' if quick else 'make bench'}` "
        f"(`python -m bench.run{' --quick' if quick else ''}`) on "
        f"{r.get('finished_at') or f'{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC'} in "
        f"{r['elapsed_s'] / 60:.1f} minutes. "
        "Do not edit by hand: run `make bench` again. Code in `bench/`.",
        "",
        *_load_warning(s.rows),
        "## Machine and versions",
        "",
        *[f"- **{k}**: {v}" for k, v in env.items()],
        "",
        "## What runs",
        "",
        "One internal API for every path: Debian's nginx (one worker) on loopback, serving a "
        "~80-byte JSON file, sparse files and one of random bytes for downloads (also under "
        "`/plain/` without sendfile), WebDAV `PUT` for uploads (answered "
        "once the whole body is in) and `/slow` (`echo_sleep 1`). Four paths, all on "
        "127.0.0.1:",
        "",
        "- **direct**: client → nginx.",
        "- **openssh**: client → sshd's forwarded port → `ssh -N -R` → nginx. A private "
        "`sshd -D -f sshd_config` with its own host key and authorized_keys (no PAM, "
        "`StrictModes no`), `Ciphers aes128-gcm@openssh.com`, compression off.",
        "- **sluice-onprem**: client → relay `/v1/connections/{id}/proxy/…` → SSH tunnel → "
        "`sluice-agent run` → nginx.",
        "- **sluice-cloud**: client → relay proxy route → nginx (no tunnel): the relay's own cost.",
        "",
        "`sluice-server run` and `sluice-agent run` are separate processes configured by "
        "environment (log level warning, uvloop). CPU is `utime+stime` from "
        "`/proc/<pid>/stat` of relay + agent (Sluice) or ssh + sshd and its per-connection "
        "children (OpenSSH); peak RSS is `VmHWM`, reset before each point through "
        "`/proc/<pid>/clear_refs`. Client tools (wrk, curl) and nginx are not counted.",
        "",
        f"- Small GETs: `wrk --latency -t min(2,c) -c C -d {plan['seconds']}s --timeout 10s "
        "-s report.lua` (a `done` hook prints exact percentiles); the Sluice paths add "
        "`-H 'Authorization: Bearer <admin token>'`. *New connection per request* adds "
        "`-H 'Connection: close'` (a new client connection each time; the relay still reuses "
        "its pooled streams to the agent, as it would in production).",
        f"- Transfers: `curl -s -o /dev/null -w …` for the {s.medium} and {s.large} downloads, "
        f"`curl -T file -H 'Expect:'` (PUT) for the {s.medium} upload. MB/s is 10⁶ bytes/s.",
        f"- Mixed: the {s.large} download starts, then c=1 keep-alive GETs run for 60% of the "
        "solo download's time on the same path; the download's speed is compared with its "
        "solo speed from the same repetition.",
        f"- {plan['repetitions']} repetition(s); within each, every point runs on every path "
        "back to back (direct, openssh, sluice-onprem, sluice-cloud). Cells show the median "
        "and (min to max).",
        f"- Scale: {plan['slow']} requests at once to `/slow` through one agent (aiohttp "
        f"client, one connection each); {plan['agents']} agents as `bench.fleet` processes "
        f"({plan['per_process']} asyncssh agent sessions each, the agent's own Supervisor and "
        f"tunnel code) on a fresh relay; then SIGTERM the relay and start it again on the "
        f"same data dir. Fleet agents' backoff: `{json.dumps(BACKOFF)}`. "
        "Handshakes at once = most connection attempts (TCP connect to tunnel registered) "
        "in flight together, from the agents' timestamps.",
        "",
        "Everything — relay, agent, nginx, sshd, ssh, wrk, curl, fleet agents — shares "
        "the machine's cores, so client and backend load is part of every number. "
        "`foreign_cores` in the raw numbers is the CPU that processes *outside* the bench "
        "used during each point (from /proc/stat less the bench's own process tree): "
        + _foreign(s.rows)
        + ".",
        "",
        "## What a request through Sluice costs, and the levers in place",
        "",
        "- The relay's listener (`server/proxy/front.py`) reads a proxy request's head "
        "itself (llhttp through httptools) and answers from the socket, without aiohttp's "
        "request and response objects, routing and middlewares; requests it does not "
        "serve (the API, HEAD, chunked or 100-continue bodies) go to aiohttp's server. "
        "The relay applies the connection (URL, headers, auth) and writes the API request "
        "head in one write on a kept-alive CONNECT stream through the agent "
        "(`server/tunnel/stream_pool.py`, `server/tunnel/http1.py`; "
        "the answer's head is parsed by llhttp; a Content-Length body after the read that "
        "held the head passes raw, counted and handed on as it arrives, not parsed or "
        "copied; an answer head that repeats its stream's last one byte for byte is not "
        "parsed again, and the caller's fields and head made from it are reused). "
        "Cloud mode writes the same head on kept-alive TCP connections from the relay; "
        "header fields stay byte pairs throughout (`server/proxy/headers.py`). "
        "Decrypted connection settings "
        "are cached for 2 s, with one read per expiry however many requests wait.",
        "- SSH: `aes128-gcm@openssh.com` first; asyncssh's hot path tuned in "
        "`sluice/ssh_tuning.py`: no automatic `SSH_MSG_IGNORE` before every packet under AEAD "
        "ciphers, the packets of one channel flush in one socket write, channel data framed "
        "with two copies instead of about twelve (an API's bulk read on the agent lands in "
        "the plaintext of its packet and is encrypted into a reused buffer: no copy) and "
        "decrypted straight from a view of each read into a reused buffer "
        "(asyncssh re-copied its whole input buffer for every packet; a packet that spans reads"
        " gathers only what it lacks; a stream's data is handed on as a view into the "
        "decrypted packet, not copied out of it), one AES-GCM key schedule per key; the "
        "channel packets of one "
        "event-loop turn leave in one write (`sluice/send_coalescing.py`; asyncssh's own "
        "packets write what is held first; a small write on an idle channel, a request or "
        "a small answer, is framed, encrypted and held in one call, `ssh_send._send_small`)"
        "; a send scheduler (`sluice/send_scheduler.py`) gives"
        " channels 256 KiB turns in round robin, holds the transport's buffer to 256 KiB and "
        "the kernel's unsent queue to `TCP_NOTSENT_LOWAT` (2.5 ms of the connection's rate, 128"
        " KiB to 1 MiB), so a small answer never waits behind megabytes of a download. 1 MiB "
        "receive windows towards the relay (answers; 2 MiB for an agent on a short link: "
        "`server/tunnel/link_window.py`; setting `stream_window`; four packets, so "
        "the agent never waits for a top-up between two packets), shrunk to 128 KiB for a bulk "
        "answer while small answers run beside it on the same agent connection "
        "(`server/tunnel/window_share.py`), 1 MiB towards the agent (request bodies); on a long"
        " link a stream's window follows the link (`sluice/window_tuning.py`: once per round "
        "trip, the time from a window top-up to the first byte it released; slow start "
        "quadruples the window while the pace rises (sixteenfold while no other stream holds "
        "growth; its first step at the stream's first top-up once the link is known to be long,"
        " before any round by the login's round trip), then it holds the pace times the round "
        "trip plus a few ms, and a new stream on a warm connection starts from what the last "
        "one carried (the most its data arrived at over half a round trip, where an answer "
        "ended before a round timed its last step); up to a "
        "per-agent budget of 64 MiB; loopback never grows it), 256 KiB "
        "packets (a quarter of the per-packet work of 32 KiB ones), glibc's malloc told to keep"
        " buffers of up to 2 MiB on the heap instead of mapping each one (`sluice/runtime.py`),"
        " uvloop, TCP_NODELAY (asyncio and uvloop set it on every TCP socket).",
        "- Answers of up to 64 KiB with a known length go to the caller in one write; larger "
        "ones stream, with body pieces that queued up joined into one write (up to 256 KiB).",
        "- What is left (`perf record` on the relay and agent; py-spy profiles with "
        "`python -m bench.run --profile DIR`): small requests are bound by the relay's "
        "single core, most of it in the Python interpreter (the relay's engine, stream pool "
        "and front, asyncssh's packet handling; no single spot dominates), the rest in "
        "system calls (one socket write each way per request); bulk "
        "transfers spend about a third in the kernel (loopback TCP), a quarter in the "
        "interpreter and a tenth in memory copies and AES-GCM.",
        "",
        "## Tuning history",
        "",
        *[f"- {line}" for line in TUNING_HISTORY],
        "",
        "## Summary",
        "",
        _md_table(s.grid()),
        "",
        "## Targets for the Sluice on-premise path",
        "",
        _md_table(
            [["target", "verdict", "measured"]]
            + [[v.name, v.verdict, v.detail] for v in targets.evaluate(s)]
        ),
        "",
        *_backends(s),
        *_issue22_loopback(s),
        *_long_links(r),
        *_cluster(r),
        "## Scale",
        "",
        *[f"- {line}" for line in s.scale_lines()],
        "",
        "## Raw numbers",
        "",
        "Every point of every repetition (CPU is for the path's relay/agent or ssh/sshd).",
        "",
        _md_table(
            [list(RAW_COLUMNS)] + [[_fmt(row.get(c)) for c in RAW_COLUMNS] for row in s.rows]
        ),
        "",
        "Slow requests:",
        "",
        "```json",
        json.dumps(r["slow"], indent=1),
        "```",
        "",
        "Agents and restart:",
        "",
        "```json",
        json.dumps(r["fleet"], indent=1),
        "```",
        "",
    ]
    return "\n".join(out)


BACKENDS = (
    ("down_medium", "sparse file, sendfile on (the main table's)"),
    ("down_medium_real", "random bytes, sendfile on; tcp_nopush on"),
    ("down_medium_plain", "random bytes, nginx defaults (no sendfile)"),
    ("down_medium_plain_sparse", "sparse file, nginx defaults (no sendfile)"),
)
# The two backend configurations issue 22 asks to judge (a real file each).
JUDGED = ("down_medium_real", "down_medium_plain")


def _backends(s: Summary) -> list[str]:
    paths = ("direct", "openssh", "sluice-onprem")
    grid = [["backend", *paths, "Sluice ÷ OpenSSH"]]
    for point, label in BACKENDS:
        cells = [s.cell(p, point, "mb_s", ".0f") for p in paths]
        ours, theirs = s.median(ONPREM, point, "mb_s"), s.median("openssh", point, "mb_s")
        ratio = f"{ours / theirs:.2f}x" if ours and theirs else DASH
        grid.append([label, *cells, ratio])
    return [
        f"## Loopback: the backend's side of a {s.medium} download",
        "",
        "The same download from nginx four ways (MB/s, median and range over the "
        "repetitions). " + BACKEND_FINDINGS,
        "",
        _md_table(grid),
        "",
    ]


# Why `make bench-quick` and the second harness of issue 22 disagreed (found
# with these points; see the report of issue 22 for the runs).
BACKEND_FINDINGS = (
    "Why `make bench-quick` (627 vs 634 MB/s, OpenSSH vs Sluice) and the second harness of "
    "issue 22 (Sluice 0.55-0.64x OpenSSH) disagreed, measured on 2026-12-04 with "
    "`bench/nginx.py`'s four variants (5 rounds, paths interleaved): the backend is not it. "
    "Sparse or random bytes, `sendfile` on or off, Sluice stayed at 0.5-0.8x OpenSSH "
    "(about 320 vs 500-650 MB/s) in every variant; the first transfer of each kind was "
    "25-35% slower for Sluice and 10-20% for OpenSSH (pools, buffers and windows warming), "
    "and 8 MiB points (what `bench-quick` measures) swing by 2x between rounds. The code "
    "that measured 1.04x in the full run of 2026-11-28 (7b2c01a) measured 0.6x on the same "
    "day as this run. What changed is the machine: that run had no outside load (median 0.00 "
    "cores), these had 1-2 cores of other work on a 2-core VM (`foreign_cores` below). "
    "Sluice's download costs about 1.6x the CPU of ssh+sshd per byte, in three processes "
    "(relay, agent, plus curl and nginx) that compete for the cores, so it loses most when "
    "the cores are shared. Hence `make bench` measures both configurations with a real "
    "file, and the verdicts take the worse; compare runs only at similar outside load."
)


def _issue22_loopback(s: Summary) -> list[str]:
    rows = []
    ratios = {}
    for judged in JUDGED:
        ours, theirs = s.median(ONPREM, judged, "mb_s"), s.median("openssh", judged, "mb_s")
        if ours and theirs:
            ratios[judged] = ours / theirs
    if ratios:
        worst = min(ratios, key=lambda k: ratios[k])
        rows.append(
            [
                f"{s.medium} download ≥ 1.0x OpenSSH, both nginx configurations",
                "met" if ratios[worst] >= 1.0 else "MISSED",
                f"worse {ratios[worst]:.2f}x ({dict(BACKENDS)[worst]}); "
                + ", ".join(f"{dict(BACKENDS)[k]}: {v:.2f}x" for k, v in ratios.items()),
            ]
        )
    ours, theirs = s.median(ONPREM, "up_medium", "mb_s"), s.median("openssh", "up_medium", "mb_s")
    if ours and theirs:
        rows.append(
            [
                f"{s.medium} upload ≥ 1.0x OpenSSH",
                "met" if ours / theirs >= 1.0 else "MISSED",
                f"{ours / theirs:.2f}x ({ours:.0f} vs {theirs:.0f} MB/s)",
            ]
        )
    for point, floor, label in (("get_c1", 0.8, "c=1"), ("get_c32", 1.0, "c=32")):
        ours, theirs = s.median(ONPREM, point, "rps"), s.median("openssh", point, "rps")
        if ours and theirs:
            rows.append(
                [
                    f"{label} keep-alive GET ≥ {floor:g}x OpenSSH req/s (one relay worker)",
                    "met" if ours / theirs >= floor else "MISSED",
                    f"{ours / theirs:.2f}x ({ours:.0f} vs {theirs:.0f} req/s)",
                ]
            )
    direct, p50 = s.median("direct", "get_c1", "p50_ms"), s.median(ONPREM, "get_c1", "p50_ms")
    if direct is not None and p50 is not None:
        rows.append(
            [
                "c=1 GET p50 ≤ direct + 0.15 ms",
                "met" if p50 - direct <= 0.15 else "MISSED",
                f"{p50:.3f} ms = direct {direct:.3f} + {p50 - direct:.3f} ms",
            ]
        )
    p99 = s.median(ONPREM, "get_c1", "p99_ms")
    if p99 is not None:
        rows.append(["c=1 GET p99 ≤ 1 ms", "met" if p99 <= 1 else "MISSED", f"{p99:.3f} ms"])
    ours, theirs = (
        s.median(ONPREM, "get_c32", "cpu_us_per_req"),
        s.median("openssh", "get_c32", "cpu_us_per_req"),
    )
    if ours and theirs:
        rows.append(
            [
                "CPU per request at c=32 ≤ 2x ssh + sshd",
                "met" if ours / theirs <= 2 else "MISSED",
                f"{ours / theirs:.2f}x ({ours:.0f} vs {theirs:.0f} µs)",
            ]
        )
    if not rows:
        return []
    return [
        "## Issue 22's loopback targets (Sluice on-premise, one run)",
        "",
        _md_table([["target", "verdict", "measured"], *rows]),
        "",
    ]


def _long_links(r: dict[str, Any]) -> list[str]:
    links = r.get("long_link")
    if not links:
        return []
    summary = LinkSummary(links)
    plan = summary.plan
    return [
        "## Long links (issue 22)",
        "",
        "The agent far from the relay: each path's long hop passes through "
        "`bench/delay_line.py` (a process per line holding every byte half the round trip "
        "each way; this kernel has no netem), see `bench/long_link.py`. The line releases "
        "bytes at their due time by a timerfd (`bench/line_clock.py`): never early, a few "
        "tenths of a ms late each way, no busy wait; its own CPU per GiB carried is in the "
        "table, since on this 2-core machine it competes with the path it carries (before "
        "2026-12-05 it spun up to 0.7 ms before each release and let bytes go 0.2-0.3 ms "
        "early: 1.0-4.3 CPU s/GiB, long-link figures before then are not comparable). "
        f"{plan['repetitions']} repetition(s) per round trip; a file of random bytes of "
        f"{plan['size'] // (1024 * 1024)} MiB down (curl) and up (PUT)"
        + (
            f", and of {plan['large'] // (1024 * 1024)} MiB down and up in the first "
            "repetition only (one run: OpenSSH at 100 ms takes about a minute per GiB)"
            if plan.get("large")
            else ""
        )
        + "; c=1 keep-alive GETs "
        f"for {plan['get_seconds']} s beside a download on the same path, of a sparse file "
        f"of {plan.get('beside_size', 1 << 30) // (1 << 30)} GiB, so that it runs for as long "
        "as they do on every path (it is cut off after them; until 2026-12-06 it was the "
        "1 GiB file, which the direct path and Sluice moved before the GETs ended: most GETs "
        "then ran on an idle link, and the GET-beside figures before then are too low); "
        f"a fresh caller's GET (wrk, a new connection per request, {plan['get_seconds']} s). "
        "The line accepts connections at once, so a new TCP connection through it costs no "
        "round trip (on a real link the direct path's fresh GET costs two).",
        "",
        f"![throughput against round trip]({LINK_PLOT})",
        "",
        _md_table(summary.grid()),
        "",
        "Targets of issue 22 for long links, judged at the worst round trip (transfers: the "
        "worse of the two sizes):",
        "",
        _md_table(
            [["target", "verdict", "measured"]]
            + [
                [name, "n/a" if met is None else ("met" if met else "MISSED"), detail]
                for name, met, detail in summary.verdicts()
            ]
        ),
        "",
    ]


LINK_PLOT = "long-links.svg"


def _cluster(r: dict[str, Any]) -> list[str]:
    got = r.get("cluster") or {"skipped": "not measured by this version of the bench"}
    head = ["## Relay cluster (issue 17)", ""]
    if "skipped" in got:
        return [*head, f"Not measured: {got['skipped']}.", ""]
    return [
        *head,
        "`bench/cluster.py` on PostgreSQL (a fresh database per scenario), nginx serving the "
        f"small JSON file, wrk for {got['seconds']} s per point, one repetition. *local*: "
        "the relay holding the agent's only tunnel; *forwarded*: a second relay without one, "
        "which forwards over the relay-to-relay hop. *c=32, N workers*: `sluice-server run "
        "--workers N` (the API port shared), the agent tunnelled to every worker.",
        "",
        *cluster.table(got["rows"]),
        "",
        *[f"- {line}" for line in cluster.findings(got["rows"])],
        *[f"- {line}" for line in (cluster.fleet_lines(got["fleet"]) if "fleet" in got else [])],
        *([f"- The 3-relay fleet failed: {got['fleet_failed']}."] if "fleet_failed" in got else []),
        "",
    ]


def text_table(s: Summary) -> str:
    """The summary and the target verdicts as the run prints them."""
    grid = s.grid()
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    text = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in grid]
    text.insert(1, "-+-".join("-" * w for w in widths))
    text += ["", "Targets (Sluice on-premise):"]
    text += [f"  {v.verdict:6} {v.name}: {v.detail}" for v in targets.evaluate(s)]
    text += ["", "Scale:"] + [f"  {line}" for line in s.scale_lines()]
    text += ["", f"Outside load during the points: {_foreign(s.rows)}"]
    return "\n".join(text)
