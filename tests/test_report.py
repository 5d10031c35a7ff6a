"""Reports as a person sees them: report.html and comparison.html built from fake run directories (no Ray).

``write_fake_run`` writes a run directory built from the run directory's schema (:mod:`fedaudit.schema`: each
rounds.jsonl line a RoundLine, summary.json a RunSummary, status.json a RunStatus), with random but plausible
numbers; ``leak`` sets how far members' scores sit above non-members' (0: no leak), growing over rounds.
The Chromium tests render the pages headless (file:// URLs only, no network), check that every image loaded
and that the headline table is there, and save screenshots to test-artifacts/.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedaudit.config import Scenario
from fedaudit.data import POPULATION, TEST, Ledger
from fedaudit.errors import FedAuditError
from fedaudit.metrics import summarize
from fedaudit.rundir import atomic_save_npy, atomic_write_text, upsert_jsonl
from fedaudit import schema
from fedaudit.schema import ClientResult, RoundLine, RunStatus, RunSummary, ViewResult, ViewSummary, metrics_summary
from fedaudit.slices import slice_metrics
from fedaudit.threat_model import get_threat_model, threat_model_names

CHROMIUM = Path("/usr/bin/chromium")

# --------------------------------------------------------------------------------------------------
# A fake run directory (fedaudit/schema.py)
# --------------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def write_fake_run(path, *, seed: int = 0, clients: int = 5, rounds: int = 4, records: int = 900,
                   leak: float = 1.0, audit: bool = True, threat_models=("server", "participant"),
                   dp: dict | None = None, name: str = "fake", partition: str = "iid",
                   write_summary: bool = True, write_records: bool = True, write_clients: bool = True,
                   write_probs: bool = True, accuracy_scale: float = 1.0, state: str | None = None):
    """Write a run dir at ``path`` and return it. ``dp``: e.g. {"mode": "server", "noise_multiplier": 1.0};
    ``state``: status.json's (None: no status.json, as a run dir of an earlier version)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    overrides = {"name": name, "federation.clients": clients, "federation.rounds": rounds,
                 "federation.partition": partition, "federation.seed": seed, "audit.enabled": audit,
                 "audit.threat_models": list(threat_models)}
    for k, v in (dp or {}).items():
        overrides[f"dp.{k}"] = v
    scenario = Scenario().with_overrides({k: v for k, v in overrides.items() if k != "name"})
    scenario.name = name
    atomic_write_text(path / "scenario.toml", scenario.to_toml())

    # Ledger: 60% clients, 25% population, 15% test.
    u = rng.random(records)
    owner = np.where(u < 0.6, rng.integers(0, clients, records), np.where(u < 0.85, POPULATION, TEST))
    Ledger(owner.astype(np.int64), clients, seed).save(path / "ledger.npz")
    labels = rng.integers(0, 10, records)
    member = owner >= 0
    audited = member | (owner == POPULATION)
    # Per-client and per-class vulnerability, so the per-client/per-class views are not flat.
    client_boost = rng.uniform(0.5, 1.5, clients)
    class_boost = rng.uniform(0.6, 1.4, 10)

    final_scores = {}
    for r in range(1, rounds + 1):
        acc = accuracy_scale * (0.95 - 0.5 * np.exp(-0.8 * r)) + rng.normal(0, 0.005)
        line = RoundLine(round=r, train_loss=float(1.5 * np.exp(-0.5 * r) + 0.05), model_accuracy=float(acc),
                         loss=float(1.6 * np.exp(-0.45 * r) + 0.1), clients=list(range(clients)), failed=[],
                         non_finite_clients=[], wall_seconds=float(rng.uniform(0.5, 2.0)))
        if audit:
            for t, tm in enumerate(threat_models):
                strength = leak * (r / rounds) * (1.0 if tm == "server" else 0.5)
                shift = np.zeros(records)
                shift[member] = strength * client_boost[owner[member]] * class_boost[labels[member]]
                scores = rng.normal(0, 1, records) + shift
                final_scores[tm] = scores
                ms, ns = scores[member], scores[owner == POPULATION]
                summ = summarize(ms, ns, delta=scenario.dp.delta)
                per_client = []
                for k in range(clients):
                    sk = summarize(scores[owner == k], ns)
                    per_client.append(ClientResult(client=k, records=int((owner == k).sum()), auc=sk.auc,
                                                   tpr_at_1pct=sk.tpr_at_1pct, tpr_at_0_1pct=sk.tpr_at_0_1pct,
                                                   attack_accuracy=sk.accuracy))
                view = ViewResult(attack="whitebox", auc=summ.auc, tpr_at_1pct=summ.tpr_at_1pct,
                                  tpr_at_0_1pct=summ.tpr_at_0_1pct, attack_accuracy=summ.accuracy,
                                  summary=metrics_summary(summ.to_dict()),
                                  attacks={"whitebox": metrics_summary(summ.to_dict()),
                                           "loss": metrics_summary(summarize(ms * 0.7, ns).to_dict())},
                                  clients=per_client)
                if tm == "server":
                    view.source_inference = {"accuracy": float(rng.uniform(0.2, 0.5)), "chance": 1.0 / clients}
                line.views[tm] = view
            line.audit_seconds = float(rng.uniform(1, 3))
        upsert_jsonl(path / "rounds.jsonl", line.to_dict())
    if state is not None:
        schema.write_status(path, RunStatus(state=state, rounds=rounds, rounds_complete=rounds if state == "finished" else
                                     rounds - 1, attempts=[{"resumed": False, "state": state}]))

    if not audit:
        return path
    # Aggregated risk: a probability from the (averaged) scores.
    agg = np.mean([final_scores[tm] for tm in threat_models], axis=0)
    risk = _sigmoid(agg - 0.5)
    risk_members, risk_nonmembers = risk[member], risk[owner == POPULATION]
    if write_probs:
        atomic_save_npy(path / "member_probs.npy", risk_members)
        atomic_save_npy(path / "nonmember_probs.npy", risk_nonmembers)
    if write_records:
        # as the auditor writes it: a column per registered threat model that follows the protocol
        columns = [tm for tm in threat_model_names() if not getattr(get_threat_model(tm), "deviation", False)]
        lines = [",".join(["record", "client", "member", "label", *columns, "risk"])]
        for i in np.flatnonzero(audited):
            cells = [str(i), str(int(owner[i])), "1" if member[i] else "0", str(int(labels[i]))]
            for tm in columns:
                cells.append(f"{final_scores[tm][i]:.6g}" if tm in final_scores else "")
            cells.append(f"{risk[i]:.6g}")
            lines.append(",".join(cells))
        atomic_write_text(path / "records.csv", "\n".join(lines) + "\n")
    if write_clients:
        lines = ["client,records,auc,tpr_at_0_1pct,mean_risk,max_risk,peak_round"]
        ns = final_scores.get("server", agg)[owner == POPULATION]
        for k in range(clients):
            sk = summarize(final_scores.get("server", agg)[owner == k], ns)
            rk = risk[owner == k]
            tpr = "" if not np.isfinite(sk.tpr_at_0_1pct) else f"{sk.tpr_at_0_1pct:.6g}"
            lines.append(f"{k},{int((owner == k).sum())},{sk.auc:.6g},{tpr},{rk.mean():.6g},{rk.max():.6g},{rounds}")
        atomic_write_text(path / "clients.csv", "\n".join(lines) + "\n")
    if write_summary:
        summary = RunSummary()
        for tm in threat_models:
            ms, ns = final_scores[tm][member], final_scores[tm][owner == POPULATION]
            summary.threat_models[tm] = ViewSummary.from_dict(summarize(ms, ns, delta=scenario.dp.delta).to_dict())
            pop = owner == POPULATION
            summary.slices[tm] = slice_metrics(ms, ns, labels[member], labels[pop], -ms, -ns,
                                               rng.random(member.sum()) < 0.9, rng.random(pop.sum()) < 0.8)
        summary.source_inference = {"accuracy": 0.4, "chance": 1.0 / clients}
        if scenario.dp.mode != "none":   # as the auditor writes it: the accountant's epsilon is the run's to fill
            summary.dp = {"mode": scenario.dp.mode, "noise_multiplier": scenario.dp.noise_multiplier,
                          "clipping_norm": scenario.dp.clipping_norm, "delta": scenario.dp.delta,
                          "accountant_epsilon": None}
        schema.write_summary(path, summary)
    return path


