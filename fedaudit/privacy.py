"""summary.json's ``privacy`` object: per threat model, the DP guarantee beside what this run measured.

For each of ``server`` and ``participant``:

- ``accountant_epsilon``: the formal guarantee against that adversary (Renyi DP from dp-accounting, see
  :mod:`fedaudit.dp`), or None where the defence gives none against it. Central DP (``dp.mode`` server or client):
  none against the server, which sees every update before the noise; against a participant the DP-FedAvg
  guarantee. Local DP (Flower's ``LocalDpMod``, noise ``N(0, (z C)^2)`` on each clipped update): against the
  server each client's guarantee is the Gaussian mechanism with noise multiplier ``z`` composed over the rounds
  that client took part in (no amplification: the server knows who took part); the headline is the largest over
  clients and ``per_client`` lists them all, each beside the server attack's empirical epsilon on that client's
  members (``mia_epsilon_lower``). Against a participant, the other ``m - 1`` sampled clients' noise
  hides a client's update in the aggregate: noise multiplier ``z * sqrt(m - 1)``, amplified by sampling as under
  central DP.
- ``canary_epsilon`` and ``canary_epsilon_ci``: measured with canary clients (:mod:`fedaudit.canaries`) for the
  all-iterates adversary (participant: every round's global model delta; server under local DP: every noised
  update a canary sent); the participant object also has ``canary_epsilon_final`` (final model minus initial).
  None where the run had no canaries, or where the server sees a canary's update without noise.
- ``mia_epsilon_lower``: the empirical epsilon the membership attacks imply (conservative end of its 95%
  interval), a lower bound on natural records.
- ``delta``: the delta all of these are quoted at (None when none of them is).

NumPy only; reads the run directory's files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

THREAT_MODELS = ("server", "participant")


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def accountant_by_threat_model(scenario, round_clients: dict[int, list]) -> dict:
    """{threat model: {"accountant_epsilon", "accountant", ...}} for the scenario's DP mode."""
    from fedaudit.dp import accountant_epsilon, sampled_clients

    dp, f = scenario.dp, scenario.federation
    out = {tm: {"accountant_epsilon": None, "accountant_note": None} for tm in THREAT_MODELS}
    m = sampled_clients(f.clients, f.fraction)
    if dp.mode == "none":
        for tm in THREAT_MODELS:
            out[tm]["accountant_note"] = "no differential privacy"
        return out
    if dp.mode in ("server", "client"):
        acc = accountant_epsilon(dp.noise_multiplier, f.rounds, f.clients, m, dp.delta)
        out["participant"].update(accountant_epsilon=_finite(acc["epsilon"]), accountant_note=(
            f"central DP, noise multiplier {dp.noise_multiplier:g}, {acc['sampling']}"))
        out["server"]["accountant_note"] = "central DP: the server sees each update before the noise is added"
        return out
    # local DP
    rounds_of = {k: 0 for k in range(f.clients)}
    for clients in round_clients.values():
        for k in clients:
            rounds_of[int(k)] = rounds_of.get(int(k), 0) + 1
    per_client = []
    for k in sorted(rounds_of):
        r = rounds_of[k]
        e = accountant_epsilon(dp.noise_multiplier, r, 1, 1, dp.delta)["epsilon"] if r else 0.0
        per_client.append({"client": k, "rounds": r, "accountant_epsilon": _finite(e)})
    eps = [c["accountant_epsilon"] for c in per_client if c["accountant_epsilon"] is not None]
    out["server"].update(accountant_epsilon=max(eps) if eps else None, per_client=per_client, accountant_note=(
        f"local DP, noise multiplier {dp.noise_multiplier:g} on each update, composed over the rounds each client "
        "took part in (largest over clients)"))
    z_part = dp.noise_multiplier * math.sqrt(m - 1) if m > 1 else dp.noise_multiplier
    acc = accountant_epsilon(z_part, f.rounds, f.clients, m, dp.delta)
    out["participant"].update(accountant_epsilon=_finite(acc["epsilon"]), accountant_note=(
        f"local DP: the other sampled clients' noise, noise multiplier {z_part:.3g} on a client's contribution to "
        f"the aggregate, {acc['sampling']}"))
    return out


