"""SMS reply interpretation: keywords, scores, comments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.twilio_sms.replies import KEYWORDS, Reply, ReplyKind, interpret_reply

S, OUT, IN, HELP, TEXT = (
    ReplyKind.score,
    ReplyKind.opt_out,
    ReplyKind.opt_in,
    ReplyKind.help,
    ReplyKind.text,
)

CASES = [
    # plain scores
    ("9", S, 9, None),
    ("0", S, 0, None),
    ("10", S, 10, None),
    (" 10!", S, 10, None),
    ("9/10", S, 9, None),
    ("9 / 10", S, 9, None),
    ("10/10", S, 10, None),
    ("7 out of 10", S, 7, None),
    ("8 of 10", S, 8, None),
    ("+9", S, 9, None),
    ("9.", S, 9, None),
    ("Nine", S, 9, None),
    ("ten!", S, 10, None),
    ("zero", S, 0, None),
    ("nine out of ten", S, 9, None),
    # scores with comments
    ("8 - slow delivery", S, 8, "slow delivery"),
    ("10 great", S, 10, "great"),
    ("10/10 would buy again", S, 10, "would buy again"),
    ("6: the box was damaged.", S, 6, "the box was damaged."),
    ("9 often late but ok", S, 9, "often late but ok"),
    ("9 très bien", S, 9, "très bien"),
    ("I'd give it a 7", S, 7, "I'd give it a 7"),
    ("Great service, 10", S, 10, "Great service, 10"),
    ("2nd order, still a 9", S, 9, "2nd order, still a 9"),
    # unicode and emoji
    ("\uff19", S, 9, None),  # full-width
    ("\uff11\uff10 \uff0f \uff11\uff10", S, 10, None),
    ("\u0667", S, 7, None),  # Arabic-Indic seven
    ("10 🎉", S, 10, None),
    ("👍 8", S, 8, None),
    ("9️⃣", S, 9, None),
    ("🔟", S, 10, None),
    ("10 🎉 love it", S, 10, "love it"),
    # no score
    ("11", TEXT, None, "11"),
    ("-1", TEXT, None, "-1"),
    ("100", TEXT, None, "100"),
    ("3.5", TEXT, None, "3.5"),
    ("3,5", TEXT, None, "3,5"),
    ("between 7 and 8", TEXT, None, "between 7 and 8"),
    ("7-8", TEXT, None, "7-8"),
    ("7/8", TEXT, None, "7/8"),
    ("9 but 2 items were missing", TEXT, None, "9 but 2 items were missing"),
    ("one of the best shops", TEXT, None, "one of the best shops"),
    ("who are you?", TEXT, None, "who are you?"),
    ("👍", TEXT, None, None),
    ("", TEXT, None, None),
    ("   ", TEXT, None, None),
    # keywords
    ("STOP", OUT, None, None),
    ("Stop", OUT, None, None),
    (" STOP ", OUT, None, None),
    ("stop.", OUT, None, None),
    ("Stop!!! 🙏", OUT, None, None),
    ("\uff33\uff34\uff2f\uff30", OUT, None, None),  # full-width
    ("unsubscribe", OUT, None, None),
    ("StopAll", OUT, None, None),
    ("cancel", OUT, None, None),
    ("end", OUT, None, None),
    ("quit", OUT, None, None),
    ("revoke", OUT, None, None),
    ("optout", OUT, None, None),
    ("please stop texting me", TEXT, None, "please stop texting me"),
    ("stop stop", TEXT, None, "stop stop"),
    ("START", IN, None, None),
    ("yes", IN, None, None),
    ("Unstop", IN, None, None),
    ("help", HELP, None, None),
    ("Info?", HELP, None, None),
]


@pytest.mark.parametrize(("body", "kind", "score", "comment"), CASES, ids=[c[0] for c in CASES])
def test_interpret_reply(body, kind, score, comment):
    assert interpret_reply(body) == Reply(kind, score, comment)


def test_table_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("body", "opt_out_type", "kind"),
    [
        ("9", "STOP", OUT),  # Twilio's verdict wins over the body
        ("arrête", "stop", OUT),  # a custom Advanced Opt-Out keyword
        ("STOP", "START", IN),
        ("whatever", "HELP", HELP),
        ("9", "", S),
        ("9", "SOMETHING_NEW", S),  # unknown verdicts are ignored
    ],
)
def test_opt_out_type_takes_precedence(body, opt_out_type, kind):
    assert interpret_reply(body, opt_out_type).kind is kind


def test_every_keyword_any_case():
    for word, kind in KEYWORDS.items():
        for variant in (word, word.lower(), word.title(), f"  {word.lower()}. "):
            assert interpret_reply(variant).kind is kind, variant


FORMATS = [
    "{n}",
    " {n} ",
    "{n}!",
    "{n}.",
    "{n}/10",
    "{n} / 10",
    "{n} out of 10",
    "{n} of 10",
    "{n} 👍",
    "Score: {n}",
    "I'd say {n}",
    "{n} - thanks",
    '"{n}"',
    "({n})",
]


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" else c for c in text)


@given(
    n=st.integers(min_value=0, max_value=10),
    fmt=st.sampled_from(FORMATS),
    wide=st.booleans(),
    upper=st.booleans(),
)
def test_any_score_in_common_formats_parses_back(n, fmt, wide, upper):
    body = fmt.format(n=n)
    if wide:
        body = _fullwidth(body)
    if upper:
        body = body.upper()
    reply = interpret_reply(body)
    assert reply.kind is S
    assert reply.score == n


@given(st.text())
def test_never_raises_and_is_consistent(body):
    reply = interpret_reply(body)
    assert (reply.score is not None) == (reply.kind is S)
    if reply.score is not None:
        assert 0 <= reply.score <= 10
    if reply.comment is not None:
        assert reply.comment.strip() == reply.comment
        assert reply.comment in body
