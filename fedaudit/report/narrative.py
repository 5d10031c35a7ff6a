"""The plain-language summary of one run, written from its numbers, for a DPIA (GDPR Art. 35).

Each sentence states a measured number and what it means for the people whose records were used; where
the audit cannot say something (audit off, too few non-members for a low false-positive rate), the text
says so instead of guessing. Returns HTML fragments (all values escaped).
"""

from __future__ import annotations

import math

import numpy as np

from fedaudit.report.figures import class_results, client_table
from fedaudit.report.fmt import count, eps, esc, f3, finite, num, one_in, pct, pct_ci
from fedaudit.report.rundata import RunData, threat_model, tm_against, tm_noun, tm_possessive
from fedaudit.risk import LEVEL_TEXT, empirical_epsilon, risk_level, worst_level


def _who(description: str) -> str:
    """A description ("the aggregator, who sees ...") as the clause after the adversary's noun ("who sees ...")."""
    head, sep, rest = description.partition(", who ")
    if not sep:
        return description
    return "who, under secure aggregation, " + rest if head.endswith(" under secure aggregation") else "who " + rest


def _tm_sentence(tm: str, summ: dict, first: bool, who: str | None = None, low: tuple = (None, None)) -> str:
    """The sentence on one threat model's headline metrics (``summ``: a metrics mapping; ``low``: (the metrics at
    1% FPR on the records the adversary did not know, the attack it chose for that rate on those it knew) where the
    run recorded one)."""
    m = threat_model(tm)
    who = (m.description if m is not None else "") if who is None else who
    noun = tm_noun(tm)
    noun = noun[0].upper() + noun[1:]
    auc = num(summ.get("auc"))
    parts = []
    who = _who(who)
    if first:
        parts.append(f"{esc(noun)}, {esc(who)}, recognises whether a record was used in training with an AUC of "
                     f"<strong>{f3(auc, 2)}</strong> (0.5 is guessing, 1.0 is always right).")
    else:
        parts.append(f"{esc(noun)}, {esc(who)}, reaches an AUC of <strong>{f3(auc, 2)}</strong>.")
    at1, low_attack = low if low[0] else (summ, None)
    tpr1 = num(at1.get("tpr_at_1pct"))
    if math.isfinite(tpr1):
        ratio = tpr1 / 0.01
        ci = pct_ci(at1.get("tpr_at_1pct_ci"))
        who_names = (f"on the records whose membership it did not know, its strongest attack at that rate "
                     f"({esc(low_attack)}, chosen on those it knew)")
        parts.append(f"Tuned to wrongly accuse only {one_in(0.01)} non-members, {who_names} correctly identifies "
                     f"<strong>{pct(tpr1)}</strong> of the members" + (f" (95% interval {ci})" if ci else "")
                     + _against_guessing(ratio, at1.get("tpr_at_1pct_ci")))
    tpr01 = num(summ.get("tpr_at_0_1pct"))
    n0 = num(summ.get("n_nonmembers"))
    if math.isfinite(tpr01):
        ci = pct_ci(summ.get("tpr_at_0_1pct_ci"))
        # the rate at 0.1% is the headline attack's on every audited record: the attack chosen for 1% is measured
        # on the records the adversary did not know, too few non-members for 0.1%
        who01 = "the headline attack, on every audited record," if low_attack else "it still"
        parts.append(f"At {one_in(0.001)} false accusations {who01} identifies {pct(tpr01)}"
                     + (f" ({ci})" if ci else "") + ".")
    elif math.isfinite(n0) and first:
        parts.append(f"The audit had {count(n0)} non-member records, too few to measure the rate at "
                     f"{one_in(0.001)} false accusations (that needs at least 1,000).")
    return " ".join(parts)


TREND_ALPHA = 0.05   # the level at which the report calls a change over rounds a trend


def _peak_supported(y: np.ndarray, se: np.ndarray, peak: int, alpha: float) -> bool:
    """Whether the highest round stands above both the first and the last round beyond noise: a one-sided z test on
    each difference, at ``alpha`` divided by the number of rounds (the peak was chosen as the largest of them)."""
    from fedaudit.metrics import two_sided_p

    if peak in (0, y.size - 1):
        return False
    level = alpha / y.size
    for other in (0, y.size - 1):
        z = (y[peak] - y[other]) / math.hypot(se[peak], se[other])
        if not (z > 0 and two_sided_p(z) / 2 < level):
            return False
    return True


