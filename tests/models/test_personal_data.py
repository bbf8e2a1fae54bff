"""Every text column is classified once; the keyed pseudonyms and where their key comes from."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import JSON, Column, MetaData, String, Table, Text

from channels.links import AnswerLinks
from config import ConfigHolder
from config.settings import Settings
from models import Base, privacy
from models.personal_data import NOT_PERSONAL, PERSONAL, PSEUDONYMS, classified
from models.privacy import Pseudonymiser, PseudonymiserMissing, legacy_tombstone
from tests.conftest import TEST_SECRET_KEY
from wiring.runtime import Runtime, set_runtime
from wiring.services import answer_links


def text_columns(metadata: MetaData) -> set[tuple[str, str]]:
    return {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, String | Text | JSON)
    }


def unclassified(metadata: MetaData) -> set[tuple[str, str]]:
    return text_columns(metadata) - set(classified())


def test_every_text_column_is_classified_exactly_once():
    assert unclassified(Base.metadata) == set()
    twice = {key: lists for key, lists in classified().items() if "+" in lists}
    assert twice == {}
    # And nothing is classified that is not in the schema (a renamed or dropped column).
    assert set(classified()) - text_columns(Base.metadata) == set()


def test_every_classification_says_why():
    for columns in (PERSONAL, PSEUDONYMS, NOT_PERSONAL):
        for table, reasons in columns.items():
            for column, why in reasons.items():
                assert len(why.split()) >= 2, f"{table}.{column}: say why"


def test_a_column_added_without_classification_is_caught():
    metadata = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    Table("customers", metadata, Column("nickname", String(40)), extend_existing=True)
    assert unclassified(metadata) == {("customers", "nickname")}


# --- pseudonyms ----------------------------------------------------------------------------


def test_pseudonyms_are_keyed_and_not_the_secret_used_raw():
    one, other = Pseudonymiser("secret-one"), Pseudonymiser("secret-two")
    assert one.subject("c-42") == Pseudonymiser("secret-one").subject("c-42")
    assert one.subject("c-42") != other.subject("c-42")
    assert one.subject("c-42") != one.subject("c-43")
    digest = hashlib.sha256(b"c-42").hexdigest()
    assert one.subject("c-42") != digest
    # The secret signs answer links too: pseudonyms use a key derived from it, not the secret.
    for message in (b"subject:c-42", b"subject:" + digest.encode()):
        assert one.subject("c-42") != hmac.new(b"secret-one", message, hashlib.sha256).hexdigest()
    with pytest.raises(ValueError):
        Pseudonymiser("")


def test_an_unkeyed_tombstone_rekeys_to_the_same_pseudonym_without_the_id():
    pseudo = Pseudonymiser("secret-one")
    legacy = legacy_tombstone("c-42")
    assert legacy == "sha256:" + hashlib.sha256(b"c-42").hexdigest()
    assert pseudo.rekey(legacy) == pseudo.subject("c-42")


def test_no_pseudonymiser_installed_fails_closed():
    privacy.install(None)  # the autouse fixture puts the tests' one back
    with pytest.raises(PseudonymiserMissing):
        privacy.pseudonymiser()


# --- where the key comes from ----------------------------------------------------------------


def runtime(tmp_path: Path, **env: str) -> Runtime:
    settings = Settings.from_env({"NPS_CONFIG": str(tmp_path / "absent.toml"), **env})
    return Runtime(
        settings=settings,
        engine=None,  # not used: no database is touched
        factory=None,
        config_holder=ConfigHolder(Path(settings.config_path)),
    )


def test_the_runtime_installs_a_pseudonymiser_keyed_by_nps_secret_key(tmp_path: Path):
    made = runtime(tmp_path, NPS_SECRET_KEY="prod-secret")
    try:
        set_runtime(made)
        assert privacy.pseudonymiser() is made.pseudonymiser
        assert made.pseudonymiser.subject("c-1") == Pseudonymiser("prod-secret").subject("c-1")
    finally:
        set_runtime(None)
    # Removing the runtime leaves its pseudonymiser: nothing is ever written unkeyed.
    assert privacy.pseudonymiser().subject("c-1") == Pseudonymiser("prod-secret").subject("c-1")


def test_tests_use_the_same_key_as_their_runtimes(runtime_for, sqlite_db, pseudonymiser):
    assert pseudonymiser.subject("c-1") == Pseudonymiser(TEST_SECRET_KEY).subject("c-1")
    made = runtime_for(sqlite_db)
    assert made.pseudonymiser.subject("c-1") == pseudonymiser.subject("c-1")


def test_demo_without_a_secret_gets_a_key_of_its_own_per_process(tmp_path: Path):
    first, second = runtime(tmp_path), runtime(tmp_path)
    assert first.secret_key == first.secret_key and first.secret_key != second.secret_key
    assert first.pseudonymiser.subject("c-1") != second.pseudonymiser.subject("c-1")
    # One per-process key serves the answer links as well, as NPS_SECRET_KEY would.
    links = answer_links(first)
    token = links.token_for(7, datetime(2099, 1, 1, tzinfo=UTC))
    assert (
        AnswerLinks(first.secret_key, "http://x").verify(token, datetime(2026, 1, 1, tzinfo=UTC))
        == 7
    )
