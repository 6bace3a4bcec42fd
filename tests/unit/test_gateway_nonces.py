"""Member chunks to the client that asked (cluster/endpoint/nonces.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cluster.endpoint.nonces import NonceBook, is_last_chunk, restore_nonce
from protocol.payloads import MAX_NONCE_BYTES


def test_each_answer_goes_to_its_owner_with_its_own_nonce() -> None:
    book: NonceBook[str] = NonceBook(prefix="abc")
    a = book.issue("client-a", "same", 0.0)
    b = book.issue("client-b", "same", 0.0)  # two clients, one nonce: no clash
    c = book.issue("client-c", None, 0.0)
    assert len({a, b, c}) == 3 and all(len(n.encode()) <= MAX_NONCE_BYTES for n in (a, b, c))
    assert book.claim(b, 1.0, last=False) == ("client-b", "same")
    assert book.claim(b, 1.0, last=True) == ("client-b", "same")
    assert book.claim(b, 1.0) is None  # the request ended with its last chunk
    assert book.claim(c, 1.0) == ("client-c", None)
    assert book.claim("someone-elses", 1.0) is None and book.claim(None, 1.0) is None
    assert book.routed == 3 and book.unknown == 3


def test_entries_expire_and_go_with_their_owner() -> None:
    book: NonceBook[str] = NonceBook(ttl_s=10.0)
    old = book.issue("a", None, 0.0)
    kept = book.issue("b", None, 0.0)
    gone = book.issue("c", None, 0.0)
    assert book.claim(old, 11.0) is None
    book.forget("c")
    assert book.claim(gone, 1.0) is None
    assert book.claim(kept, 5.0) == ("b", None)
    bounded: NonceBook[int] = NonceBook(max_entries=3)
    nonces = [bounded.issue(i, None, 0.0) for i in range(5)]
    assert len(bounded) == 3 and bounded.claim(nonces[0], 0.0) is None


def test_restore_puts_back_or_removes_the_nonce() -> None:
    d = {"guild_id": "1", "nonce": "tcabc.1", "chunk_index": 0, "chunk_count": 1}
    assert restore_nonce(d, "mine")["nonce"] == "mine"
    assert "nonce" not in restore_nonce(d, None)
    assert d["nonce"] == "tcabc.1"  # not changed in place
    assert is_last_chunk(d) and not is_last_chunk({"chunk_index": 0, "chunk_count": 2})


@given(
    requests=st.lists(
        st.tuples(st.integers(0, 5), st.none() | st.text(max_size=8), st.integers(1, 4)),
        max_size=30,
    ),
    rng=st.randoms(use_true_random=False),
)
def test_interleaved_answers_reach_only_their_askers(
    requests: list[tuple[int, str | None, int]], rng: random.Random
) -> None:
    book: NonceBook[int] = NonceBook()
    pending = [
        [book.issue(owner, client_nonce, 0.0), 0, count, owner, client_nonce]
        for owner, client_nonce, count in requests
    ]
    answered = 0
    while pending:
        # one request's chunks come in order; different requests interleave freely
        request = rng.choice(pending)
        nonce, index, count, owner, client_nonce = request
        assert book.claim(nonce, 1.0, last=index == count - 1) == (owner, client_nonce)
        answered += 1
        request[1] = index + 1
        if index + 1 == count:
            pending.remove(request)
    assert answered == sum(count for _, _, count in requests)
    assert len(book) == 0
