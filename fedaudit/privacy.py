"""summary.json's ``privacy`` and ``dp`` objects: per threat model, the DP guarantee beside what this run measured.

For each registered threat model (:mod:`fedaudit.threat_model`; the built-in ones are ``server`` and
``participant``), where its ``dp_covers`` says whether the scenario's DP mode covers that adversary and its
``per_client_models`` whether it sees each client's own update:

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

:func:`ensure_dp` and :func:`ensure_privacy` fill these objects into a run's :class:`~fedaudit.schema.RunSummary`
(and its summary.json); :func:`complete_summary` does both for a run directory when the run ends.

NumPy only; reads the run directory's files.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from fedaudit.risk import empirical_epsilon
from fedaudit.schema import PrivacyEstimate, RunSummary, read_rounds, read_summary, update_summary
from fedaudit.threat_model import threat_models

log = logging.getLogger(__name__)


def _threat_models(scenario=None) -> dict:
    """The threat models the privacy object covers: every registered one that follows the protocol (the guarantee
    against it holds whether or not it was audited), and the scenario's audited ones that deviate from it."""
    audited = set(scenario.audit.threat_models) if scenario is not None else set()
    return {tm: m for tm, m in threat_models().items() if not getattr(m, "deviation", False) or tm in audited}


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def accountant_by_threat_model(scenario, round_clients: dict[int, list]) -> dict:
    """{threat model: {"accountant_epsilon", "accountant", ...}} for the scenario's DP mode."""
    from fedaudit.dp import accountant_epsilon, sampled_clients

    dp, f = scenario.dp, scenario.federation
    models = _threat_models(scenario)
    out = {tm: {"accountant_epsilon": None, "accountant_note": None} for tm in models}
    m = sampled_clients(f.clients, f.fraction)
    if dp.mode == "none":
        for tm in models:
            out[tm]["accountant_note"] = "no differential privacy"
        return out
    central = dp.mode in ("server", "client")
    if central:
        acc = accountant_epsilon(dp.noise_multiplier, f.rounds, f.clients, m, dp.delta)
        for tm, model in models.items():
            if model.dp_covers.get(dp.mode):
                out[tm].update(accountant_epsilon=_finite(acc["epsilon"]), accountant_note=(
                    f"central DP, noise multiplier {dp.noise_multiplier:g}, {acc['sampling']}"))
            else:
                out[tm]["accountant_note"] = ("central DP: the server sees each update before the noise is added"
                                              if model.per_client_models else
                                              "central DP: the guarantee does not cover this adversary")
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
    z_part = dp.noise_multiplier * math.sqrt(m - 1) if m > 1 else dp.noise_multiplier
    acc = accountant_epsilon(z_part, f.rounds, f.clients, m, dp.delta)
    for tm, model in models.items():
        if not model.dp_covers.get(dp.mode):
            out[tm]["accountant_note"] = "local DP: the guarantee does not cover this adversary"
        elif model.per_client_models:
            out[tm].update(accountant_epsilon=max(eps) if eps else None, per_client=[dict(c) for c in per_client],
                           accountant_note=(
                f"local DP, noise multiplier {dp.noise_multiplier:g} on each update, composed over the rounds each "
                "client took part in (largest over clients)"))
        else:
            out[tm].update(accountant_epsilon=_finite(acc["epsilon"]), accountant_note=(
                f"local DP: the other sampled clients' noise, noise multiplier {z_part:.3g} on a client's "
                f"contribution to the aggregate, {acc['sampling']}"))
    return out


