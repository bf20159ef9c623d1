"""The policy protocol's request codec: bytes in, requests out; no transport, no clock.

Wire format (Postfix SMTPD_POLICY_README, ``docs/`` has the summary): a request is
``name=value`` lines, each ended by ``\\n``, and the request is ended by an empty line. Many
requests travel over one connection, and a request may arrive split over any number of reads.

``RequestDecoder.feed(data)`` takes the bytes of one read and returns every request they
complete, in order, each as a dict of the wanted attributes (``WANTED_ATTRIBUTES``); an empty
list means "need more bytes". A malformed request raises ``MalformedRequestError`` with its kind and
the well-formed requests that came before it in the same read (they are answered first); the
decoder then stays failed. What is malformed:

* ``request-too-large``: a request (with its blank line) longer than ``max_request_bytes``, or
  that many bytes without the end of a request;
* ``line-without-equals``: any line without ``=``;
* ``nul-byte``: a NUL byte anywhere;
* ``invalid-utf8``: a request that is not UTF-8;
* ``value-too-long``: a ``sender`` or ``recipient`` longer than ``MAX_ADDRESS_CHARS`` characters
  (no real address is; checked only for requests longer than that, so it costs nothing in the
  common case).

A line that starts a request empty is an empty request (zero attributes), as Postfix's
line-oriented grammar reads it. A ``\\r\\n`` pair is read as ``\\n`` (hand-typed requests); a
bare ``\\r`` stays part of the value. A value is everything after the first ``=``; a name sent
twice keeps its first value, which the protocol allows.

Speed: every line is validated but only the seven wanted values are copied out. Requests are
read by a ``Layout``: one regular-expression match that checks the name of every line, captures
the wanted values and finds the blank line, in one pass. The first layout of every decoder is
Postfix's own attribute order (``policyd.constants.POSTFIX_ATTRIBUTE_ORDER``). A request in any
other order is read by the general rule (one validation pass, one scan for the wanted names);
when a connection sends the same other order three times in a row, that order becomes a layout
too (shared by every connection, at most ``LEARNED_LAYOUTS`` of them; another connection takes a
known one at its second request), so a client with its own fixed order (another Postfix version,
a test tool) is read as fast as Postfix from then on. A client whose order changes with every
request stays on the general rule, which costs a cheap check of the order per request.
"""

from __future__ import annotations

import re
from typing import NoReturn

from policyd.constants import POSTFIX_ATTRIBUTE_ORDER
from policyd.engine.stats import (
    INVALID_UTF8,
    MAX_ADDRESS_CHARS,
    NO_EQUALS,
    NUL_BYTE,
    TOO_LARGE,
    VALUE_TOO_LONG,
)

#: The attributes handed on; every line is validated, but only these are copied into the
#: mapping (building a dict of all ~30 attributes costs more than the engine does).
WANTED_ATTRIBUTES = (
    "request",
    "protocol_state",
    "sender",
    "recipient",
    "instance",
    "queue_id",
    "client_address",
)
#: A line of a wanted attribute (after a newline), in one scan of the request.
_WANTED_LINE = re.compile(
    "\n(" + "|".join(re.escape(name) for name in WANTED_ATTRIBUTES) + ")=([^\n]*+)"
)

#: One request as handed on: wanted attribute name -> value (absent names are absent).
Request = dict[str, str]

#: At most this many attribute orders besides Postfix's are learned per process (never evicted:
#: a client sending a new order every time keeps the general rule, and the cost of compiling).
LEARNED_LAYOUTS = 32

#: A request with more lines than this is never learned as a layout (Postfix sends about 30).
LAYOUT_MAX_LINES = 100

_NL = 10  # b"\n"[0]
_CR = 13  # b"\r"[0]
_EQUALS = 61  # b"="[0]
_ALL_BUT_EQUALS_AND_NEWLINE = bytes(sorted(set(range(256)) - {_EQUALS, _NL}))


#: An incomplete request is kept as the reads that brought it; past this many pieces the rest
#: go into one growing buffer, so a request sent a byte at a time costs about its own size, not
#: an object per byte (issue 16: ~40 bytes each).
PENDING_PIECES = 16


def add_piece(pieces: list[bytes | bytearray], data: bytes) -> None:
    """Append ``data`` to ``pieces`` (joined later with ``b"".join``): a list entry each up to
    ``PENDING_PIECES``, then into one ``bytearray`` at the end (amortised, no per-read object)."""
    if len(pieces) < PENDING_PIECES:
        pieces.append(data)
    else:
        last = pieces[-1]
        if type(last) is bytearray:
            last += data
        else:
            pieces.append(bytearray(data))