def _against_guessing(ratio: float, ci) -> str:
    """The clause after a TPR at 1% FPR: a multiple of guessing only when its interval lies above guessing's 1%."""
    from fedaudit.risk import TPR1_CHANCE

    low = num(ci[0]) if isinstance(ci, (list, tuple)) and ci else math.nan
    if math.isfinite(low):
        if low > TPR1_CHANCE:
            return f", {ratio:.1f} times what guessing achieves."
        return f", not distinguishable from guessing (which identifies {pct(TPR1_CHANCE)}: the interval includes it)."
    return f", {ratio:.1f} times what guessing achieves." if ratio >= 1.15 else ", no better than guessing."


def _trend(run: RunData, tm: str, alpha: float = TREND_ALPHA) -> str | None:
    """A sentence on how the risk changed over rounds, claiming a trend or a peak only where a test supports it."""
    from fedaudit.metrics import trend_test

    x, y, se = run.per_round_auc_se(tm)
    ok = np.isfinite(y)
    x, y, se = x[ok], y[ok], se[ok]
    if y.size < 2:
        return None
    who = esc(tm_possessive(tm))
    span = (f"{who} AUC is {f3(y[0], 2)} in round {int(x[0])} and {f3(y[-1], 2)} in round {int(x[-1])} (between "
            f"{f3(np.min(y), 2)} and {f3(np.max(y), 2)} over the {y.size} audited rounds)")
    if y.size < 3 or not np.isfinite(se).all():
        why = "too few audited rounds" if y.size < 3 else "the rounds do not record how many records were scored"
        return f"Over training, {span}; {why} to test for a trend, so the report claims none."
    test = trend_test(x, y, se, alpha=alpha)
    how = (f"weighted least-squares slope over the rounds' AUCs and their standard errors, "
           f"p = {test.p_value:.2g}, &alpha; = {alpha:g}")
    if test.significant:
        direction = "grows" if test.slope > 0 else "falls"
        later = "more" if test.slope > 0 else "less"
        return (f"Risk {direction} as training goes on: {span}; the trend is statistically supported ({how}), so "
                f"later rounds leak {later} in this run.")
    peak = int(np.argmax(y))
    if _peak_supported(y, se, peak, alpha):
        return (f"Risk peaks in round {int(x[peak])} (AUC {f3(y[peak], 2)}), above both the first and the last "
                f"audited round beyond sampling noise; {span}; there is no supported trend over all rounds ({how}).")
    return (f"No trend over rounds is supported: {span}; the differences are within sampling noise ({how}).")


SECURE_AGGREGATION_TEXT = (
    "Training used <strong>secure aggregation</strong> (Flower's SecAgg+): each client masks its update, and the "
    "server can unmask only their sum. The server therefore never sees one client's model: it cannot attack a "
    "client's own update, and it cannot tell which client a record came from (source inference does not apply). "
    "The server's figures above are those of the aggregate-only attack, on the global models it computed "
    "(before any noise it adds), which is the attack a participant can run as well; the per-client figures "
    "are the risk that the aggregated models carry for each client's records.")

MIN_CLIENT_RECORDS = 10   # fewer records than this: an AUC too noisy to single a client out


def _records(n) -> str:
    return f"{count(n)} record{'s' if num(n) != 1 else ''}"


def _clients(run: RunData) -> str | None:
    table = client_table(run)
    if table is None or "auc" not in table:
        return None
    auc = np.asarray(table["auc"], float)
    if not np.isfinite(auc).any():
        return None
    clients = np.asarray(table["client"], float)
    records = np.asarray(table.get("records", np.full(auc.size, np.nan)), float)
    peak = np.asarray(table.get("peak_round", np.full(auc.size, np.nan)), float)
    small = np.isfinite(records) & (records < MIN_CLIENT_RECORDS)
    ranked = np.where(small | ~np.isfinite(auc), np.nan, auc)
    if not np.isfinite(ranked).any():
        ranked = auc
    i = int(np.nanargmax(ranked))
    j = int(np.nanargmin(ranked))
    text = (f"The most exposed client is <strong>client {int(clients[i])}</strong>"
            + (f" ({_records(records[i])})" if np.isfinite(records[i]) else "")
            + (": an attack on the aggregated models recognises its records with AUC " if run.aggregate_only
               else ": the server recognises its records with AUC ") + f"{f3(auc[i], 2)}"
            + (f", most of all in round {int(peak[i])}" if np.isfinite(peak[i]) else "") + ".")
    if np.isfinite(ranked).sum() > 1 and i != j:
        text += f" The least exposed is client {int(clients[j])} (AUC {f3(auc[j], 2)})."
        ok = np.isfinite(records) & np.isfinite(ranked)
        if ok.sum() > 2:
            spread = np.ptp(records[ok]) / max(np.mean(records[ok]), 1.0)
            if spread > 0.25 and np.std(auc[ok]) > 0 and ok.sum() >= 5:
                from scipy.stats import spearmanr

                r, p = spearmanr(records[ok], auc[ok])
                if math.isfinite(p) and p < TREND_ALPHA:
                    text += (f" Clients with {'fewer' if r < 0 else 'more'} records are more exposed (Spearman's "
                             f"&rho; = {r:.2f} between records and AUC, p = {p:.2g}).")
    if small.any():
        named = list(zip(clients[small], records[small]))
        names = ", ".join(f"client {int(c)} ({_records(n)})" for c, n in named[:10]) + \
            (f" and {len(named) - 10:,} more" if len(named) > 10 else "")
        text += (f" Some clients hold too few records for a reliable per-client figure: {esc(names)}; "
                 "a client with a handful of records is easy to attack, so treat them as highly exposed.")
    return text


