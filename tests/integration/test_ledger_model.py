"""Random sequences of ledger operations, compared with a plain Python model of balances.

The model implements only the documented rules:

- grants pay debt first;
- a team pool pays down to its floor and borrows the rest from its tenant pool;
- auto-refill;
- the reserve is the floor of ordinary charges, the overdraft that of critical ones;
- a deferred charge is never refused, and the pool owes what the pools cannot pay;
- refunds return what was taken, and a refund of an unknown id cancels a later charge
  with that id;
- transfers need the balance.

It imports nothing from the ledger. Every balance is compared after every example.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.ledger import ChargeRequest, InsufficientTickets, Ledger, connect_redis
from gatekeeper.ledger.verify import verify_tenant

TEAMS = ("a", "b")
TENANT_IDS = itertools.count()


@dataclass
class Pool:
    balance: int = 0
    reserve: int = 0
    overdraft: int = 0
    borrow: bool = False
    refill: tuple[int, int] | None = None


@dataclass
class Model:
    pools: dict[str, Pool] = field(default_factory=dict)
    charges: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # Ids with a charge record, refunded or not, and ids that a refund found unknown.
    recorded: set[str] = field(default_factory=set)
    tombstones: set[str] = field(default_factory=set)

    def floor(self, name: str, critical: bool) -> int:
        pool = self.pools[name]
        return -pool.overdraft if critical else pool.reserve

    def grant(self, name: str, tickets: int) -> None:
        self.pools.setdefault(name, Pool()).balance += tickets

    def charge(self, candidates: list[str], cost: int, critical: bool, charge_id: str,
               deferred: bool = False) -> bool:
        found = [c for c in candidates if c in self.pools]
        if not found or charge_id in self.tombstones:
            return False
        name = found[0]
        pool = self.pools[name]
        own = max(0, min(cost, pool.balance - self.floor(name, critical)))
        borrowed = 0
        parent = name.split("/")[0] if "/" in name else None
        has_parent = parent is not None and parent in self.pools
        can_borrow = own < cost and has_parent and pool.borrow and parent is not None
        if can_borrow and parent is not None:
            parent_room = max(0, self.pools[parent].balance - self.floor(parent, critical))
            if parent_room >= cost - own:
                borrowed = cost - own
            elif deferred:
                borrowed = parent_room
        owed = cost - own - borrowed if deferred else 0
        if own + borrowed + owed < cost:
            return False
        pool.balance -= own + owed
        if parent is not None and borrowed:
            self.pools[parent].balance -= borrowed
        self.charges[charge_id] = (name, own + owed, borrowed)
        self.recorded.add(charge_id)
        if pool.refill and has_parent and parent is not None and pool.balance < pool.refill[0]:
            source = self.pools[parent]
            moved = max(0, min(pool.refill[1], source.balance - source.reserve))
            source.balance -= moved
            pool.balance += moved
        return True

    def refund(self, charge_id: str) -> None:
        found = self.charges.pop(charge_id, None)
        if found is None:
            if charge_id not in self.recorded:
                self.tombstones.add(charge_id)
            return
        name, own, borrowed = found
        self.pools[name].balance += own
        if borrowed:
            self.pools[name.split("/")[0]].balance += borrowed

    def transfer(self, source: str, target: str, tickets: int) -> bool:
        if source not in self.pools or self.pools[source].balance < tickets:
            return False
        self.pools[source].balance -= tickets
        self.pools.setdefault(target, Pool()).balance += tickets
        return True


pools = st.sampled_from(["", "a", "b"])
operations = st.one_of(
    st.tuples(st.just("grant"), pools, st.integers(1, 50)),
    st.tuples(st.just("charge"), pools, st.integers(0, 30), st.booleans()),
    st.tuples(st.just("deferred"), pools, st.integers(0, 30), st.booleans()),
    st.tuples(st.just("refund"), st.integers(0, 20)),
    st.tuples(st.just("transfer"), pools, pools, st.integers(1, 40)),
    st.tuples(st.just("settings"), pools, st.integers(0, 10), st.integers(0, 10),
              st.booleans(), st.one_of(st.none(), st.tuples(st.integers(0, 20),
                                                            st.integers(1, 20)))),
)


def pool_name(tenant: str, team: str) -> str:
    return f"{tenant}/{team}" if team else tenant


async def apply(ledger: Ledger, model: Model, tenant: str, step: int, op: tuple) -> None:
    kind = op[0]
    if kind == "grant":
        name = pool_name(tenant, op[1])
        await ledger.grant(name, op[2], expires_at=None, note=None, actor="model",
                           idempotency_key=f"g{step}")
        model.grant(name, op[2])
    elif kind in ("charge", "deferred"):
        deferred = kind == "deferred"
        candidates = [pool_name(tenant, op[1]), tenant] if op[1] else [tenant]
        result = await ledger.charge(ChargeRequest(tenant, tuple(candidates), op[2], "r",
                                                   f"c{step}", critical=op[3],
                                                   deferred=deferred))
        assert result.allowed == model.charge(candidates, op[2], op[3], f"c{step}", deferred)
    elif kind == "refund":
        await ledger.refund(tenant, f"c{op[1]}")
        model.refund(f"c{op[1]}")
    elif kind == "transfer":
        source, target = pool_name(tenant, op[1]), pool_name(tenant, op[2])
        if source == target:
            return
        expected = model.transfer(source, target, op[3])
        try:
            await ledger.transfer(source, target, op[3], actor="model",
                                  idempotency_key=f"t{step}")
            moved = True
        except (InsufficientTickets, LookupError):
            moved = False
        assert moved == expected
    else:
        await configure(ledger, model, tenant, op)


async def configure(ledger: Ledger, model: Model, tenant: str, op: tuple) -> None:
    _, team, reserve, overdraft, borrow, refill = op
    name = pool_name(tenant, team)
    settings = {"reserve": str(reserve), "overdraft": str(overdraft)}
    pool = model.pools.setdefault(name, Pool())
    pool.reserve, pool.overdraft = reserve, overdraft
    if team:
        settings["borrow"] = "1" if borrow else "0"
        settings["refill_below"] = "" if refill is None else str(refill[0])
        settings["refill_amount"] = "" if refill is None else str(refill[1])
        pool.borrow, pool.refill = borrow, refill
    await ledger.configure_pool(name, settings, actor="model", change="{}")


async def run_scenario(url: str, ops: list[tuple]) -> None:
    tenant = f"m{next(TENANT_IDS)}"
    ledger = Ledger(await connect_redis(url, timeout_ms=2000, max_connections=4))
    model = Model()
    try:
        for step, op in enumerate(ops):
            await apply(ledger, model, tenant, step, op)
        for name, pool in model.pools.items():
            found = await ledger.get_pool(name)
            assert found is not None
            assert found["balance"] == pool.balance, name
        assert (await verify_tenant(ledger, tenant)).ok
    finally:
        await ledger.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, max_size=40))
def test_ledger_matches_model(ledger_url: str, ops: list[tuple]) -> None:
    asyncio.run(run_scenario(ledger_url, ops))