class MalformedRequestError(Exception):
    """A request broke the protocol: close the connection without a reply.

    ``kind`` is the ``m365_policyd_protocol_errors_total`` label (``policyd.engine.stats``);
    ``requests`` are the well-formed requests decoded before it in the same ``feed``.
    """

    def __init__(self, kind: str, requests: list[Request]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.requests = requests


class Layout:
    """One attribute order, read in one match: ``names`` exactly, line by line, then a blank line.

    Every line's name is checked, so a request the pattern matches has ``=`` on every line and
    its wanted values at the first line of their name; anything else does not match and is read
    by the general rule.
    """

    __slots__ = ("names", "pattern")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        wanted = set(WANTED_ATTRIBUTES)
        lines = []
        for name in names:
            if name in wanted:  # the first line of a wanted name carries its value
                wanted.discard(name)
                lines.append(f"{re.escape(name)}=(?P<{name}>[^\\n]*+)")
            else:
                lines.append(f"{re.escape(name)}=[^\\n]*+")
        self.pattern = re.compile("\n".join(lines) + "\n\n")


#: Postfix's own order, the layout every decoder starts with.
POSTFIX_LAYOUT = Layout(POSTFIX_ATTRIBUTE_ORDER)

_learned: dict[tuple[str, ...], Layout] = {POSTFIX_ATTRIBUTE_ORDER: POSTFIX_LAYOUT}


def layout_for(names: tuple[str, ...]) -> Layout | None:
    """The shared layout for ``names``: made on first use, None once ``LEARNED_LAYOUTS`` exist."""
    layout = _learned.get(names)
    if layout is None and len(_learned) <= LEARNED_LAYOUTS and len(names) <= LAYOUT_MAX_LINES:
        layout = _learned[names] = Layout(names)
    return layout


def lines_have_equals(raw: bytes) -> bool:
    """True when every line of ``raw`` (one request, no blank line, not empty) contains ``=``.

    The request's ``=`` and ``\\n`` bytes alone (UTF-8 never hides them inside a character)
    read ``=\\n=\\n...=`` when each line has one ``=``; a line without one shows as a ``\\n`` at
    either end or two in a row.
    """
    signs = raw.translate(None, _ALL_BUT_EQUALS_AND_NEWLINE)
    return bool(signs) and signs[0] != _NL and signs[-1] != _NL and b"\n\n" not in signs


class RequestDecoder:
    """Decodes one connection's byte stream into requests (see the module docstring).

    ``max_request_bytes`` may be changed between reads (a reload); it applies from the next
    ``feed`` on.
    """

    __slots__ = (
        "_candidate",
        "_cr",
        "_failed",
        "_layout",
        "_pending",
        "_pending_len",
        "_signature",
        "max_request_bytes",
    )

    def __init__(self, max_request_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self._pending: list[bytes | bytearray] = []  # an incomplete request (see add_piece)
        self._pending_len = 0
        self._cr = False  # the last read ended in "\r" (held back: it may start a "\r\n")
        self._failed: MalformedRequestError | None = None
        self._layout = POSTFIX_LAYOUT  # tried first for every request
        self._candidate: tuple[str, ...] = ()  # another order seen once: learned if it repeats
        self._signature: tuple[str | int, ...] = ()  # of the last request read by the rule

    @property
    def layout(self) -> Layout:
        """The layout tried first for the next request."""
        return self._layout

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete request held until its end arrives."""
        return self._pending_len

    def feed(self, data: bytes) -> list[Request]:
        """Every request that ``data`` completes, in order; ``[]`` means "need more bytes".

        Raises ``MalformedRequestError`` for a malformed request (and for every ``feed`` after it).
        """
        if self._failed is not None:
            raise MalformedRequestError(self._failed.kind, [])
        if not data:
            return []
        requests: list[Request] = []
        # The common case, one read holding whole requests (Postfix waits for each answer):
        # ASCII without CR or NUL, each request read by one match of the layout.
        if (
            not self._pending
            and not self._cr
            and data[-2:] == b"\n\n"
            and _CR not in data
            and 0 not in data
        ):
            try:
                text = data.decode()
            except UnicodeDecodeError:  # the general rule finds the request at fault
                text = "\x80"
            if text.isascii():  # then character offsets are byte offsets
                match = self._layout.pattern.match
                limit = self.max_request_bytes
                start = 0
                size = len(text)
                while (found := match(text, start)) is not None:
                    end = found.end()
                    if end - start > limit:
                        break
                    attrs: Request = found.groupdict()
                    if end - start > MAX_ADDRESS_CHARS:
                        self._check_addresses(attrs, requests)
                    requests.append(attrs)
                    start = end
                    if start == size:
                        return requests
                if start:
                    data = data[start:]
        return self._general(data, requests)

    # --- the general rule --------------------------------------------------------------------

    def _general(self, data: bytes, requests: list[Request]) -> list[Request]:
        """Frame, check and read ``data`` request by request (any split, any order)."""
        if self._cr or _CR in data:
            data = self._without_crlf(data)
            if not data:
                return requests
        nul = data.find(b"\x00")  # the only scan for NUL: tails were checked when they came
        pending = self._pending
        if pending:
            if nul < 0 and b"\n\n" not in data and not (data[0] == _NL and pending[-1][-1] == _NL):
                add_piece(pending, data)  # still no end of request: no join, no copy
                self._pending_len += len(data)
                if self._pending_len >= self.max_request_bytes:
                    self._fail(TOO_LARGE, requests)
                return requests
            if nul >= 0:
                nul += self._pending_len
            pending.append(data)
            data = b"".join(pending)
            self._pending = []
            self._pending_len = 0
        if nul >= 0:
            self._frame(data[:nul], NUL_BYTE, requests)
        else:
            self._frame(data, None, requests)
        return requests

    def _frame(self, buf: bytes, fault: str | None, requests: list[Request]) -> None:
        """Read every complete request in ``buf``; keep an incomplete tail for later.

        ``fault`` is the kind of a fault found just after ``buf`` (a NUL byte): the requests
        before it are read, then the decoder fails.
        """
        limit = self.max_request_bytes
        start = 0
        size = len(buf)
        while start < size:
            if buf[start] == _NL:  # an empty line where a request starts: an empty request
                requests.append({})
                start += 1
                continue
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            after = end + 2
            if after - start > limit:
                self._fail(TOO_LARGE, requests)
            try:
                text = buf[start:after].decode()
            except UnicodeDecodeError:
                self._fail(INVALID_UTF8, requests)
            found = self._layout.pattern.fullmatch(text)
            attrs: Request
            if found is not None:
                attrs = found.groupdict()
            else:
                if not lines_have_equals(buf[start:end]):
                    self._fail(NO_EQUALS, requests)
                body = text[:-2]
                pairs = _WANTED_LINE.findall("\n" + body)
                attrs = {}
                for name, value in pairs:
                    if name not in attrs:
                        attrs[name] = value
                # A cheap sign of a fixed order: the wanted names in the same order, as many
                # lines; only then is the whole order worth working out.
                signature = (*(name for name, _ in pairs), body.count("\n"))
                if signature == self._signature:
                    self._learn(body)
                self._signature = signature
            if after - start > MAX_ADDRESS_CHARS:
                self._check_addresses(attrs, requests)
            requests.append(attrs)
            start = after
        rest = size - start
        if fault is not None:
            self._fail(TOO_LARGE if rest >= limit else fault, requests)
        if rest:
            if rest >= limit:
                self._fail(TOO_LARGE, requests)
            self._pending = [buf[start:]]
            self._pending_len = rest

    def _learn(self, text: str) -> None:
        """Try this request's attribute order first from now on, once it is known or repeats
        (called when the order looked the same as the last request's)."""
        names = tuple(line[: line.index("=")] for line in text.split("\n"))
        layout = _learned.get(names)
        if layout is None:
            if names != self._candidate:  # once may be a one-off: wait for the next time
                self._candidate = names
                return
            layout = layout_for(names)
            if layout is None:
                return
        self._layout = layout

    def _check_addresses(self, attrs: Request, requests: list[Request]) -> None:
        """Fail with ``value-too-long`` when the sender or the recipient is longer than
        ``MAX_ADDRESS_CHARS``: no real address is (RFC 5321 caps a path at 256 octets), and a
        flood of huge unique values would otherwise fill the engine's caches."""
        if (
            len(attrs.get("sender", "")) > MAX_ADDRESS_CHARS
            or len(attrs.get("recipient", "")) > MAX_ADDRESS_CHARS
        ):
            self._fail(VALUE_TOO_LONG, requests)

    def _without_crlf(self, data: bytes) -> bytes:
        """Read ``\\r\\n`` as ``\\n``, also when the pair is split across two reads."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._cr = True
        return data.replace(b"\r\n", b"\n")

    def _fail(self, kind: str, requests: list[Request]) -> NoReturn:
        self._pending = []
        self._pending_len = 0
        self._failed = MalformedRequestError(kind, requests)
        raise self._failed
