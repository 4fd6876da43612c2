"""Identity resolution, protocol "pairwise" (PROTOCOLS.md), on the shop simulator's ground truth.

The unit is a channel identifier (channel, value). A pair of identifiers is "the same customer" in the truth when
one customer owns both; the resolver says so when it gives both one resolved id. Precision and recall over all
pairs come from the contingency table of (true customer, resolved id): TP = Σ C(n_ij, 2), predicted pairs =
Σ C(a_i, 2), true pairs = Σ C(b_j, 2) — linear in the number of identifiers. Identifiers the truth gives to more than
one customer (a shared family device) have no single right answer and are left out of the pairs; the guards are
scored on them separately ("shared flagged").

Side by side, on the same data: the guarded resolver, naive connected components (no guards), and exact-email
linking (records joined only on byte-identical raw email strings, no normalisation, no other identifier).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.runner import BenchOptions, BenchResult, gate
from omnicart import schemas
from omnicart.datasets.simulator import ShopSimulator
from omnicart.ingest.identity import RECORD, links_from_tables, resolve
from omnicart.ingest.pipeline import pseudonymise_frame
from omnicart.schemas import C
from omnicart.settings import Settings

SIM_CUSTOMERS = 2000
SIM_DAYS = 30


def pairwise(truth: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a clustering, from its contingency table with the truth."""
    frame = pd.DataFrame({"t": truth.to_numpy(), "p": predicted.to_numpy()})

    def pairs(sizes: pd.Series) -> int:
        n = sizes.to_numpy(dtype=np.int64)
        return int((n * (n - 1) // 2).sum())

    tp = pairs(frame.groupby(["t", "p"]).size())
    predicted_pairs, true_pairs = pairs(frame.groupby("p").size()), pairs(frame.groupby("t").size())
    precision = tp / predicted_pairs if predicted_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": true_pairs, "tp": tp}


def simulate(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Raw customers and identity records of every simulated day (``_day``: its index), the truth, hard cases."""
    sim = ShopSimulator(settings)
    customers, identities = [], []
    for t, day in enumerate(sim.days()):
        customers.append(day.customers.assign(_day=t))
        identities.append(day.identities.assign(_day=t))
    truth = sim.ground_truth()
    return (
        pd.concat(customers, ignore_index=True),
        pd.concat(identities, ignore_index=True),
        truth.identities,
        truth.hard_cases,
    )


def _exact_email_links(customers: pd.DataFrame, identities: pd.DataFrame) -> pd.DataFrame:
    """Each record links its identifiers only through its raw email string, compared byte for byte."""
    links = links_from_tables(customers, identities)
    links = links[links[C.id_kind] != C.phone]
    raw = pd.concat(
        [customers[C.email].rename("raw"), identities[C.email].rename("raw")], ignore_index=True
    ).reset_index(drop=True)
    linked_by_email = links[C.id_kind] == C.email
    # Replace every email node by the exact string its record carried, and drop every other kind of link.
    records_email = raw.reindex(links[RECORD]).to_numpy()
    links = links.assign(**{C.identifier: np.where(linked_by_email, records_email, links[C.identifier])})
    # Only the email joins records: other identifiers stay record-local unless they recur with the same email.
    links.loc[linked_by_email, C.id_kind] = "email_exact"
    keep = linked_by_email | links[C.id_kind].isin([C.web_cookie, C.device_id, C.loyalty_card, C.social_handle])
    links = links[keep]
    # A non-email identifier's node is made private to its record, so it cannot join two records by itself.
    private = links[C.id_kind] != "email_exact"
    ident = links[C.identifier].astype(str)
    links.loc[private, C.identifier] = ident[private] + "@" + links.loc[private, RECORD].astype(str)
    return links


def _truth_nodes(truth: pd.DataFrame, key: str | None) -> pd.DataFrame:
    kinds = truth[C.channel].map(schemas.CHANNEL_IDENTIFIER)
    values = truth[[C.channel, C.identifier]]
    if key is not None:
        values = pseudonymise_frame(values, key)
    return pd.DataFrame(
        {C.id_kind: kinds, C.identifier: values[C.identifier].to_numpy(), "true": truth[C.customer_id].to_numpy()}
    )


def _score(truth_nodes: pd.DataFrame, identity_map: pd.DataFrame) -> dict[str, float]:
    unique = truth_nodes.drop_duplicates([C.id_kind, C.identifier], keep=False)
    pred = unique.merge(identity_map[[C.id_kind, C.identifier, C.resolved_id]], how="left")
    # An identifier the resolver never saw is its own cluster.
    pred[C.resolved_id] = pred[C.resolved_id].fillna("unseen:" + pred[C.id_kind] + ":" + pred[C.identifier])
    return pairwise(pred["true"], pred[C.resolved_id])


def _exact_map(links: pd.DataFrame) -> pd.DataFrame:
    """Map the exact-email baseline's record-private nodes back to their identifiers."""
    result = resolve(links, guards=False).identity_map.copy()
    private = result[C.id_kind] != "email_exact"
    result.loc[private, C.identifier] = result.loc[private, C.identifier].str.rsplit("@", n=1).str[0]
    result.loc[~private, C.id_kind] = C.email
    return result.drop_duplicates([C.id_kind, C.identifier])


def run(settings: Settings, options: BenchOptions) -> BenchResult:
    """Pairwise precision/recall of the resolver and its baselines, plus id stability across re-runs."""
    dataset, input, seed = options.dataset, options.input, options.seed
    if dataset or input:
        from benchmarks.runner import NotAvailable

        raise NotAvailable("identity is scored on the simulator's ground truth only: use --seed, not --dataset/--input")
    with tempfile.TemporaryDirectory() as home:
        sim_settings = Settings(
            home=Path(home), seed=seed, sim_customers=SIM_CUSTOMERS, sim_days=SIM_DAYS, pseudonym_key="bench-key"
        )
        key = sim_settings.secret("pseudonym_key")
        customers, identities, truth, _ = simulate(sim_settings)
    tok_customers = pseudonymise_frame(customers, key)
    tok_identities = pseudonymise_frame(identities, key)
    links = links_from_tables(tok_customers, tok_identities)
    truth_tok = _truth_nodes(truth, key)

    guarded = resolve(links)
    naive = resolve(links, guards=False)
    exact = _exact_map(_exact_email_links(customers, identities))

    # Stability: a re-run on shuffled input, and a run with yesterday's map after half the days.
    rerun = resolve(links.sample(frac=1.0, random_state=seed).reset_index(drop=True))
    same = guarded.identity_map.merge(rerun.identity_map, on=[C.id_kind, C.identifier], suffixes=("", "_re"))
    rerun_stable = float((same[C.resolved_id] == same[f"{C.resolved_id}_re"]).mean())
    half = SIM_DAYS // 2
    early = resolve(
        links_from_tables(tok_customers[tok_customers["_day"] < half], tok_identities[tok_identities["_day"] < half])
    )
    later = resolve(links, previous=early.identity_map)
    both = early.identity_map.merge(later.identity_map, on=[C.id_kind, C.identifier], suffixes=("", "_new"))
    kept_same = float((both[C.resolved_id] == both[f"{C.resolved_id}_new"]).mean())
    successor = dict(zip(later.id_changes["old_id"], later.id_changes["new_id"], strict=False))
    followed = both[C.resolved_id].map(lambda i: successor.get(i, i)) == both[f"{C.resolved_id}_new"]
    incremental_stable = float(followed.mean())
    stable = min(rerun_stable, incremental_stable)

    shared_truth = _truth_nodes(truth, key)
    shared_truth = shared_truth[shared_truth.duplicated([C.id_kind, C.identifier], keep=False)]
    shared_truth = shared_truth.drop_duplicates([C.id_kind, C.identifier])
    flagged = set(zip(guarded.shared[C.id_kind], guarded.shared[C.identifier], strict=True))
    shared_found = (
        float(
            np.mean(
                [(k, v) in flagged for k, v in zip(shared_truth[C.id_kind], shared_truth[C.identifier], strict=True)]
            )
        )
        if len(shared_truth)
        else 1.0
    )

    rows = []
    for name, result_map, extra in (
        ("omnicart", guarded.identity_map, {"shared_flagged": shared_found, "ids_stable": stable}),
        ("naive_components", naive.identity_map, {}),
        ("exact_email", exact, {}),
    ):
        scores = _score(truth_tok if name != "exact_email" else _truth_nodes(truth, None), result_map)
        linked = result_map[~result_map[C.shared]] if C.shared in result_map.columns else result_map
        sizes = linked.groupby(C.resolved_id).size()
        rows.append(
            {
                "model": name,
                "pairwise_precision": scores["precision"],
                "pairwise_recall": scores["recall"],
                "pairwise_f1": scores["f1"],
                "customers_found": int(len(sizes)),
                "largest_cluster": int(sizes.max()) if len(sizes) else 0,
                **extra,
            }
        )
    model = rows[0]
    gates = [
        # Absolute targets: the baseline column is the ideal (1.0), so the ratio is the value itself.
        gate("pairwise_precision", model["pairwise_precision"], 1.0, 0.99),
        gate("pairwise_recall", model["pairwise_recall"], 1.0, 0.95),
        gate("ids_stable", stable, 1.0, 1.0),
    ]
    meta = {
        "model": "truth",
        "customers_found": int(truth[C.customer_id].nunique()),
        "pairwise_precision": 1.0,
        "pairwise_recall": 1.0,
        "pairwise_f1": 1.0,
        "largest_cluster": int(truth.groupby(C.customer_id).size().max()),
        "true_pairs": int(_score(truth_tok, guarded.identity_map)["true_pairs"]),
    }
    rows[0]["ids_unchanged_incremental"] = kept_same
    rows.append(meta)
    return f"simulator(seed={seed}, customers={SIM_CUSTOMERS}, days={SIM_DAYS})", "pairwise", rows, gates
