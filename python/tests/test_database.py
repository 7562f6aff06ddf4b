"""The key-value surface: put/get/delete, scans, transactions."""

from __future__ import annotations

import pytest

from switchboard import (
    Connection,
    Database,
    InvalidInputError,
    PolicyAction,
    PolicyDeniedError,
    PolicyEngine,
)


def test_put_get_delete(db):
    db.put("notes/a", b'{"v":1}')
    db.put("notes/b", "text is stored as UTF-8")
    assert db.get("notes/a") == b'{"v":1}'
    assert db.get("notes/b") == "text is stored as UTF-8".encode()
    db.delete("notes/a")
    assert db.get("notes/a") is None
    with pytest.raises(InvalidInputError):
        db.put("bad key with spaces", b"1")
    with pytest.raises(InvalidInputError):
        db.put("notes/c", b"\xff\xfe")  # not UTF-8
    with pytest.raises(TypeError):
        db.put("notes/c", 42)
    assert Connection is Database


def test_reopen_keeps_data(tmp_path):
    db = Database.open(tmp_path / "d")
    db.put("notes/a", b"1")
    del db
    import gc
    gc.collect()
    assert Database(str(tmp_path / "d")).get("notes/a") == b"1"


def test_scan_in_order_across_batches(db):
    keys = [f"audit/{i:05d}" for i in range(700)]
    for k in reversed(keys):
        db.put(k, k)
    db.put("other/x", b"1")
    scanned = list(db.scan("audit/"))
    assert [k for k, _ in scanned] == keys
    assert all(v == k.encode() for k, v in scanned)
    assert [k for k, _ in db.scan("audit/", after="audit/00697")] == keys[698:]
    with pytest.raises(InvalidInputError):
        list(db.scan("bad prefix"))


def test_transaction_commits_on_clean_exit(db):
    db.put("notes/c", b"old")
    with db.transaction() as tx:
        tx.put("notes/a", b"1")
        tx.put("notes/b", b"2")
        tx.delete("notes/c")
        assert tx.get("notes/a") == b"1" and tx.get("notes/c") is None
        assert len(tx) == 3
        assert db.get("notes/a") is None  # not yet
    assert db.get("notes/a") == b"1" and db.get("notes/b") == b"2" and db.get("notes/c") is None


def test_transaction_discards_on_exception(db):
    with pytest.raises(KeyError):
        with db.transaction() as tx:
            tx.put("notes/a", b"1")
            raise KeyError("oops")
    assert db.get("notes/a") is None
    with pytest.raises(InvalidInputError):
        tx.commit()  # already discarded


def test_a_deny_anywhere_stores_nothing(db):
    PolicyEngine(db).before_write("locked/*", lambda k, v, c: PolicyAction.DENY("locked"))
    tx = db.transaction()
    tx.put("notes/a", b"1")
    tx.put("locked/b", b"2")
    with pytest.raises(PolicyDeniedError, match="locked"):
        tx.commit()
    assert db.get("notes/a") is None
    with pytest.raises(PolicyDeniedError):
        with db.transaction() as tx2:
            tx2.put("notes/a", b"1")
            tx2.put("locked/b", b"2")
    assert db.get("notes/a") is None