# --------------------------------------------------------------------------------------------------
# Helpers: PNG checks and headless Chromium
# --------------------------------------------------------------------------------------------------


def png_pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)


def assert_plot_not_empty(path, step: int = 1) -> None:
    """A real figure: a PNG of a sensible size with many distinct colours (not a blank canvas)."""
    img = png_pixels(path)
    assert img.shape[0] > 150 and img.shape[1] > 250, f"{path}: {img.shape}"
    rgb = (img[::step, ::step, :3] * 255).astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert colours.size > 20, f"{path}: only {colours.size} colours: an empty plot?"
    assert img[::step, ::step, :3].std() > 0.02


PROBE = """<script>window.addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var b = document.body;
  b.setAttribute('data-images', imgs.length);
  b.setAttribute('data-broken', broken.length);
  b.setAttribute('data-external', [].slice.call(document.querySelectorAll('[src]')).filter(function (e) {
    return !/^data:/.test(e.getAttribute('src')); }).length);
  b.setAttribute('data-headline-rows', document.querySelectorAll('#headline tbody tr').length);
  b.setAttribute('data-height', document.documentElement.scrollHeight);
});</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio"]


def render_in_chromium(html_path: Path, screenshot: Path, width: int = 1200) -> dict:
    """Load the page in headless Chromium (file:// only), report what loaded, and save a full-page screenshot.

    The page is loaded once with a small probe script appended (to a copy beside it) that marks on <body>
    how many images there are, how many failed to load, how many elements point anywhere but a data URI,
    how many rows the headline table has and how tall the page is; then the original page is screenshotted
    at that height.
    """
    with tempfile.TemporaryDirectory(prefix="fa-chromium-") as user_data:
        probe = html_path.with_name(".probe-" + html_path.name)
        probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
        try:
            dom = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={user_data}",
                                  f"--window-size={width},1000", "--dump-dom", probe.as_uri()],
                                 capture_output=True, text=True, timeout=120).stdout
        finally:
            probe.unlink(missing_ok=True)
        attrs = {k: int(v) for k, v in re.findall(r'data-(images|broken|external|headline-rows|height)="(\d+)"', dom)}
        assert "height" in attrs, "Chromium did not run the page's load handler:\n" + dom[:500]
        height = min(max(attrs["height"], 800), 16000)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", f"--window-size={width},{height}",
                        f"--screenshot={screenshot}", html_path.as_uri()], capture_output=True, timeout=120)
    attrs["dom"] = dom
    return attrs


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="headless Chromium not installed (/usr/bin/chromium; apt-get install chromium)")


# --------------------------------------------------------------------------------------------------
# Fixtures: a few fake runs, built once per module
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from fedaudit.report import build_report

    base = tmp_path_factory.mktemp("runs")
    out = {
        "leaky": write_fake_run(base / "leaky", seed=1, leak=1.2, name="leaky"),
        "dp": write_fake_run(base / "dp", seed=2, leak=0.3, name="with-dp", accuracy_scale=0.95,
                             dp={"mode": "server", "noise_multiplier": 1.0, "clipping_norm": 1.0}),
        "off": write_fake_run(base / "off", seed=3, audit=False, name="audit-off"),
    }
    for d in out.values():
        build_report(d)
    return out


@pytest.fixture(scope="module")
def comparison(runs, tmp_path_factory):
    from fedaudit.report.compare import build_comparison

    return build_comparison([runs["leaky"], runs["dp"], runs["off"]], tmp_path_factory.mktemp("cmp"))


# --------------------------------------------------------------------------------------------------
# The run report
# --------------------------------------------------------------------------------------------------

PLOTS = ("utility", "risk_rounds", "clients", "client_rounds", "classes", "histogram", "roc", "roc_log")


def test_report_files_and_self_contained_html(runs):
    d = runs["leaky"]
    html = (d / "report.html").read_text(encoding="utf-8")
    for name in PLOTS:
        assert_plot_not_empty(d / "plots" / f"{name}.png")
    # one file: every image inline, nothing fetched, no script
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # the sections of the report
    for anchor in ("summary", "headline", "audited", "risk-rounds", "risk-clients", "risk-classes", "distributions",
                   "records", "top-records"):
        assert f'id="{anchor}"' in html, anchor
    assert "Honest-but-curious server" in html and "Participant (another client)" in html
    assert "not audited" not in html.lower().replace("audit.enabled = false", "")


def test_headline_numbers_match_summary_json(runs):
    d = runs["leaky"]
    summary = json.loads((d / "summary.json").read_text())
    html = (d / "report.html").read_text(encoding="utf-8")
    headline = html[html.index('id="headline"'):html.index("</table>", html.index('id="headline"'))]
    for tm in ("server", "participant"):
        s = summary["threat_models"][tm]
        assert f"{s['auc']:.3f}" in headline
        assert f"{100 * s['tpr_at_1pct']:.1f}%" in headline
        assert f"&ge; {s['epsilon_lower_ci'][0]:.3g}</strong>" in headline      # the conservative end leads
        assert f"point estimate {s['epsilon_lower']:.3g}" in headline
    # 229 non-members: 0.1% FPR is not measurable, and the report says why instead of printing a number
    assert "not measurable: 229 non-members, needs &ge; 1,000" in headline


def test_plain_language_summary_is_written_from_the_numbers(runs):
    d = runs["leaky"]
    html = (d / "report.html").read_text(encoding="utf-8")
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    clients = np.genfromtxt(d / "clients.csv", delimiter=",", names=True)
    worst = int(clients["client"][np.argmax(clients["auc"])])
    s = json.loads((d / "summary.json").read_text())["threat_models"]["server"]
    assert "Overall membership risk: high" in summary
    assert f"{s['auc']:.2f}" in summary
    assert f"client {worst}</strong>" in summary            # who is most exposed
    assert "Risk grows as training goes on" in summary       # in which rounds (the fake leak grows)
    assert "test accuracy after 4 rounds" in summary


def test_report_says_not_audited_when_the_audit_was_off(runs):
    d = runs["off"]
    html = (d / "report.html").read_text(encoding="utf-8")
    assert "Not audited" in html and "audit.enabled = false" in html
    assert 'id="headline"' in html
    assert_plot_not_empty(d / "plots" / "utility.png")
    assert not (d / "plots" / "roc.png").exists()
    assert html.count("data:image/png;base64,") == 1


def test_report_degrades_with_partial_audit_files(tmp_path):
    from fedaudit.report import build_report

    d = write_fake_run(tmp_path / "partial", seed=5, write_summary=False, write_records=False, write_clients=False,
                       write_probs=False)
    html = build_report(d).read_text(encoding="utf-8")
    assert "round 4 only" in html                                   # headline from the last round
    assert "Not audited: no per-record results" in html             # records.csv missing
    assert_plot_not_empty(d / "plots" / "clients.png")              # from the rounds' per-client results
    assert not (d / "plots" / "histogram.png").exists()


def test_plots_differ_between_runs_that_differ(tmp_path):
    from fedaudit.report import figures
    from fedaudit.report.rundata import load_run

    def draw(run_dir):
        run = load_run(run_dir)
        out = run_dir / "plots"
        paths = {"histogram": figures.plot_histogram(run, out / "histogram.png"),
                 "risk_rounds": figures.plot_risk_over_rounds(run, out / "risk_rounds.png"),
                 "clients": figures.plot_clients(run, out / "clients.png")}
        paths["roc"], _ = figures.plot_run_rocs(run, out)
        return {k: png_pixels(v) for k, v in paths.items()}

    a = draw(write_fake_run(tmp_path / "a", seed=7, leak=1.5, rounds=3, clients=3, records=500))
    b = draw(write_fake_run(tmp_path / "b", seed=7, leak=0.2, rounds=3, clients=3, records=500))
    c = draw(write_fake_run(tmp_path / "c", seed=7, leak=1.5, rounds=3, clients=3, records=500))
    for name in a:
        assert a[name].shape != b[name].shape or np.abs(a[name] - b[name]).mean() > 1e-3, name
        assert np.array_equal(a[name], c[name]), name     # the same run draws the same picture


def test_not_a_run_directory(tmp_path):
    from fedaudit.cli import main
    from fedaudit.report import build_report

    with pytest.raises(FedAuditError, match="not a run directory"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------------


def test_tensorboard_scalars(runs):
    from fedaudit.report.tensorboard import read_scalars

    files = list((runs["leaky"] / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = read_scalars(files[0])
    rounds = [json.loads(line) for line in (runs["leaky"] / "rounds.jsonl").read_text().splitlines()]
    for tag in ("utility/accuracy", "utility/loss", "server/auc", "server/tpr_at_1pct", "participant/auc",
                "participant/tpr_at_1pct"):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4], tag
    assert np.allclose([v for _, v in scalars["server/auc"]], [r["server"]["auc"] for r in rounds], atol=1e-6)
    assert "server/tpr_at_0_1pct" not in scalars    # not measurable: no scalar rather than a fake 0
    # rewriting replaces the file instead of adding a second run to TensorBoard
    from fedaudit.report.rundata import load_run
    from fedaudit.report.tensorboard import write_scalars

    write_scalars(load_run(runs["leaky"]), runs["leaky"] / "tensorboard")
    assert len(list((runs["leaky"] / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_file_reads_with_tensorflow(runs):
    """TensorFlow's own reader accepts the event files (CRCs, protobuf fields)."""
    tf = pytest.importorskip("tensorflow")
    path = next((runs["leaky"] / "tensorboard").glob("events.out.tfevents.*"))
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        for value in event.summary.value:
            seen.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert [s for s, _ in seen["server/auc"]] == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# Differential privacy: accountant epsilon beside the empirical one
# --------------------------------------------------------------------------------------------------


def test_accountant_matches_flowers_rdp_accountant():
    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    from fedaudit.dp import accountant_epsilon

    for clients, sampled, z, rounds, method, relation in (
            (10, 10, 1.0, 5, SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE),
            (50, 10, 0.8, 20, SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE)):
        flower = RdpAccountant(PrivacyConfig(target_delta=1e-5, population_size=clients, neighboring_relation=relation,
                                             sampling_method=method))
        flower.compose(GaussianPrivacyEvent(noise_multiplier=z, sample_size=sampled, population_size=clients), rounds)
        ours = accountant_epsilon(z, rounds, clients, sampled, 1e-5)
        assert ours["epsilon"] == pytest.approx(flower.get_epsilon(1e-5), rel=1e-9)
    # more noise, fewer rounds: less epsilon; no noise: no guarantee
    assert accountant_epsilon(2.0, 5, 10)["epsilon"] < accountant_epsilon(1.0, 5, 10)["epsilon"]
    assert accountant_epsilon(1.0, 2, 10)["epsilon"] < accountant_epsilon(1.0, 5, 10)["epsilon"]
    assert math.isinf(accountant_epsilon(0.0, 5, 10)["epsilon"])


def test_dp_strategies_average_clipped_updates_uniformly():
    """Flower's DP noise (z * C / m) bounds one client's influence only for a uniform average of clipped updates."""
    from fedaudit.config import scenario_from_dict
    from fedaudit.federation.strategy import UNIFORM_WEIGHT_KEY, build_strategy

    for mode in ("server", "client"):
        built = build_strategy(scenario_from_dict({"dp": {"mode": mode, "noise_multiplier": 0.5}}), 10)
        assert built.strategy.weighted_by_key == UNIFORM_WEIGHT_KEY and built.num_sampled_clients == 10
    assert build_strategy(scenario_from_dict({}), 10).weighted_by_key == "num-examples"


def test_dp_report_shows_accountant_beside_empirical_epsilon(runs):
    from fedaudit.dp import accountant_epsilon

    d = runs["dp"]
    dp = json.loads((d / "summary.json").read_text())["dp"]       # written by the report step
    assert dp["mode"] == "server" and dp["noise_multiplier"] == 1.0
    assert dp["accountant_epsilon"] == pytest.approx(accountant_epsilon(1.0, 4, 5, 5, 1e-5)["epsilon"])
    html = (d / "report.html").read_text(encoding="utf-8")
    table = html[html.index('id="dp-epsilons"'):html.index("</table>", html.index('id="dp-epsilons"'))]
    assert f"{dp['accountant_epsilon']:.3g}" in table
    assert "empirical lower bound, honest-but-curious server" in table
    assert "empirical lower bound, participant" in table
    assert "Flower's privacy accountant certifies" in html


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def test_comparison_side_by_side(runs, comparison):
    from fedaudit.report.compare import differing_settings
    from fedaudit.report.rundata import load_run

    dirs = [runs["leaky"], runs["dp"], runs["off"]]
    html = comparison.read_text(encoding="utf-8")
    assert 'id="headline"' in html and 'id="settings"' in html
    diff = differing_settings([load_run(d) for d in dirs])
    assert diff[0] == "dp.mode" and "federation.seed" in diff
    assert "dp.noise_multiplier" not in diff      # noise settings only count among runs that use DP
    plots = comparison.parent / "plots"
    for name in ("roc_server", "roc_log_server", "roc_participant", "auc_rounds_server", "tpr_rounds_server",
                 "privacy_utility", "utility", "epsilons"):
        assert_plot_not_empty(plots / f"compare_{name}.png")
    assert html.count("data:image/png;base64,") >= 9
    assert "not audited" in html                     # the audit-off run
    dp = json.loads((runs["dp"] / "summary.json").read_text())["dp"]
    assert f"accountant &epsilon; = {dp['accountant_epsilon']:.3g}" in html
    # each run's name links to its own report by a relative path (works offline, moves with the folder)
    links = re.findall(r'<a href="([^"#]+)"', html)
    assert len(links) == 3 and all(link.endswith("report.html") and not link.startswith("/") for link in links)


def test_compare_cli(runs, tmp_path):
    from fedaudit.cli import main

    dirs = [runs["leaky"], runs["off"]]
    # the CLI does the same
    assert main(["compare", *map(str, dirs), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "comparison.html").is_file()
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


# --------------------------------------------------------------------------------------------------
# Rendered in a browser, as a person sees it
# --------------------------------------------------------------------------------------------------


@needs_chromium
def test_report_and_comparison_render_in_chromium(runs, comparison, artifacts_dir):
    pages = {"report": runs["leaky"] / "report.html", "report-dp": runs["dp"] / "report.html",
             "report-not-audited": runs["off"] / "report.html", "comparison": comparison}
    for name, page in pages.items():
        shot = artifacts_dir / f"{name}.png"
        seen = render_in_chromium(page, shot)
        html = page.read_text(encoding="utf-8")
        assert seen["images"] == html.count("<img "), name
        assert seen["images"] >= 1 and seen["broken"] == 0, (name, seen["images"], seen["broken"])
        assert seen["external"] == 0, name
        assert seen["headline-rows"] >= (2 if name != "report-not-audited" else 1), name
        assert_plot_not_empty(shot, step=4)
        assert png_pixels(shot).shape[0] >= 1500, name   # the full page, not one screen


@needs_chromium
def test_chromium_probe_catches_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><table id="headline"><tbody><tr><td>x</td></tr></tbody></table>'
                    '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQD'
                    'wAEhQGAhKmMIQAAAABJRU5ErkJggg=="><img src="missing.png"></body></html>')
    seen = render_in_chromium(page, tmp_path / "broken-shot.png")
    assert seen["images"] == 2 and seen["broken"] == 1 and seen["external"] == 1


def test_report_code_imports_no_tensorflow(runs):
    """Config, metrics, risk and report import no TensorFlow (a report must build where TF is absent)."""
    import sys

    code = ("import sys; from fedaudit.report import build_report; from fedaudit.report import compare; "
            "import fedaudit.suite, fedaudit.dp; "
            f"build_report({str(runs['off'])!r}); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'ray', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------------
# How the run ended, and a threat model the report code does not name
# --------------------------------------------------------------------------------------------------


RUN_ENDINGS = {"finished": "", "failed": "; the run failed",
               "running": "; the run did not finish (still running, or killed)",
               "interrupted": "; the run was interrupted by SIGINT in round 4",
               "resumed": "; resumed 1 time"}


@pytest.mark.parametrize("state", list(RUN_ENDINGS))
def test_rounds_row_states_how_the_run_ended(tmp_path, state):
    """The report states the run's end as status.json records it, and no other end anywhere."""
    from fedaudit.report import build_report

    run = write_fake_run(tmp_path / state, rounds=4, records=400, state=state if state != "resumed" else "finished")
    status = schema.read_status(run)
    if state == "interrupted":
        status.signal, status.interrupted_in_round = "SIGINT", 4
    if state == "resumed":      # interrupted once, then resumed to the end
        status.attempts = [{"resumed": False, "state": "interrupted"}, {"resumed": True, "state": "finished"}]
    schema.write_status(run, status)
    html = build_report(run, tensorboard=False).read_text(encoding="utf-8")
    assert f"<tr><th>Rounds</th><td>4 configured, 4 recorded{RUN_ENDINGS[state]}</td></tr>" in html
    for other, ending in RUN_ENDINGS.items():
        if ending and ending != RUN_ENDINGS[state]:
            assert ending.strip("; ") not in html, other


def test_rounds_whose_audit_failed_are_named_in_the_report_and_the_console(tmp_path):
    """A round whose audit raised keeps its training line with ``audit_error``: the report's rounds row and the
    lines a finished run prints name those rounds and the error; a run without one says nothing of it; a run
    audited in no round is one `fedaudit run` ends with exit code 1."""
    from fedaudit.report import build_report
    from fedaudit.report.rundata import load_run
    from fedaudit.run import audit_failed_everywhere, summary_lines
    from fedaudit.rundir import upsert_jsonl

    run = write_fake_run(tmp_path / "failed", rounds=4, records=400)
    clean = build_report(run, tensorboard=False).read_text(encoding="utf-8")
    assert "audit failed" not in clean and not any("audit failed" in s for s in summary_lines(run))
    lines = schema.read_rounds(run / "rounds.jsonl")

    def fail(line, error):      # the round's training line and the auditor's error, without its results
        row = {k: v for k, v in line.to_dict().items() if k not in line.views}
        upsert_jsonl(run / "rounds.jsonl", {**row, "audit_error": error})

    for line in lines[1:]:
        fail(line, "InvalidArgumentError('Incompatible shapes')")
    said = "the audit failed in rounds 2-4 (InvalidArgumentError('Incompatible shapes')"
    assert any(s.startswith(said) for s in summary_lines(run))
    html = build_report(run, tensorboard=False).read_text(encoding="utf-8")
    assert "4 configured, 4 recorded; the audit failed in rounds 2-4 (InvalidArgumentError(&#x27;Incompatible" in html
    assert not audit_failed_everywhere(run)         # round 1 was audited: `fedaudit run` exits 0
    fail(lines[0], "ValueError()")
    assert audit_failed_everywhere(run)             # audited nowhere: it exits 1
    upsert_jsonl(run / "rounds.jsonl", {**lines[1].to_dict(), "audit_error": "ValueError()"})
    # round 2 audited by a later attempt (--resume) after its error: not a failed round
    assert [r for r, _ in load_run(run).audit_errors()] == [1, 3, 4] and not audit_failed_everywhere(run)


def test_a_run_whose_audit_failed_somewhere_exits_1_only_when_strict(tmp_path, capsys):
    """`fedaudit run` (and `--resume`) ends with the run's lines and exit status 0 when some rounds were audited,
    1 when none was; with ``--strict``, 1 as soon as one round's audit raised. A suite with ``--strict``: 1 when a
    combination did not finish or its audit raised somewhere."""
    import json

    from fedaudit.cli import _end_of_run, _suite_incomplete
    from fedaudit.rundir import upsert_jsonl

    run = write_fake_run(tmp_path / "suite" / "00-a", rounds=3, records=300)
    assert _end_of_run(run, True, strict=False) == 0 and _end_of_run(run, True, strict=True) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(run) and "test accuracy" in out.err
    line = schema.read_rounds(run / "rounds.jsonl")[1]
    row = {k: v for k, v in line.to_dict().items() if k not in line.views}
    upsert_jsonl(run / "rounds.jsonl", {**row, "audit_error": "ValueError()"})
    assert _end_of_run(run, True, strict=False) == 0
    assert _end_of_run(run, True, strict=True) == 1
    assert _end_of_run(run, False, strict=True) == 0       # not audited: nothing failed
    assert "the audit failed in round 2" in capsys.readouterr().err

    other = write_fake_run(tmp_path / "suite" / "01-b", rounds=3, records=300)
    cases = [{"dir": "00-a", "status": "done"}, {"dir": "01-b", "status": "done"}]
    (tmp_path / "suite" / "suite.json").write_text(json.dumps({"name": "s", "cases": cases}))
    assert _suite_incomplete(tmp_path / "suite")           # 00-a's round 2
    upsert_jsonl(run / "rounds.jsonl", line.to_dict())     # round 2 audited by a later attempt
    assert not _suite_incomplete(tmp_path / "suite")
    cases[1]["status"] = "failed"
    (tmp_path / "suite" / "suite.json").write_text(json.dumps({"name": "s", "cases": cases}))
    assert _suite_incomplete(tmp_path / "suite") and other.is_dir()


def test_the_report_of_a_run_is_built_after_its_final_status(tmp_path, monkeypatch):
    """`fedaudit run` writes status.json's final state, then the report, which says the run finished."""
    import types

    import fedaudit.federation.driver as driver
    from fedaudit.run import _execute
    from fedaudit.schema import read_status

    scenario = Scenario().with_overrides({"federation.rounds": 3, "audit.enabled": False})
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def federation(prepared, out, **kwargs):
        assert read_status(out).state == "running"
        write_fake_run(out, rounds=3, records=300, audit=False)

    monkeypatch.setattr(driver, "run_federation", federation)
    _execute(types.SimpleNamespace(scenario=scenario), run_dir, progress=False, report=True, resumed=False)
    assert read_status(run_dir).state == "finished"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<tr><th>Rounds</th><td>3 configured, 3 recorded</td></tr>" in html
    assert "did not finish" not in html


def test_a_registered_threat_model_appears_in_every_part_of_the_report(tmp_path):
    from fedaudit.report import build_comparison, build_report
    from fedaudit.report.console import run_summary
    from fedaudit.threat_model import ThreatModel, register_threat_model, unregister_threat_model

    class Snooper(ThreatModel):
        name = "snooper"
        title = "First-client snooper"
        description = "a toy adversary who sees one client's model each round"
        noun = "the first-client snooper"
        possessive = "the first-client snooper's"
        against = "Against the first-client snooper"
        color = "#117a65"
        strength = 15

    register_threat_model(Snooper)
    try:
        run = write_fake_run(tmp_path / "run", rounds=3, records=600,
                             threat_models=("server", "snooper", "participant"))
        html = build_report(run).read_text(encoding="utf-8")
        headline = html[html.index('id="headline"'):html.index("</table>", html.index('id="headline"'))]
        assert "First-client snooper" in headline and "a toy adversary who sees one client" in headline
        assert "AUC, snooper" in html                               # the rounds table and the class table
        assert "Snooper score" in html                              # the records at highest risk
        assert "the <em>snooper</em> is a toy adversary" in html    # how to read the report
        assert any("first-client snooper: AUC" in line for line in run_summary(run))
        assert_plot_not_empty(run / "plots" / "risk_rounds.png")
        out = build_comparison([run], tmp_path / "compare")
        page = out.read_text(encoding="utf-8")
        assert "<h3>First-client snooper</h3>" in page
        assert_plot_not_empty(out.parent / "plots" / "compare_roc_snooper.png")
    finally:
        unregister_threat_model(Snooper.name)


# --------------------------------------------------------------------------------------------------
# Trend sentences only where a test supports them; average and worst case
# --------------------------------------------------------------------------------------------------


def _rounds_with_aucs(path, aucs, n: int = 300):
    """A run dir whose server AUCs per round are ``aucs``, each measured on ``n`` members and ``n`` non-members."""
    run = write_fake_run(path, rounds=len(aucs), records=300, threat_models=("server",), state="finished")
    lines = schema.read_rounds(run / "rounds.jsonl")
    for line, auc in zip(lines, aucs):
        view = line.views["server"]
        view.auc = auc
        view.summary = dict(view.summary, auc=auc, n_members=n, n_nonmembers=n)
    atomic_write_text(run / "rounds.jsonl", "".join(json.dumps(line.to_dict()) + "\n" for line in lines))
    return run


def test_no_trend_is_claimed_for_aucs_within_noise(tmp_path):
    """The per-round AUCs 0.604, 0.627, 0.635, 0.611, 0.640 (300 + 300 records each) overlap: no trend."""
    from fedaudit.report.narrative import _trend
    from fedaudit.report.rundata import load_run

    text = _trend(load_run(_rounds_with_aucs(tmp_path / "flat", [0.604, 0.627, 0.635, 0.611, 0.640])), "server")
    assert text.startswith("No trend over rounds is supported"), text
    assert "grows" not in text and "leak more" not in text


def test_a_trend_is_claimed_when_the_test_supports_it(tmp_path):
    from fedaudit.report.narrative import _trend
    from fedaudit.report.rundata import load_run

    up = _trend(load_run(_rounds_with_aucs(tmp_path / "up", [0.55, 0.60, 0.66, 0.71, 0.77])), "server")
    assert up.startswith("Risk grows as training goes on") and "p = " in up, up
    down = _trend(load_run(_rounds_with_aucs(tmp_path / "down", [0.77, 0.71, 0.66, 0.60, 0.55])), "server")
    assert down.startswith("Risk falls"), down
    peak = _trend(load_run(_rounds_with_aucs(tmp_path / "peak", [0.55, 0.70, 0.80, 0.70, 0.55])), "server")
    assert peak.startswith("Risk peaks in round 3"), peak


def test_trend_test_rejects_at_its_level_on_noise():
    """Under no trend the slope test claims one in about alpha of the cases (conservative: at most alpha + noise)."""
    from fedaudit.metrics import trend_test

    rng = np.random.default_rng(0)
    hits = sum(trend_test(np.arange(1, 6), 0.6 + rng.normal(0, 0.02, 5), np.full(5, 0.02)).significant
               for _ in range(2000))
    assert 0.03 < hits / 2000 < 0.07


def test_summary_states_the_average_and_the_worst_case(runs):
    html = (runs["leaky"] / "report.html").read_text(encoding="utf-8")
    assert "the 1% most exposed records" in html
    assert "Over the 5 clients, the per-client AUC averages" in html
    assert "Why these thresholds." in html


def test_many_clients_read_as_a_distribution_and_the_most_exposed(tmp_path):
    """With thousands of clients the report shows the AUC's distribution and the most exposed clients, not a bar
    and a table row per client; the narrative names a few small clients, not all of them."""
    from fedaudit.report import figures
    from fedaudit.report.narrative import _clients
    from fedaudit.report.rundata import RunData
    from fedaudit.report.run_report import clients_section

    n = 5000
    rng = np.random.default_rng(0)
    auc = np.clip(0.55 + 0.05 * rng.standard_normal(n), 0.3, 1.0)
    auc[1234] = 0.97
    cols = {"client": np.arange(n, dtype=float), "records": np.full(n, 8.0), "auc": auc,
            "tpr_at_0_1pct": np.full(n, np.nan), "mean_risk": auc, "max_risk": auc, "peak_round": np.ones(n)}
    run = RunData(path=tmp_path, clients=cols)
    path = figures.plot_clients(run, tmp_path / "clients.png")
    assert path is not None and path.stat().st_size > 0
    html = clients_section(run, {"clients": path})
    assert html.count("<tr") <= figures.MOST_EXPOSED + 2                 # the header and the most exposed
    assert "5,000 clients" in html and "median" in html and ">1234<" in html
    text = _clients(run)
    assert "client 1234" in text and "and 4,990 more" in text and text.count("client ") < 20
