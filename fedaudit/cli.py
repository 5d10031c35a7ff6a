"""`fedaudit run | frontier | audit-model | report | compare | bench`. Bad input: one line on standard error, exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from pathlib import Path

from fedaudit.errors import ConfigError, FedAuditError
from fedaudit.federation.runtime import quiet_environment
from fedaudit.quiet import quiet_tensorflow
from fedaudit.interrupt import Interrupted, signals_raise

BENCHES = ("federation", "signals", "attacks", "auditor", "scale")


def _parse_set(items: list[str]) -> dict:
    """``--set federation.rounds=3`` (values in TOML syntax; bare words are strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set federation.rounds=3")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def cmd_run(args) -> int:
    from fedaudit.config import load_scenario, read_toml

    if args.resume:
        given = [flag for flag, value in (("a scenario file", args.scenario), ("--rounds", args.rounds),
                                          ("--clients", args.clients), ("--seed", args.seed),
                                          ("--address", args.address), ("--out", args.out), ("--set", args.set))
                 if value]
        if given:
            raise ConfigError(f"--resume {args.resume}: the run continues with the scenario it was started with "
                              f"(RUN_DIR/scenario.toml); drop {', '.join(given)}")
        from fedaudit.run import resume_run

        run_dir = resume_run(args.resume, progress=not args.quiet)
        scenario = load_scenario(run_dir / "scenario.toml", run_dir_file=True)
        return _end_of_run(run_dir, scenario.audit.enabled, args.strict)
    if not args.scenario:
        raise ConfigError("run: name a scenario or suite TOML file (or --resume RUN_DIR)")
    overrides = {"federation.rounds": args.rounds, "federation.clients": args.clients,
                 "federation.seed": args.seed, "ray.address": args.address}
    overrides.update(_parse_set(args.set))
    if "suite" in read_toml(args.scenario):
        from fedaudit.suite import run_suite

        out = run_suite(args.scenario, out=args.out, overrides=overrides, progress=not args.quiet)
        print(out)
        return 1 if args.strict and _suite_incomplete(out) else 0
    from fedaudit.run import run_scenario

    scenario = load_scenario(args.scenario, overrides)
    run_dir = run_scenario(scenario, out=args.out, progress=not args.quiet)
    return _end_of_run(run_dir, scenario.audit.enabled, args.strict)


def _end_of_run(run_dir: Path, audited: bool, strict: bool) -> int:
    """A run's (or a resumed run's) last lines and exit status: 1 when the audit raised in every round (trained
    and reported, but no risk measured, which a script must see), or, with ``--strict``, in any round."""
    from fedaudit.run import audit_failed_everywhere, audit_failed_rounds

    report = run_dir / "report.html"
    _tell(run_summary_lines(run_dir, report if report.is_file() else None))
    print(run_dir)
    if not audited:
        return 0
    return 1 if audit_failed_everywhere(run_dir) or (strict and audit_failed_rounds(run_dir)) else 0


def _suite_incomplete(out: Path) -> bool:
    """Whether a combination of the suite in ``out`` did not finish, or its audit raised in some round."""
    import json

    from fedaudit.run import audit_failed_rounds

    cases = json.loads((out / "suite.json").read_text(encoding="utf-8")).get("cases", [])
    return any(case.get("status") not in ("done", "reused") or audit_failed_rounds(out / case["dir"])
               for case in cases)


def run_summary_lines(run_dir, report) -> list[str]:
    """The end-of-run lines (the report package reads the run dir; a failure there must not fail the run)."""
    try:
        from fedaudit.report.console import run_summary

        return run_summary(run_dir, report)
    except (ImportError, FedAuditError, OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("no summary of %s: %s", run_dir, exc)
        return []


def _tell(lines: list[str]) -> None:
    """A few lines for the person at the terminal, on standard error (standard output stays machine-readable)."""
    for line in lines:
        print(f"fedaudit: {line}", file=sys.stderr)


def cmd_frontier(args) -> int:
    from fedaudit.frontier import run_frontier

    overrides = {"federation.rounds": args.rounds, "federation.clients": args.clients,
                 "federation.seed": args.seed, "ray.address": args.address}
    overrides.update(_parse_set(args.set))
    out = run_frontier(args.file, out=args.out, target=args.target, overrides=overrides, repeats=args.repeats,
                       mode=args.mode, progress=not args.quiet)
    _tell([f"frontier: {out / 'frontier.html'}"])
    print(out)
    return 0


def cmd_audit_model(args) -> int:
    from fedaudit.model_audit import DEFAULT_ATTACKS, ModelAuditSettings, run_model_audit

    given = args.attacks or [",".join(DEFAULT_ATTACKS)]
    attacks = [a.strip() for item in given for a in item.split(",") if a.strip()]
    settings = ModelAuditSettings(attacks=attacks, reference_models=args.reference_models,
                                  attack_fraction=args.attack_fraction, folds=args.folds, epochs=args.epochs,
                                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                                  optimizer=args.optimizer, seed=args.seed, parallel=args.parallel)
    file_options = {} if args.format == "auto" else {"format": args.format}
    run_dir = run_model_audit(args.model, args.members, args.nonmembers, args.population, args.out,
                              settings=settings, file_options=file_options,
                              sensitive_attribute=args.sensitive_attribute)
    import json

    from fedaudit.report.console import model_lines

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    _tell(model_lines(summary, run_dir / "report.html"))
    print(run_dir)
    return 0


def cmd_report(args) -> int:
    from fedaudit.report import build_report

    print(build_report(args.run_dir))
    return 0


def cmd_compare(args) -> int:
    from fedaudit.report.compare import build_comparison

    print(build_comparison(args.run_dirs, args.out))
    return 0


def cmd_bench(args) -> int:
    import importlib

    module = importlib.import_module(f"fedaudit.bench.{args.what}")
    if args.peer is not None and args.what != "attacks":
        raise ConfigError(f"--peer: only `fedaudit bench attacks` compares against a peer library, not {args.what}")
    if args.targets is not None and args.peer is None:
        raise ConfigError("--targets: draws targets for the peer comparison; use it with --peer art")
    if args.model is not None and args.what != "scale":
        raise ConfigError(f"--model: only `fedaudit bench scale` takes a model, not {args.what}")
    extra = {} if args.peer is None else {"peer": args.peer, "targets": args.targets, "seed": args.seed,
                                          "family": args.family}
    if args.model is not None:
        extra["model"] = args.model
    module.run(json_path=args.json, quick=args.quick, **extra)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedaudit", description="Membership-inference risk audits for federated learning.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scenario (or a suite of scenarios) and write a run directory")
    r.add_argument("scenario", nargs="?", help="a scenario or suite TOML file")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or killed run from its last "
                                                       "complete round")
    r.add_argument("--rounds", type=int, help="override federation.rounds")
    r.add_argument("--clients", type=int, help="override federation.clients")
    r.add_argument("--seed", type=int, help="override federation.seed")
    r.add_argument("--address", help="join the Ray cluster at this address instead of starting a local Ray")
    r.add_argument("--out", help="the run directory (default: runs/<scenario>-<timestamp>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any key, e.g. audit.enabled=true")
    r.add_argument("--strict", action="store_true", help="exit with 1 when the audit raised in any round (or, for "
                                                         "a suite, any combination failed), not only in every one")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    f = sub.add_parser("frontier", help="which defence, at which strength, meets a risk target, at what accuracy")
    f.add_argument("file", help="a scenario TOML file, or a frontier file with a [frontier] table")
    f.add_argument("--target", help="the risk target, e.g. 'server.tpr_at_1pct <= 0.02' (default: the file's, "
                                    "else that one)")
    f.add_argument("--repeats", type=int, help="seeds per configuration (default: the file's, else 1)")
    f.add_argument("--mode", choices=("sequential", "ray"), help="run one after another, or as Ray tasks")
    f.add_argument("--rounds", type=int, help="override federation.rounds")
    f.add_argument("--clients", type=int, help="override federation.clients")
    f.add_argument("--seed", type=int, help="override federation.seed (the first seed)")
    f.add_argument("--address", help="the Ray cluster to submit the runs to (with --mode ray)")
    f.add_argument("--out", help="the frontier folder (default: runs/frontier-<scenario>-<timestamp>); run again "
                                 "into it to resume")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any scenario key for every run")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_frontier)

    a = sub.add_parser("audit-model", help="audit one saved Keras model on its training records and others")
    a.add_argument("model", metavar="MODEL.keras", help="the trained model, saved with model.save('MODEL.keras')")
    a.add_argument("--members", required=True, metavar="FILE", help="records the model trained on")
    a.add_argument("--nonmembers", required=True, metavar="FILE", help="records from the same source it never saw")
    a.add_argument("--population", metavar="FILE",
                   help="more records it never saw: calibrate the population attack, train reference models")
    a.add_argument("--format", default="auto", choices=("auto", "npz", "csv", "privacy-meter"),
                   help="file format (auto: .npz, .csv, .txt / .npy as ML Privacy Meter wrote them)")
    a.add_argument("--attacks", action="append", metavar="A,B",
                   help="attacks, as in [audit] attacks (default: whitebox,blackbox,loss)")
    a.add_argument("--reference-models", type=int, default=0, metavar="N",
                   help="reference models for reference, lira-*, rmia-* (as [audit] reference_models)")
    a.add_argument("--attack-fraction", type=float, default=0.5, help="share of members the adversary knows")
    a.add_argument("--folds", type=int, default=5, help="cross-fitting folds")
    a.add_argument("--epochs", type=int, default=20, help="reference models' training epochs")
    a.add_argument("--batch-size", type=int, default=64, help="reference models' batch size")
    a.add_argument("--learning-rate", type=float, default=1e-3, help="reference models' learning rate")
    a.add_argument("--optimizer", default="adam", help="reference models' optimizer")
    a.add_argument("--parallel", action="store_true", help="train reference models as tasks on a local Ray")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--sensitive-attribute", type=int, metavar="COLUMN",
                   help="also infer this feature column through the model, against imputation from the others")
    a.add_argument("--out", help="the run directory (default: runs/<model>-audit-<timestamp>)")
    a.set_defaults(func=cmd_audit_model)

    rep = sub.add_parser("report", help="(re)build report.html and plots from a run directory")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="compare existing run directories side by side")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", required=True, help="folder for comparison.html")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="benchmarks: ratios measured in one command")
    b.add_argument("what", choices=BENCHES)
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--quick", action="store_true", help="a smaller workload (for smoke tests)")
    b.add_argument("--peer", choices=("art",), help="attacks: fedaudit's attacks beside a peer library's "
                                                  "(art: IBM ART, the bench extra)")
    b.add_argument("--targets", type=int, help="attacks --peer: draw this many targets of random seeds from "
                                               "--family and pool them")
    b.add_argument("--seed", type=int, default=0, help="attacks --peer --targets: the seed the targets are drawn with")
    b.add_argument("--family", default="mixed", choices=("tutorial", "purchase", "longtail", "mixed"),
                   help="attacks --peer --targets: tutorial (the tutorial's shape, fresh seeds), purchase (feature and "
                        "class counts, noise, widths, epochs around it), longtail (Zipf subgroups, label noise) "
                        "or mixed (half purchase, half longtail)")
    b.add_argument("--model", choices=("mlp", "cnn"), help="scale: the workload's model (mlp on synthetic purchase "
                                                           "data, the default; cnn on digits as 8x8 images)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None, exit_at_once: bool = False) -> int:
    """The command line. ``exit_at_once`` (the ``fedaudit`` command): after a signal, end the process as soon
    as the run directory says where it stopped."""
    args = build_parser().parse_args(argv)
    quiet_tensorflow(verbose=args.verbose)     # before anything imports TensorFlow
    quiet_environment()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:   # TensorFlow's Python warnings (retracing, deprecations) are for developers; -v shows them
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        with signals_raise():
            return args.func(args)
    except FedAuditError as exc:
        print(f"fedaudit: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"fedaudit: interrupted by {exc.signal_name}{exc.detail}; files written so far are kept",
              file=sys.stderr)
        # Everything is written (atomically) and Ray is shut down. Exit now: the interpreter's teardown of
        # TensorFlow and Ray takes seconds, and after a second signal threads of the runtime may still wait on
        # Ray and would never be joined.
        if exit_at_once:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedaudit: interrupted; files written so far are kept", file=sys.stderr)
        return 130


def entry_point() -> int:
    return main(exit_at_once=True)


if __name__ == "__main__":
    sys.exit(entry_point())