def _classes(run: RunData, tm: str) -> str | None:
    res = class_results(run, tm)
    if res is None or not np.isfinite(res["auc"]).any() or len(res["classes"]) < 2:
        return None
    auc = res["auc"]
    i, j = int(np.nanargmax(auc)), int(np.nanargmin(auc))
    return (f"By class, records labelled <strong>{esc(res['classes'][i])}</strong> are the most exposed "
            f"(AUC {f3(auc[i], 2)}); label {esc(res['classes'][j])} the least ({f3(auc[j], 2)}).")


def _top_records(run: RunData, n: int = 20) -> str | None:
    r = run.records
    if r is None or "risk" not in r or "member" not in r:
        return None
    from fedaudit.report.rundata import _as_float_array

    risk = _as_float_array(r["risk"])
    member = _as_float_array(r["member"])
    client = _as_float_array(r.get("client", np.full(risk.size, np.nan)))
    ok = np.isfinite(risk) & (member == 1)
    if ok.sum() < 3:
        return None
    idx = np.flatnonzero(ok)[np.argsort(-risk[ok], kind="mergesort")[:n]]
    owners, counts = np.unique(client[idx][np.isfinite(client[idx])], return_counts=True)
    if not owners.size:
        return None
    k = int(np.argmax(counts))
    share = counts[k] / idx.size
    text = (f"The {idx.size} records at highest risk have membership probabilities from {f3(risk[idx[-1]], 2)} to "
            f"{f3(risk[idx[0]], 2)}")
    if share >= 0.3 and owners.size > 1:
        text += f"; {counts[k]} of them belong to client {int(owners[k])}."
    else:
        text += f", spread over {owners.size} client{'s' if owners.size != 1 else ''}."
    return text