def canary_by_threat_model(scenario, canaries: dict | None, seed: int = 0) -> dict:
    """{threat model: {"canary_epsilon", "canary_epsilon_ci", ...}} from canaries.npz's arrays."""
    from fedaudit.canaries import estimate_epsilon

    delta = scenario.dp.delta
    out = {tm: {"canary_epsilon": None, "canary_epsilon_ci": None} for tm in THREAT_MODELS}
    if not canaries or canaries["inserted"].size == 0:
        return out

    def est(obs, null):
        try:
            r = estimate_epsilon(obs, null, delta, seed=seed)
        except ValueError:
            return None
        return r

    def put(entry, r, suffix=""):
        if r is None:
            return
        entry["canary_epsilon" + suffix] = float(r["epsilon"]) if math.isfinite(r["epsilon"]) else math.inf
        entry["canary_epsilon" + suffix + "_ci"] = [float(x) for x in r["ci"]]
        entry["canary_mu" + suffix] = float(r["mu"])

    part = out["participant"]
    put(part, est(np.nansum(canaries["inserted"], axis=0), np.nansum(canaries["fresh"], axis=0)))
    put(part, est(canaries["final_inserted"][-1], canaries["final_fresh"][-1]), "_final")
    part["canaries"] = int(canaries["inserted"].shape[1])
    part["canary_rounds"] = int(canaries["inserted"].shape[0])
    server = out["server"]
    if scenario.dp.mode == "local":
        seen = np.isfinite(canaries["server_inserted"]).any(axis=0)
        put(server, est(np.nansum(canaries["server_inserted"], axis=0)[seen],
                        np.nansum(canaries["server_fresh"], axis=0)[seen]))
        server["canaries"] = int(seen.sum())
        part["canary_note"] = (f"the {part['canaries']} canaries' own local noise is in the aggregate too, so this "
                               "measures a federation with that many more noised clients and understates what the "
                               "real clients' updates leak to a participant")
    else:
        server["canary_note"] = "the server sees each canary's update without noise"
    return out


def load_canaries(run_dir: Path) -> dict | None:
    from fedaudit.canaries import CANARIES_FILE

    path = Path(run_dir) / CANARIES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def privacy_object(scenario, round_clients: dict[int, list], canaries: dict | None, headlines: dict,
                   utility: dict | None = None) -> dict:
    """The ``privacy`` object of summary.json (see the module docstring)."""
    from fedaudit.report.fmt import empirical_epsilon

    acc = accountant_by_threat_model(scenario, round_clients)
    can = canary_by_threat_model(scenario, canaries, seed=scenario.federation.seed)
    out = {}
    for tm in THREAT_MODELS:
        low, _ = empirical_epsilon(headlines.get(tm))
        entry = {**acc[tm], **can[tm], "mia_epsilon_lower": low if math.isfinite(low) else None}
        quoted = [entry.get("accountant_epsilon"), entry.get("canary_epsilon"), entry.get("mia_epsilon_lower")]
        entry["delta"] = float(scenario.dp.delta) if any(x is not None for x in quoted) else None
        out[tm] = {k: entry[k] for k in ("accountant_epsilon", "canary_epsilon", "canary_epsilon_ci",
                                        "mia_epsilon_lower", "delta")} | {
            k: v for k, v in entry.items() if k not in ("accountant_epsilon", "canary_epsilon", "canary_epsilon_ci",
                                                        "mia_epsilon_lower", "delta") and v is not None}
    if utility:
        out["utility"] = utility
    return out


def run_privacy(run_dir: Path, scenario, summary: dict) -> dict:
    """The privacy object of a run directory (its rounds.jsonl, canaries.npz and summary's headlines)."""
    from fedaudit.rundir import read_jsonl

    rows = read_jsonl(Path(run_dir) / "rounds.jsonl")
    round_clients = {int(r["round"]): list(r.get("clients") or []) for r in rows if "round" in r}
    utility = None
    if rows:
        last = max(rows, key=lambda r: r.get("round", 0))
        utility = {"accuracy": last.get("accuracy"), "accuracy_without_canaries": last.get("accuracy_without_canaries")}
        if utility["accuracy_without_canaries"] is None:
            utility.pop("accuracy_without_canaries")
    headlines = {tm: v for tm, v in (summary.get("threat_models") or {}).items() if isinstance(v, dict)}
    out = privacy_object(scenario, round_clients, load_canaries(run_dir), headlines, utility)
    measured = per_client_mia_epsilon(Path(run_dir) / "records.csv", scenario.dp.delta)
    for c in out["server"].get("per_client") or []:
        c["mia_epsilon_lower"] = measured.get(c["client"])
    return out


def per_client_mia_epsilon(records_csv: Path, delta: float) -> dict[int, float | None]:
    """{client: the server attack's empirical epsilon (conservative end) on that client's members against every
    non-member}, from records.csv ({} when the run has no server scores)."""
    import csv

    from fedaudit.metrics import empirical_epsilon

    if not Path(records_csv).is_file():
        return {}
    owners, members, scores = [], [], []
    with open(records_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if not row.get("server"):
                continue
            owners.append(int(row["client"]))
            members.append(row["member"] == "1")
            scores.append(float(row["server"]))
    if not scores:
        return {}
    owners, members, scores = np.asarray(owners), np.asarray(members), np.asarray(scores)
    out = {}
    for k in np.unique(owners[members]):
        mine = members & (owners == k)
        low = empirical_epsilon(scores[mine], scores[~members], delta=delta)["low"]
        out[int(k)] = float(low) if math.isfinite(low) else None
    return out


__all__ = ["accountant_by_threat_model", "canary_by_threat_model", "load_canaries", "privacy_object",
           "run_privacy", "THREAT_MODELS"]
