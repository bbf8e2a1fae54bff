"""What a customer's SMS reply means: a score, an opt-out/opt-in/help keyword, or free text.

:func:`interpret_reply` rules, in order:

1. **Twilio's verdict first.** ``OptOutType`` (Advanced Opt-Out: ``STOP``, ``START``, ``HELP``,
   any case) decides the kind, whatever the body says.
2. **Keywords.** The body is one keyword, in any case, with only whitespace, punctuation or emoji
   around it: ``STOP STOPALL UNSUBSCRIBE CANCEL END QUIT REVOKE OPTOUT`` -> ``opt_out``;
   ``START YES UNSTOP`` -> ``opt_in``; ``HELP INFO`` -> ``help``. ``"Stop"``, ``" STOP "``,
   ``"stop."`` are keywords; ``"please stop texting me"`` is not (it is ``text``, kept as a
   comment for a human to read).
3. **A score** is an integer 0..10, found as follows. The body is normalised per character:
   Unicode digits of any script (full-width ``U+FF19``) become ASCII, compatibility forms fold
   (NFKC), combining marks, variation selectors and other invisible format characters are
   dropped (so the keycap emoji ``9️⃣`` is ``9``; ``🔟`` is ``10``); other emoji are just
   non-word characters. Then every number not glued to a word is collected (``"2nd"``, ``"a7"``
   are not numbers), a trailing ``/10``, ``of 10``, ``out of 10`` (or ``ten``) belonging to it.
   The body has a score only if it holds **exactly one** number and that number is a plain
   integer 0..10: ``"9"``, ``"9/10"``, ``" 10!"``, ``"I'd give it a 7"``, ``"0"``. Not a score:
   ``"11"``, ``"100"``, ``"-1"`` (out of range), ``"3.5"``, ``"3,5"`` (a fraction is ambiguous),
   ``"between 7 and 8"``, ``"7-8"``, ``"9 but 2 items missing"`` (two numbers: ambiguous). A body
   that is only an English number word ``zero``..``ten`` (optionally ``/10``, ``out of ten``) is
   that score; number words elsewhere are ignored (``"one of the best"`` is not a 1).
4. **Comment.** With a score at the start of the body (only punctuation/emoji before it), the
   comment is the rest, without leading separators: ``"8 - slow delivery"`` -> ``"slow
   delivery"``, ``"10 great"`` -> ``"great"``. With a score elsewhere, or no score, the comment is
   the whole trimmed body, verbatim (``"I'd give it a 7"`` keeps its words). A comment with no
   letter or digit (``"!"``, ``"👍"``) is ``None``. Comments are the customer's own characters
   (the normalisation above is only for parsing).
5. Anything else is ``text``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Final

from channels.base import Reply, ReplyKind

__all__ = [
    "KEYWORDS",
    "OPT_OUT_TYPES",
    "Reply",
    "ReplyKind",
    "interpret_reply",
]


#: Twilio's opt-out keywords: Twilio itself blocks further messages to a number after one of
#: these (as the whole message, any case), so we must record the opt-out too.
KEYWORDS: Final[Mapping[str, ReplyKind]] = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"),
        ReplyKind.opt_out,
    ),
    **dict.fromkeys(("START", "YES", "UNSTOP"), ReplyKind.opt_in),
    **dict.fromkeys(("HELP", "INFO"), ReplyKind.help),
}

#: Twilio Advanced Opt-Out ``OptOutType`` values.
OPT_OUT_TYPES: Final[Mapping[str, ReplyKind]] = {
    "STOP": ReplyKind.opt_out,
    "START": ReplyKind.opt_in,
    "HELP": ReplyKind.help,
}

_NUMBER_WORDS: Final[Mapping[str, int]] = {
    word: value
    for value, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}

_DENOMINATOR = r"\s*(?:/|\bout\s+of\b|\bof\b)\s*(?:10|ten)\b"

_NUMBER = re.compile(
    r"(?<![\w.,])"  # not glued to a word or to another number
    r"(?P<sign>[-+\u2212\u2013])?"  # -, +, minus sign, en dash
    r"(?P<int>[0-9]+)(?P<frac>[.,][0-9]+)?"
    r"(?![\w]|[.,][0-9])"
    rf"(?P<den>{_DENOMINATOR})?",
    re.IGNORECASE,
)

_WORD_SCORE = re.compile(
    rf"[\W_]*(?P<word>{'|'.join(_NUMBER_WORDS)})(?:{_DENOMINATOR})?[\W_]*",
    re.IGNORECASE,
)

_KEYWORD = re.compile(r"[\W_]*(?P<word>[^\W\d_]+)[\W_]*")

_INVISIBLE = frozenset({"Mn", "Me", "Cf"})  # combining marks, enclosing keycap, ZWJ, VS16
# Leading characters dropped from a comment that follows a score: separators and symbols.
_LEADING_NOISE = frozenset({"Zs", "Cc", "Pd", "Po", "Pe", "Pf", "Sm", "Sc", "Sk", "So"})
_KEYCAP_TEN = "\N{KEYCAP TEN}"


def _normalise(text: str) -> tuple[str, list[int]]:
    """The parse form of ``text`` and, for each of its characters, the index of the original
    character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category in _INVISIBLE:
            continue
        if char == _KEYCAP_TEN:
            replacement = "10"
        elif category == "Nd":
            replacement = str(unicodedata.decimal(char))
        else:
            replacement = unicodedata.normalize("NFKC", char)
        out.append(replacement)
        origin.extend([index] * len(replacement))
    return "".join(out), origin


def _has_alnum(text: str) -> bool:
    return any(char.isalnum() for char in text)


def _comment_after(text: str, start: int) -> str | None:
    rest = text[start:]
    skip = 0
    while skip < len(rest) and (
        unicodedata.category(rest[skip]) in _LEADING_NOISE | _INVISIBLE or rest[skip].isspace()
    ):
        skip += 1
    rest = rest[skip:].rstrip()
    return rest if _has_alnum(rest) else None


def _whole(text: str) -> str | None:
    stripped = text.strip()
    return stripped if _has_alnum(stripped) else None


def _score(body: str, norm: str, origin: list[int]) -> Reply | None:
    words = _WORD_SCORE.fullmatch(norm)
    if words:
        return Reply(ReplyKind.score, _NUMBER_WORDS[words["word"].lower()], None)
    numbers = list(_NUMBER.finditer(norm))
    if len(numbers) != 1:
        return None
    number = numbers[0]
    digits = number["int"]
    if number["frac"] or number["sign"] not in (None, "+") or len(digits) > 2:
        return None
    value = int(digits)
    if value > 10:
        return None
    if _has_alnum(norm[: number.start()]):
        return Reply(ReplyKind.score, value, _whole(body))
    end = origin[number.end() - 1] + 1
    return Reply(ReplyKind.score, value, _comment_after(body, end))


def interpret_reply(body: str, opt_out_type: str | None = None) -> Reply:
    """Interpret one inbound SMS body (see the module docstring for the rules)."""
    if opt_out_type:
        verdict = OPT_OUT_TYPES.get(opt_out_type.strip().upper())
        if verdict is not None:
            return Reply(verdict)
    norm, origin = _normalise(body)
    keyword = _KEYWORD.fullmatch(norm)
    if keyword:
        kind = KEYWORDS.get(keyword["word"].upper())
        if kind is not None:
            return Reply(kind)
    scored = _score(body, norm, origin)
    if scored is not None:
        return scored
    return Reply(ReplyKind.text, None, _whole(body))