def _average_and_worst(run: RunData) -> str | None:
    """The average and the worst case over records and over clients (ISO/IEC 27559 asks for both)."""
    from fedaudit.report.rundata import _as_float_array

    parts = []
    r = run.records
    if r is not None and "risk" in r and "member" in r:
        risk = _as_float_array(r["risk"])
        member = risk[(_as_float_array(r["member"]) == 1) & np.isfinite(risk)]
        if member.size >= 100:
            top = np.sort(member)[::-1][:max(1, member.size // 100)]
            parts.append(f"Averaged over all {count(member.size)} members, the audit gives a record a membership "
                         f"probability of {f3(np.mean(member), 2)}; the 1% most exposed records ({count(top.size)}) "
                         f"are recognised with a probability of at least {f3(top[-1], 2)} (on average "
                         f"{f3(np.mean(top), 2)}, at most {f3(top[0], 2)}).")
    table = client_table(run)
    if table is not None and "auc" in table:
        auc = np.asarray(table["auc"], float)
        ok = np.isfinite(auc)
        if ok.sum() >= 2:
            k = int(np.nanargmax(auc))
            parts.append(f"Over the {int(ok.sum())} clients, the per-client AUC averages {f3(np.mean(auc[ok]), 2)} "
                         f"and reaches {f3(auc[k], 2)} for the most exposed one (client "
                         f"{int(np.asarray(table['client'], float)[k])}).")
    if not parts:
        return None
    return "<strong>Average and worst case.</strong> " + " ".join(parts)


def _dp(run: RunData, headlines: dict) -> list[str]:
    dp = run.dp
    if run.dp_mode == "none" or dp is None:
        return []
    mode = {"server": "server-side clipping", "client": "client-side clipping",
            "local": "local DP: clipping and noise on each client"}.get(run.dp_mode, run.dp_mode)
    acc = dp.accountant_epsilon
    delta = dp.delta
    central = run.dp_mode != "local"
    out = [f"Training used differential privacy ({esc(mode)}, noise multiplier {esc(dp.noise_multiplier)}, "
           f"clipping norm {esc(dp.clipping_norm)})."]
    if finite(acc):
        out[-1] += (f" Flower's privacy accountant certifies <strong>&epsilon; = {eps(acc)}</strong> at &delta; = "
                    f"{esc(delta)} for each client's data (a formal upper bound on what any attack can achieve).")
    else:
        out[-1] += " With no noise, the accountant gives no finite guarantee."
    seen = "the sum of the updates" if run.aggregate_only else "each client's update"
    for tm, summ in headlines.items():
        low, point = empirical_epsilon(summ)
        if not math.isfinite(low):
            continue
        m = threat_model(tm)
        uncovered = central and m is not None and not m.dp_covers.get(run.dp_mode, False) and m.per_client_models
        measured = (f"{esc(tm_possessive(tm))} attack measured &epsilon; &ge; {eps(low)} (95% confidence"
                    + (f"; point estimate {eps(point)})" if math.isfinite(point) else ")"))
        measured = measured[0].upper() + measured[1:]
        if finite(acc) and low > num(acc):
            out.append(f"{measured}: <strong>more than the guarantee allows</strong>. "
                       + (f"This is expected for the server, which sees {seen} before noise is added: "
                          "this form of DP does not protect against the aggregator." if uncovered else
                          "The guarantee does not hold as configured; check the DP settings."))
        elif finite(acc):
            out.append(f"{measured}, within the guarantee"
                       + (f" (but the server sees {seen} before noise is added, so the guarantee "
                          "does not cover it)." if uncovered else "."))
    return out


def _privacy(run: RunData) -> list[str]:
    """Per threat model, the guarantee beside what this run measured (summary.json's ``privacy`` object)."""
    from fedaudit.threat_model import ordered

    if not isinstance(run.summary.privacy, dict):
        return []
    out = []
    for tm in ordered(run.summary.privacy_threat_models()):
        p = run.privacy(tm)
        if p is None or not p.measures_anything:
            continue
        acc, can, ci = p.accountant_epsilon, p.canary_epsilon, p.canary_epsilon_ci
        mia, delta = p.mia_epsilon_lower, p.delta
        who = tm_against(tm)
        claim = (f"the DP guarantee claims at most &epsilon; = <strong>{eps(acc)}</strong>" if finite(acc) else
                 "no DP guarantee covers this adversary" + (f" ({esc(p.accountant_note)})"
                                                            if p.accountant_note else ""))
        bits = [f"{who} (&delta; = {esc(delta)}): {claim}" if delta is not None else f"{who}: {claim}"]
        if can is not None:
            interval = (f" [{eps(ci[0])}, {eps(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")
            text = (f"measured in this run with {esc('' if p.canaries is None else p.canaries)} canary clients: "
                    f"<strong>{eps(can) if finite(can) else 'unbounded'}</strong>{interval} (every round observed)")
            fin, fci = p.canary_epsilon_final, p.canary_epsilon_final_ci
            if fin is not None:
                text += (f", {eps(fin) if finite(fin) else 'unbounded'}"
                         + (f" [{eps(fci[0])}, {eps(fci[1])}]" if isinstance(fci, list) and len(fci) == 2 else "")
                         + " (final model only)")
            if p.canary_note:
                text += f"; {esc(p.canary_note)}"
            bits.append(text)
            if finite(acc) and finite(ci[0] if isinstance(ci, list) and ci else None) and ci[0] > 1.05 * num(acc):
                bits.append("<strong>more than the guarantee allows: check the DP implementation and settings</strong>")
        elif p.canary_note:
            bits.append(f"canaries measure nothing here ({esc(p.canary_note)})")
        if mia is not None:
            bits.append(f"the membership attacks on real records show &epsilon; &ge; {eps(mia)}")
        out.append("; ".join(bits) + ".")
        per = p.per_client
        if per and len(per) <= 20:
            out.append(f"Per client, the guarantee for the rounds it took part in beside what the {esc(tm)}'s attack "
                       "measured on its records: " + "; ".join(
                           f"client {esc(c.get('client'))} ({esc(c.get('rounds'))} rounds): at most "
                           f"{eps(c.get('accountant_epsilon'))}, measured &ge; {eps(c.get('mia_epsilon_lower'))}"
                           for c in per) + ".")
    util = run.summary.privacy.get("utility") or {}
    if finite(util.get("accuracy_without_canaries")) and finite(util.get("accuracy")):
        out.append(f"Canaries and utility: the final model reaches {pct(num(util['accuracy']))} test accuracy with the "
                   f"canaries' updates in it and {pct(num(util['accuracy_without_canaries']))} with their summed "
                   "contribution removed.")
    return out


def summarize_run(run: RunData) -> tuple[str | None, list[str]]:
    """(overall risk level or None, paragraphs of HTML) for the top of the report."""
    paras: list[str] = []
    headlines = {}
    for tm in run.threat_models():
        headline, _ = run.headline(tm)
        if headline is not None and finite(headline.value("auc")):
            headlines[tm] = headline.metrics
    levels = {tm: risk_level(s, run.low_fpr(tm)[0]) for tm, s in headlines.items()}
    overall = worst_level(levels.values())
    if not headlines:
        if run.scenario is not None and not run.scenario.audit.enabled:
            paras.append("<strong>Not audited.</strong> This run trained with the membership-inference audit switched "
                         "off (<code>audit.enabled = false</code>), so this report shows what was trained and how "
                         "useful the model is, but not how much it leaks. Run the scenario again with the audit on "
                         "before relying on it in a DPIA.")
        else:
            paras.append("<strong>Not audited.</strong> The run directory holds no audit results (no summary.json "
                         "and no attack results in rounds.jsonl); the run may have stopped early.")
    else:
        order = sorted(headlines, key=lambda tm: -num(headlines[tm].get("auc")))
        lead = (f"<strong>Overall membership risk: {esc(LEVEL_TEXT[overall])}.</strong> "
                if overall else "")
        paras.append(lead + _tm_sentence(order[0], headlines[order[0]], True, run.describe(order[0]),
                                         run.low_fpr(order[0])))
        for tm in order[1:]:
            paras.append(_tm_sentence(tm, headlines[tm], False, run.describe(tm), run.low_fpr(tm)))
        if run.aggregate_only:
            paras.append(SECURE_AGGREGATION_TEXT)
        exposed = [s for s in (_clients(run), _classes(run, order[0]), _top_records(run)) if s]
        if exposed:
            paras.append(" ".join(exposed))
        si = run.source_inference()
        if si and finite(si.get("accuracy")):
            acc_si, chance = num(si.get("accuracy")), num(si.get("chance"))
            ci = si.get("ci")
            low = num(ci[0]) if isinstance(ci, (list, tuple)) and ci else math.nan
            # better than guessing only where the interval says so (without one: by a wide margin)
            better = math.isfinite(chance) and (low > chance if math.isfinite(low) else acc_si > 1.5 * chance)
            interval = f", 95% interval {pct_ci(ci)}" if pct_ci(ci) else ""
            who = run.per_client_threat_model() or "server"
            paras.append(f"The {esc(who)} tries to tell which client a training record came from: it names the right "
                         f"client for {pct(acc_si)} of members"
                         + (f" (guessing: {pct(chance)}{interval})" if math.isfinite(chance) else "")
                         + (", which reveals where a person's data is held." if better else
                            ", not distinguishable from guessing." if math.isfinite(chance) else "."))
        worst = _average_and_worst(run)
        if worst:
            paras.append(worst)
        trend = _trend(run, order[0])
        if trend:
            paras.append(trend)
        low, _ = empirical_epsilon(headlines[order[0]])
        if run.dp_mode == "none" and math.isfinite(low) and low > 0:
            paras.append(f"In differential-privacy terms, the measured attack rules out any guarantee with &epsilon; below "
                         f"{eps(low)} (at &delta; = {esc(headlines[order[0]].get('epsilon_delta', '1e-05'))}, 95% "
                         f"confidence) for this training as configured.")
    paras.extend(_dp(run, headlines))
    paras.extend(_privacy(run))
    acc = run.final_accuracy
    if math.isfinite(acc):
        paras.append(f"Utility: the global model reaches {pct(acc)} test accuracy after {run.rounds_done} "
                     f"round{'s' if run.rounds_done != 1 else ''}.")
    if headlines:
        paras.append("These are the results of the attacks this audit ran; a stronger or better-informed attacker may "
                     "do better, so read them as lower bounds on the risk.")
    return overall, paras


__all__ = ["summarize_run"]
