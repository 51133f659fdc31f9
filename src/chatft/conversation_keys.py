"""What identifies a conversation, for finding duplicates and leakage: a 128-bit digest of its message contents.

The contents of its messages in order identify a conversation. For a valid conversation the roles follow from the
number of messages (odd: a system message, then user/assistant pairs), names and weights do not change the text
trained on, so two valid conversations are the same exactly when their content tuples are equal. The key is a
128-bit digest of that tuple rather than the tuple itself: it lets the texts be freed as soon as a line is checked
(keeping them costs as much memory as the data, and time), and two different conversations share a digest with a
probability far below that of a hardware error (about n² / 2^129 for n conversations).
"""

from __future__ import annotations

import hashlib
from operator import itemgetter

ConversationKey = bytes

try:
    from xxhash import xxh3_128_digest as _digest  # ~20 GB/s; a dependency of datasets, pinned in requirements.txt
except ModuleNotFoundError:  # e.g. the inference image, which imports this module for ROLES only

    def _digest(data: bytes, seed: int = 0) -> bytes:
        return hashlib.blake2b(data, digest_size=16, salt=seed.to_bytes(16, "little")).digest()


_role_of = itemgetter("role")
_content_of = itemgetter("content")
_isspace = str.isspace
_EXPECTED_ROLE_LISTS: dict[int, list[str]] = {}


def _expected_roles(count: int) -> list[str]:
    """The roles of a valid conversation of ``count`` messages (cached: a few lengths cover a whole dataset)."""
    roles = _EXPECTED_ROLE_LISTS.get(count)
    if roles is None:
        roles = ["system"] * (count % 2) + ["user", "assistant"] * (count // 2)
        _EXPECTED_ROLE_LISTS[count] = roles
    return roles


def clean_contents(record: object) -> tuple[str, ...] | None:
    """Fast path: the contents of a record whose messages are valid and hold exactly ``role`` and ``content``; else
    None.

    None does not mean invalid, only "not the common case": :func:`check_record` decides. The loops run in C (``map``),
    which makes the common record about as cheap to check as to parse.
    """
    try:
        messages = record["messages"]
        count = len(messages)
        # A role or content missing raises KeyError; a message that is not an object raises TypeError.
        expected = _EXPECTED_ROLE_LISTS.get(count) or _expected_roles(count)
        if list(map(_role_of, messages)) != expected or sum(map(len, messages)) != 2 * count:
            return None
        contents = tuple(map(_content_of, messages))
        # all(): none empty. str.isspace raises TypeError on a content that is not a string.
        if not all(contents) or any(map(_isspace, contents)):
            return None
    except (KeyError, TypeError):
        return None
    # Checked last, as they are rare: a list or string record, or "messages" as an object or string, can reach here;
    # so can a lone system message (the expected roles for 1 message), which has no assistant turn.
    if type(record) is not dict or type(messages) is not list or count < 2:
        return None
    return contents


def conversation_key(contents: tuple[str, ...]) -> ConversationKey:
    """The key of a valid conversation, given the contents of its messages (see ``ConversationKey``)."""
    joined = "\x00".join(contents)
    # surrogatepass: JSON may escape a lone surrogate ("\ud800"), which strict UTF-8 cannot encode.
    if joined.count("\x00") == len(contents) - 1:  # the usual case: no NUL inside a content, the joins are unambiguous
        return _digest(joined.encode("utf-8", "surrogatepass"))
    # Some content holds NUL characters: prefix each content with its length instead, under another seed, so that
    # this form and the joined one never meet.
    parts = (len(part).to_bytes(8, "little") + part.encode("utf-8", "surrogatepass") for part in contents)
    return _digest(b"".join(parts), seed=1)
