"""Identity resolution: pairwise quality on a small simulated shop, the over-merge guards, and stable ids."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.identity import _score, _truth_nodes, pairwise, simulate
from omnicart.ingest.identity import RECORD, links_from_tables, resolve
from omnicart.ingest.pipeline import pseudonymise_frame
from omnicart.schemas import C
from omnicart.settings import Settings

KEY = "test-key"


def links(*records: dict[str, str], start: int = 0) -> pd.DataFrame:
    rows = [
        {RECORD: start + i, C.id_kind: kind, C.identifier: value}
        for i, record in enumerate(records)
        for kind, value in record.items()
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def shop():
    settings = Settings(home="/nonexistent", seed=3, sim_customers=400, sim_days=10, pseudonym_key=KEY)
    customers, identities, truth, hard = simulate(settings)
    tok_c, tok_i = pseudonymise_frame(customers, KEY), pseudonymise_frame(identities, KEY)
    return tok_c, tok_i, truth, hard


def test_pairwise_counts_from_the_contingency_table():
    truth = pd.Series(["a", "a", "a", "b", "b", "c"])
    pred = pd.Series([1, 1, 2, 2, 2, 3])
    scores = pairwise(truth, pred)
    # true pairs: 3 (a) + 1 (b) = 4; predicted pairs: 1 + 3 = 4; both: (a1,a2) and (b1,b2) = 2
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)


def test_precision_and_recall_on_the_simulator(shop):
    customers, identities, truth, _ = shop
    result = resolve(links_from_tables(customers, identities))
    scores = _score(_truth_nodes(truth, KEY), result.identity_map)
    assert scores["precision"] >= 0.99 and scores["recall"] >= 0.95
    naive = _score(
        _truth_nodes(truth, KEY), resolve(links_from_tables(customers, identities), guards=False).identity_map
    )
    assert naive["precision"] < scores["precision"]  # the counter email and family tablets merge strangers


def test_guards_hold_back_the_counter_email_and_family_tablets(shop):
    customers, identities, _, hard = shop
    result = resolve(links_from_tables(customers, identities))
    shared = set(zip(result.shared[C.id_kind], result.shared[C.identifier], strict=True))
    tok = pseudonymise_frame(pd.DataFrame({C.email: hard["counter_emails"]}), KEY)[C.email].iloc[0]
    assert (C.email, tok) in shared
    devices = pseudonymise_frame(pd.DataFrame({C.device_id: hard["shared_device_ids"]}), KEY)[C.device_id]
    assert {(C.device_id, d) for d in devices} <= shared
    # The phones of the customers the counter email touched are not blamed for it.
    assert not (result.shared[C.id_kind] == C.phone).any()


def test_a_shared_device_does_not_merge_two_people():
    result = resolve(
        links(
            {C.customer_id: "C1", C.email: "e1", C.device_id: "tablet"},
            {C.customer_id: "C2", C.email: "e2", C.device_id: "tablet"},
        )
    )
    assert result.lookup(C.email, "e1") != result.lookup(C.email, "e2")
    assert result.shared[C.identifier].tolist() == ["tablet"]
    # Raise the limit (a shop that trusts its devices) and the two become one.
    trusting = resolve(
        links(
            {C.customer_id: "C1", C.email: "e1", C.device_id: "tablet"},
            {C.customer_id: "C2", C.email: "e2", C.device_id: "tablet"},
        ),
        max_people={C.device_id: 2, C.customer_id: 2},
    )
    assert trusting.lookup(C.email, "e1") == trusting.lookup(C.email, "e2")


def test_ids_are_stable_across_reruns_and_input_order(shop):
    customers, identities, _, _ = shop
    data = links_from_tables(customers, identities)
    first = resolve(data).identity_map
    again = resolve(data.sample(frac=1.0, random_state=1).reset_index(drop=True)).identity_map
    pd.testing.assert_frame_equal(first, again)


def test_ids_survive_new_links_and_merges_keep_the_smallest_old_id():
    day1 = links({C.email: "a", C.web_cookie: "ck1"}, {C.email: "b", C.phone: "p"})
    before = resolve(day1)
    id_a, id_b = before.lookup(C.email, "a"), before.lookup(C.email, "b")
    # Day 2: a new cookie for a (churn), and a record proving a and b are one person.
    day2 = pd.concat([day1, links({C.email: "a", C.web_cookie: "ck2"}, {C.email: "a", C.phone: "p"}, start=10)])
    after = resolve(day2, previous=before.identity_map)
    merged = after.lookup(C.email, "a")
    assert merged == min(id_a, id_b) == after.lookup(C.email, "b") == after.lookup(C.web_cookie, "ck2")
    retired = max(id_a, id_b)
    assert after.id_changes.set_index("old_id")["new_id"].to_dict() == {retired: merged}


def test_a_split_leaves_the_old_id_with_the_larger_part():
    day1 = links({C.email: "a", C.web_cookie: "c1", C.device_id: "d"}, {C.email: "b", C.device_id: "d"})
    before = resolve(day1, guards=False)  # one cluster of five identifiers
    old = before.lookup(C.email, "a")
    assert old == before.lookup(C.email, "b")
    after = resolve(day1, previous=before.identity_map)  # guards now hold the device back
    assert after.lookup(C.email, "a") == old and after.lookup(C.email, "b") != old
    assert set(after.id_changes["old_id"]) == {old}
