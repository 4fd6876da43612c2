"""Identity resolution: one stable customer id across channels, from pseudonymised identifier tokens.

Every record (a CRM row, a channel's identity record) says "these identifiers belong together". Identifiers are the
nodes of a graph, records link them, and each connected component is one customer (scipy.sparse.csgraph).

Over-merging guards: an identifier that co-occurs with more distinct *anchors* of another kind (CRM ids, emails,
phones, loyalty cards: things one person rarely has many of) than its kind's limit is a shared identifier (a family
tablet, the shop-counter email typed in at the till) and links nobody. Candidates are examined most-connected
first, and anchors already found shared no longer count, so the counter email is blamed rather than the phones of
the customers it touched.

Stable ids: a component with no previous id gets ``"P" + sha256(earliest member)[:16]`` (earliest by first-seen
time, then token), the same on every re-run. Given the previous map, components keep previous ids: a merge keeps
the smallest old id, a split leaves the old id to the part holding most of its members, and ``id_changes`` maps
every retired or split old id to its successors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from omnicart import lake, schemas
from omnicart.schemas import C
from omnicart.settings import Settings

LINK_KINDS: tuple[str, ...] = (
    C.customer_id,
    C.email,
    C.phone,
    C.loyalty_card,
    C.device_id,
    C.web_cookie,
    C.social_handle,
    C.address,
)
ANCHOR_KINDS: tuple[str, ...] = (C.customer_id, C.email, C.phone, C.loyalty_card)
# How many people (distinct anchors of one other kind) an identifier of each kind may link before it counts as shared.
DEFAULT_MAX_PEOPLE: Mapping[str, int] = {
    C.customer_id: 2,  # an account whose email or phone changed
    C.email: 2,
    C.phone: 2,
    C.loyalty_card: 1,
    C.device_id: 1,  # a family tablet links two people: shared
    C.web_cookie: 1,
    C.social_handle: 1,
    C.address: 1,  # a household
}
RECORD = "record"
FIRST_SEEN = "first_seen"
MAP_COLUMNS = (C.id_kind, C.identifier, C.resolved_id, C.shared, FIRST_SEEN)


@dataclass(frozen=True, eq=False)
class Resolution:
    """The identity map (one row per identifier), the identifiers the guards held back, and id changes."""

    identity_map: pd.DataFrame  # id_kind, identifier, resolved_id, shared, first_seen
    shared: pd.DataFrame  # id_kind, identifier, people, limit
    id_changes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["old_id", "new_id"]))

    def lookup(self, kind: str, value: str) -> str | None:
        """The resolved id of one identifier (its own id if it is shared), or None if unknown."""
        m = self.identity_map
        hit = m.loc[(m[C.id_kind] == kind) & (m[C.identifier] == value), C.resolved_id]
        return None if hit.empty else str(hit.iloc[0])

    def members(self, resolved_ids: Sequence[str]) -> pd.DataFrame:
        """Every identifier of the given customers."""
        return self.identity_map[self.identity_map[C.resolved_id].isin(set(resolved_ids))]

    @property
    def n_customers(self) -> int:
        return int(self.identity_map.loc[~self.identity_map[C.shared], C.resolved_id].nunique())


def links_from_tables(
    customers: pd.DataFrame | None = None,
    identities: pd.DataFrame | None = None,
    kinds: Sequence[str] = LINK_KINDS,
) -> pd.DataFrame:
    """Records as rows of (record, id_kind, identifier, first_seen), from the lake's customers and identities.

    CRM rows link their customer id and every identifier column; a channel identity record links the channel's
    identifier (of the kind ``schemas.CHANNEL_IDENTIFIER`` names) with the email and phone it carried. Names are
    never used: too many people share one.
    """
    parts = []
    offset = 0
    if customers is not None and len(customers):
        cols = [k for k in kinds if k in customers.columns]
        frame = customers.reset_index(drop=True)
        for kind in cols:
            parts.append(_part(frame, kind, frame[kind], offset))
        offset += len(frame)
    if identities is not None and len(identities):
        frame = identities.reset_index(drop=True)
        channel_kind = frame[C.channel].map(schemas.CHANNEL_IDENTIFIER)
        for kind in {k for k in channel_kind.dropna().unique() if k in kinds}:
            mask = channel_kind == kind
            parts.append(_part(frame[mask], kind, frame.loc[mask, C.identifier], offset))
        for kind in (C.email, C.phone):
            if kind in frame.columns and kind in kinds:
                parts.append(_part(frame, kind, frame[kind], offset))
    if not parts:
        return pd.DataFrame({RECORD: [], C.id_kind: [], C.identifier: [], FIRST_SEEN: []})
    links = pd.concat(parts, ignore_index=True)
    return links[links[C.identifier].notna()].reset_index(drop=True)


def _part(frame: pd.DataFrame, kind: str, values: pd.Series, offset: int) -> pd.DataFrame:
    ts = frame[C.event_timestamp] if C.event_timestamp in frame.columns else pd.Series(pd.NaT, index=frame.index)
    return pd.DataFrame(
        {
            RECORD: frame.index.to_numpy() + offset,
            C.id_kind: kind,
            C.identifier: values.astype(object).to_numpy(),
            FIRST_SEEN: pd.to_datetime(ts, utc=True).to_numpy(),
        }
    )


def resolve(
    links: pd.DataFrame,
    *,
    previous: pd.DataFrame | None = None,
    guards: bool = True,
    max_people: Mapping[str, int] | None = None,
    anchors: Sequence[str] = ANCHOR_KINDS,
) -> Resolution:
    """Connected components of the identifier graph, with over-merge guards and ids stable against ``previous``.

    ``links``: rows of (record, id_kind, identifier[, first_seen]). ``previous``: an earlier ``identity_map``.
    ``max_people`` overrides ``DEFAULT_MAX_PEOPLE`` per kind; ``guards=False`` is the naive baseline.
    """
    limits = {**DEFAULT_MAX_PEOPLE, **(max_people or {})}
    links = links.dropna(subset=[C.identifier])
    if FIRST_SEEN not in links.columns:
        links = links.assign(**{FIRST_SEEN: pd.NaT})
    key = links[C.id_kind].astype(str) + "|" + links[C.identifier].astype(str)
    node_of, node_keys = pd.factorize(key, sort=True)
    node_kind = np.asarray([k.split("|", 1)[0] for k in node_keys], dtype=object)
    rec = pd.factorize(links[RECORD])[0]
    edges = pd.DataFrame({"rec": rec, "node": node_of}).drop_duplicates()
    first_seen = (
        pd.Series(pd.to_datetime(links[FIRST_SEEN], utc=True).to_numpy(), index=node_of)
        .groupby(level=0)
        .min()
        .reindex(range(len(node_keys)))
    )

    shared_rows: list[tuple[int, int, int]] = []
    if guards:
        shared_rows = _shared_nodes(edges, node_kind, limits, set(anchors))
        if shared_rows:
            edges = edges[~edges["node"].isin({n for n, _, _ in shared_rows})]

    n_nodes, n_recs = len(node_keys), int(rec.max()) + 1 if len(rec) else 0
    graph = coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges["node"].to_numpy(), n_nodes + edges["rec"].to_numpy())),
        shape=(n_nodes + n_recs, n_nodes + n_recs),
    )
    _, labels = connected_components(graph, directed=False)
    component = labels[:n_nodes]

    kinds_values = [k.split("|", 1) for k in node_keys]
    nodes = pd.DataFrame(
        {
            C.id_kind: [kv[0] for kv in kinds_values],
            C.identifier: [kv[1] for kv in kinds_values],
            "component": component,
            FIRST_SEEN: first_seen.to_numpy(),
            "key": np.asarray(node_keys, dtype=object),
        }
    )
    shared_set = {n for n, _, _ in shared_rows}
    nodes[C.shared] = np.isin(np.arange(n_nodes), list(shared_set))
    ids, changes = _assign_ids(nodes, previous)
    nodes[C.resolved_id] = nodes["component"].map(ids)
    identity_map = nodes[list(MAP_COLUMNS)].sort_values([C.resolved_id, C.id_kind, C.identifier], ignore_index=True)
    shared = pd.DataFrame(
        {
            C.id_kind: [node_kind[n] for n, _, _ in shared_rows],
            C.identifier: [node_keys[n].split("|", 1)[1] for n, _, _ in shared_rows],
            "people": [p for _, p, _ in shared_rows],
            "limit": [lim for _, _, lim in shared_rows],
        }
    )
    return Resolution(identity_map, shared, changes)


def _shared_nodes(
    edges: pd.DataFrame, node_kind: np.ndarray, limits: Mapping[str, int], anchors: set[str]
) -> list[tuple[int, int, int]]:
    """(node, people, limit) of every identifier that links more people than its kind allows, most-linked first."""
    kind = pd.Series(node_kind)
    anchor_edges = edges[kind.iloc[edges["node"]].isin(anchors).to_numpy()]
    pairs = edges.merge(anchor_edges, on="rec", suffixes=("", "_b"))
    pairs = pairs[kind.iloc[pairs["node"]].to_numpy() != kind.iloc[pairs["node_b"]].to_numpy()]
    pairs = pairs[["node", "node_b"]].drop_duplicates()
    if pairs.empty:
        return []
    pairs["kind_b"] = node_kind[pairs["node_b"].to_numpy()]
    people = pairs.groupby(["node", "kind_b"]).size().groupby(level=0).max()
    limit = pd.Series([limits.get(k, 1) for k in node_kind[people.index]], index=people.index)
    candidates = people[people > limit]
    if candidates.empty:
        return []
    order = sorted(candidates.index, key=lambda n: (-int(candidates[n]), int(n)))
    around = pairs[pairs["node"].isin(set(order))].groupby("node")
    flagged: dict[int, tuple[int, int]] = {}
    for n in order:
        neighbours = around.get_group(n)
        neighbours = neighbours[~neighbours["node_b"].isin(flagged)]
        count = int(neighbours.groupby("kind_b").size().max()) if len(neighbours) else 0
        if count > limit[n]:
            flagged[int(n)] = (count, int(limit[n]))
    return [(n, p, lim) for n, (p, lim) in flagged.items()]


def _new_id(seed: str, taken: set[str]) -> str:
    candidate, salt = "P" + hashlib.sha256(seed.encode()).hexdigest()[:16], 0
    while candidate in taken:
        salt += 1
        candidate = "P" + hashlib.sha256(f"{seed}#{salt}".encode()).hexdigest()[:16]
    return candidate


def _assign_ids(nodes: pd.DataFrame, previous: pd.DataFrame | None) -> tuple[dict[int, str], pd.DataFrame]:
    """Component -> resolved id, and old_id -> new_id for every previous id that was retired or split."""
    order = nodes.assign(_t=pd.to_datetime(nodes[FIRST_SEEN], utc=True))
    earliest = (
        order.sort_values(["_t", "key"], na_position="last").drop_duplicates("component").set_index("component")["key"]
    )
    ids: dict[int, str] = {}
    taken: set[str] = set()
    old = pd.Series(dtype=object)
    if previous is not None and len(previous):
        prev = previous[~previous[C.shared]] if C.shared in previous.columns else previous
        prev_key = prev[C.id_kind].astype(str) + "|" + prev[C.identifier].astype(str)
        old = pd.Series(prev[C.resolved_id].to_numpy(), index=prev_key.to_numpy())
        old = old[~old.index.duplicated()]
        claims = (
            pd.DataFrame({"component": nodes["component"], "old": nodes["key"].map(old)})
            .dropna()
            .groupby(["old", "component"])
            .size()
            .rename("n")
            .reset_index()
        )
        claims["first"] = claims["component"].map(earliest)
        # Smallest old id first (so a merge keeps it); for a split, the part with most of its members keeps it.
        for row in claims.sort_values(["old", "n", "first"], ascending=[True, False, True]).itertuples():
            if row.component not in ids and row.old not in taken:
                ids[row.component] = row.old
                taken.add(row.old)
        taken |= set(old.to_numpy())  # never hand out an old id afresh
    for comp, first in earliest.sort_values().items():
        if comp not in ids:
            ids[comp] = _new_id(first, taken)
            taken.add(ids[comp])
    changes = pd.DataFrame(columns=["old_id", "new_id"])
    if len(old):
        now = nodes["component"].map(ids)
        moved = pd.DataFrame({"old_id": nodes["key"].map(old), "new_id": now}).dropna().drop_duplicates()
        changes = moved[moved["old_id"] != moved["new_id"]].sort_values(["old_id", "new_id"], ignore_index=True)
    return ids, changes


def attach_resolved_ids(frame: pd.DataFrame, identity_map: pd.DataFrame) -> pd.Series:
    """The resolved id of each row of a lake table: by its customer id, else by its channel identifier token."""
    unshared = identity_map[~identity_map[C.shared]]
    by_kind = {k: g.set_index(C.identifier)[C.resolved_id] for k, g in unshared.groupby(C.id_kind)}
    out = pd.Series(None, index=frame.index, dtype=object)
    if C.customer_id in frame.columns and C.customer_id in by_kind:
        out = frame[C.customer_id].map(by_kind[C.customer_id])
    if C.identifier in frame.columns and C.channel in frame.columns:
        kinds = frame[C.channel].map(schemas.CHANNEL_IDENTIFIER)
        for kind, lookup in by_kind.items():
            mask = out.isna() & (kinds == kind)
            out[mask] = frame.loc[mask, C.identifier].map(lookup)
    return out


def resolve_day(settings: Settings, day: dt.date, **options) -> Resolution:
    """Resolve identities over the lake's customers and identity records up to ``day``; write that day's map.

    The previous map is the latest partition before ``day``, so re-running a day gives the same ids and a new day
    keeps yesterday's ids. Idempotent for its logical date.
    """
    customers = lake.read_table(settings.lake_dir, schemas.CUSTOMERS, end=day)
    identities = lake.read_table(settings.lake_dir, schemas.IDENTITIES, end=day)
    earlier = [d for d in lake.partitions(settings.lake_dir, schemas.IDENTITY_MAP) if d < day]
    previous = lake.read_table(settings.lake_dir, schemas.IDENTITY_MAP, earlier[-1], earlier[-1]) if earlier else None
    result = resolve(links_from_tables(customers, identities), previous=previous, **options)
    lake.write_partition(settings.lake_dir, schemas.IDENTITY_MAP, day, result.identity_map)
    return result


def latest_identity_map(settings: Settings) -> pd.DataFrame | None:
    """The most recent identity map in the lake, or None."""
    days = lake.partitions(settings.lake_dir, schemas.IDENTITY_MAP)
    return lake.read_table(settings.lake_dir, schemas.IDENTITY_MAP, days[-1], days[-1]) if days else None