def canary_by_threat_model(scenario, canaries: dict | None, seed: int = 0) -> dict:
    """{threat model: {"canary_epsilon", "canary_epsilon_ci", ...}} from canaries.npz's arrays: an adversary that
    sees the global models is measured on every round's global model delta, one that sees each client's own
    update on the noised updates the canaries sent (local DP only: otherwise it sees them without noise)."""
    from fedaudit.canaries import estimate_epsilon

    delta = scenario.dp.delta
    models = _threat_models(scenario)
    out = {tm: {"canary_epsilon": None, "canary_epsilon_ci": None} for tm in models}
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

    global_models = [tm for tm, model in models.items() if not model.per_client_models]
    own_models = [tm for tm, model in models.items() if model.per_client_models]
    if global_models:
        every = est(np.nansum(canaries["inserted"], axis=0), np.nansum(canaries["fresh"], axis=0))
        final = est(canaries["final_inserted"][-1], canaries["final_fresh"][-1])
    if own_models and scenario.dp.mode == "local":
        seen = np.isfinite(canaries["server_inserted"]).any(axis=0)
        updates = est(np.nansum(canaries["server_inserted"], axis=0)[seen],
                      np.nansum(canaries["server_fresh"], axis=0)[seen])
    for tm in global_models:
        part = out[tm]
        put(part, every)
        put(part, final, "_final")
        part["canaries"] = int(canaries["inserted"].shape[1])
        part["canary_rounds"] = int(canaries["inserted"].shape[0])
        if scenario.dp.mode == "local":
            part["canary_note"] = (f"the {part['canaries']} canaries' own local noise is in the aggregate too, so "
                                   "this measures a federation with that many more noised clients and understates "
                                   "what the real clients' updates leak to a participant")
    for tm in own_models:
        server = out[tm]
        if scenario.dp.mode == "local":
            put(server, updates)
            server["canaries"] = int(seen.sum())
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
    """The ``privacy`` object of summary.json (see the module docstring); ``headlines``: {threat model: its
    aggregated metrics (a mapping, or a :class:`~fedaudit.schema.ViewSummary`)}."""
    acc = accountant_by_threat_model(scenario, round_clients)
    can = canary_by_threat_model(scenario, canaries, seed=scenario.federation.seed)
    out = {}
    for tm in _threat_models(scenario):
        low, _ = empirical_epsilon(headlines.get(tm))
        entry = PrivacyEstimate.from_dict({**acc[tm], **can[tm]})
        entry.mia_epsilon_lower = low if math.isfinite(low) else None
        entry.delta = float(scenario.dp.delta) if entry.measures_anything else None
        out[tm] = entry.to_dict()
    if utility:
        out["utility"] = utility
    return out


def run_privacy(run_dir: Path, scenario, summary: RunSummary | dict | None) -> dict:
    """The privacy object of a run directory (its rounds.jsonl, canaries.npz and summary's headlines)."""
    if not isinstance(summary, RunSummary):
        summary = RunSummary.from_dict(summary or {})
    lines = read_rounds(Path(run_dir) / "rounds.jsonl")
    round_clients = {line.round: list(line.clients or []) for line in lines}
    utility = None
    if lines:
        last = max(lines, key=lambda line: line.round)
        utility = {"accuracy": last.model_accuracy,
                   "accuracy_without_canaries": last.extra.get("accuracy_without_canaries")}
        if utility["accuracy_without_canaries"] is None:
            utility.pop("accuracy_without_canaries")
    out = privacy_object(scenario, round_clients, load_canaries(run_dir), dict(summary.threat_models), utility)
    for tm, model in _threat_models(scenario).items():
        if model.per_client_models and out[tm].get("per_client"):
            measured = per_client_mia_epsilon(Path(run_dir) / "records.csv", scenario.dp.delta, column=tm)
            for c in out[tm]["per_client"]:
                c["mia_epsilon_lower"] = measured.get(c["client"])
    return out


# ---- filling summary.json --------------------------------------------------------------------------------------

