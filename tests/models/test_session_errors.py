"""Database errors from our engines quote no row values: not the bound parameters, and not
PostgreSQL's DETAIL line, which repeats the failing row."""

from __future__ import annotations

import logging
import traceback

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.conftest import Database

NAME, EMAIL, PHONE = "Zephyrine", "zephyrine.q@example.org", "+40721999888"


def test_a_constraint_error_names_the_constraint_but_quotes_no_value(db: Database, caplog):
    with db.engine.connect() as conn:
        conn.execute(
            text(
                "CREATE TEMPORARY TABLE people (id INTEGER PRIMARY KEY, name TEXT, "
                "email TEXT CONSTRAINT email_at_shop CHECK (email LIKE '%@shop.example'), "
                "phone TEXT)"
            )
        )
        with pytest.raises(IntegrityError) as raised:
            conn.execute(
                text("INSERT INTO people VALUES (:id, :name, :email, :phone)"),
                {"id": 1, "name": NAME, "email": EMAIL, "phone": PHONE},
            )
        conn.rollback()
    exc = raised.value
    with caplog.at_level(logging.ERROR):
        logging.getLogger("tests.models.session").error("insert failed", exc_info=exc)
    rendered = [
        str(exc),
        "".join(traceback.format_exception(exc)),  # the driver's own error is chained
        caplog.text,
    ]
    for text_ in rendered:
        for value in (NAME, EMAIL, PHONE):
            assert value not in text_
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(exc)
    assert "INSERT INTO people" in str(exc)  # the statement stays: it holds no values
    if db.dialect == "postgresql":
        assert 'violates check constraint "email_at_shop"' in str(exc)
        assert "DETAIL:  (hidden: it may quote row values)" in str(exc)
        # Still there for code that must read it, never rendered.
        assert NAME in exc.orig.diag.message_detail
    else:
        assert "CHECK constraint failed" in str(exc)
