"""Threat models that deviate from the protocol: the active server, the isolating server, the active participant.

Each changes what is trained (:mod:`fedaudit.federation.active`), so each runs as a federation of its own beside the
passive run of the same seed (:mod:`fedaudit.twins`): its ``passive_twin`` is the threat model of that run whose
result it is compared with. In its own run each is audited like its passive twin, on what the deviating adversary
observes:

- ``active-server``: every client's reply to the manipulated model it sent (theta_prev is that model, so the loss
  drop of each record from the model sent to the client's reply, and the cosine of the update with the record's
  gradient, are among the features). Under secure aggregation the server sees one client's model only, the one it
  recovered by model inconsistency;
- ``isolating-server``: the isolated client's replies, each trained from the model the server kept for it alone;
- ``active-participant``: the global models, after its own gradient ascent on the targets in its update.

Each measures its attacks on the adversary's target records (:meth:`scored_records`: the records
the manipulation was aimed at; for the isolating server, the isolated client's members and the population-sample
targets), so that the active and the passive adversary are compared on the same records
(:func:`fedaudit.twins.compare_with_twin`).
"""

from __future__ import annotations

import numpy as np

from fedaudit.auditor.results import skipped_result
from fedaudit.auditor.views import Participant, RoundContext, Server
from fedaudit.threat_model import register_threat_model


def targets_of(core) -> np.ndarray:
    """Positions of the adversary's target records among the audited ones (stable for the run)."""
    cached = getattr(core, "_active_targets", None)
    if cached is None:
        from fedaudit.auditor.records import active_targets

        cached = active_targets(core.records, core.scenario.audit.active.targets, core.seed)
        core._active_targets = cached
    return cached


class _Deviating:
    """An adversary whose metrics are on its target records."""

    deviation = True

    def scored_records(self, core) -> np.ndarray:
        mask = np.zeros(len(core.records), dtype=bool)
        mask[targets_of(core)] = True
        return mask


@register_threat_model
class ActiveServer(_Deviating, Server):
    name = "active-server"
    passive_twin = "server"
    title = "Active server (gradient ascent on target records)"
    description = ("the aggregator deviating from the protocol: before sending the global model it runs gradient "
                   "ascent on target records, then reads every client's reply")
    noun = "the active server"
    possessive = "the active server's"
    against = "Against an active server"
    color = "#78281f"
    strength = 30
    secure_aggregation_description = ("the aggregator deviating from the protocol under secure aggregation: it sends "
                                      "every client but one a model whose training changes only its output bias, so "
                                      "that the unmasked sum reveals the one client's model (model inconsistency)")

    def attack_view_for(self, secure_aggregation: bool = False) -> str:
        return "server"            # it holds a client's own model, also under secure aggregation (recovered)

    def jobs(self, core, ctx):
        return Server.jobs(self, core, _per_client(ctx))

    def audit(self, core, ctx):
        if ctx.secure_aggregation and not ctx.clients:
            return skipped_result(core.headlines[self.name], "no client's model was recovered this round (the "
                                  "inconsistency starts once the target's node is known from a reply)")
        return Server.audit(self, core, _per_client(ctx))


@register_threat_model
class IsolatingServer(_Deviating, Server):
    name = "isolating-server"
    passive_twin = "server"
    title = "Isolating server"
    description = ("the aggregator deviating from the protocol: it sends one client a model updated only with that "
                   "client's own replies, so that the client's model overfits its own data, and reads its replies")
    noun = "the isolating server"
    possessive = "the isolating server's"
    against = "Against an isolating server"
    color = "#943126"
    strength = 25

    def attack_view_for(self, secure_aggregation: bool = False) -> str:
        return "server"

    def scored_records(self, core) -> np.ndarray:
        """The isolated client's members and the population-sample targets: only its model is observed."""
        from fedaudit.twins import chosen_clients

        r = core.records
        mask = _Deviating.scored_records(self, core) & ~r.member
        mask |= r.owner == chosen_clients(core.scenario)["isolated_client"]
        return mask


@register_threat_model
class ActiveParticipant(_Deviating, Participant):
    name = "active-participant"
    passive_twin = "participant"
    title = "Active participant (gradient ascent in its update)"
    description = ("a client deviating from the protocol: it runs gradient ascent on target records in its own "
                   "update, then reads the next global models")
    noun = "an active participant"
    possessive = "an active participant's"
    against = "Against an active participant"
    color = "#154360"
    strength = 12
    attack_view = "participant"    # it reads the global models, as its passive twin does


def _per_client(ctx: RoundContext) -> RoundContext:
    """The round as a server with per-client models sees it: under secure aggregation the deviating server holds the
    clients' models its manipulation revealed (``ctx.clients``, none in a round where it recovered none), so it is
    never the aggregate-only view."""
    if ctx.secure_aggregation:
        from dataclasses import replace

        return replace(ctx, secure_aggregation=False)      # a shallow copy: arrays, results, state are shared
    return ctx


__all__ = ["ActiveParticipant", "ActiveServer", "IsolatingServer", "targets_of"]