def ensure_dp(run_dir, scenario, summary: RunSummary, write: bool = True) -> dict | None:
    """Fill the summary's ``dp`` object (the accountant's epsilon) when the run trained with DP and it is absent.

    Written into an existing summary.json only (the auditor owns that file's creation); kept in ``summary``
    otherwise, so the report shows it either way."""
    current = summary.dp if isinstance(summary.dp, dict) else None
    if scenario is None or scenario.dp.mode == "none":
        return current
    dp = dict(current or {})
    if dp.get("accountant_epsilon") is not None and dp.get("accountant"):
        return dp
    from fedaudit.dp import scenario_dp

    try:
        computed = scenario_dp(scenario) or {}
    except (ImportError, ValueError) as exc:
        log.warning("accountant epsilon not computed: %s", exc)
        computed = {"mode": scenario.dp.mode, "noise_multiplier": scenario.dp.noise_multiplier,
                    "clipping_norm": scenario.dp.clipping_norm, "delta": scenario.dp.delta,
                    "accountant_epsilon": None, "accountant_error": str(exc)}
    computed.update({k: v for k, v in dp.items() if v is not None})   # what the run recorded wins
    summary.dp = computed
    if write:
        _write_field(run_dir, dp=computed)
    return computed


def ensure_privacy(run_dir, scenario, summary: RunSummary, write: bool = True) -> dict | None:
    """Fill the summary's ``privacy`` object (see the module docstring). Written into an existing summary.json
    only; kept when the summary already has it (a run writes it when it ends, the report reads it)."""
    from fedaudit.rundir import json_safe

    if scenario is None:
        return None
    if isinstance(summary.privacy, dict):
        return summary.privacy
    try:
        privacy = run_privacy(Path(run_dir), scenario, summary)
    except (ImportError, ValueError, OSError, KeyError) as exc:
        log.warning("privacy object not computed: %s", exc)
        return None
    summary.privacy = json_safe(privacy)
    if write:
        _write_field(run_dir, privacy=summary.privacy)
    return summary.privacy


def _write_field(run_dir, **fields) -> None:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return
    try:
        if update_summary(path, **fields) is None:
            log.warning("%s: unreadable; could not add the %s object", path, ", ".join(fields))
    except OSError as exc:
        log.warning("%s: could not add the %s object (%s)", path, ", ".join(fields), exc)


def complete_summary(run_dir) -> RunSummary | None:
    """Fill summary.json's ``dp`` and ``privacy`` objects (accountant, canary and attack epsilon per threat model)
    from the run directory's files; None when it has no summary.json."""
    from fedaudit.config import load_scenario
    from fedaudit.errors import FedAuditError

    run_dir = Path(run_dir)
    summary = read_summary(run_dir / "summary.json")
    if summary is None:
        return None
    try:
        scenario = load_scenario(run_dir / "scenario.toml", run_dir_file=True)
    except (FedAuditError, OSError) as exc:
        log.warning("%s: the dp and privacy objects are not computed: %s", run_dir, exc)
        return summary
    ensure_dp(run_dir, scenario, summary)
    ensure_privacy(run_dir, scenario, summary)
    return summary


def per_client_mia_epsilon(records_csv: Path, delta: float, column: str = "server") -> dict[int, float | None]:
    """{client: the empirical epsilon (conservative end) of a threat model's attack (records.csv's ``column``) on
    that client's members against every non-member} ({} when the run has no such scores)."""
    import csv

    from fedaudit.metrics import empirical_epsilon as epsilon_of_scores

    if not Path(records_csv).is_file():
        return {}
    owners, members, scores = [], [], []
    with open(records_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if not row.get(column):
                continue
            owners.append(int(row["client"]))
            members.append(row["member"] == "1")
            scores.append(float(row[column]))
    if not scores:
        return {}
    owners, members, scores = np.asarray(owners), np.asarray(members), np.asarray(scores)
    out = {}
    for k in np.unique(owners[members]):
        mine = members & (owners == k)
        low = epsilon_of_scores(scores[mine], scores[~members], delta=delta)["low"]
        out[int(k)] = float(low) if math.isfinite(low) else None
    return out


__all__ = ["accountant_by_threat_model", "canary_by_threat_model", "complete_summary", "ensure_dp", "ensure_privacy",
           "load_canaries", "per_client_mia_epsilon", "privacy_object", "run_privacy"]
