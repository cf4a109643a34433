"""`weldstream models`: what the registry knows about versions, and an operator's pin and rollback."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import time
from collections.abc import Callable

from weldstream.cli import _kafka_security_arguments, global_options, kafka_security
from weldstream.cli.verbs import accept_after
from weldstream.errors import CorruptVersion
from weldstream.features import REFERENCE_KEY
from weldstream.pinning import Operator, OperatorConfig
from weldstream.polarity import POLARITY_KEY, describe
from weldstream.registry import Registry, VersionRow, open_registry
from weldstream.s3_client import StoreUnavailable
from weldstream.settings import add_settings, config_from_args
from weldstream.stores import VersionStore, configured_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    _group_options(p)
    sub = p.add_subparsers(dest="models_command", required=True)
    verbs = [_verb(sub, "list", "every version: parent, strategy, per-domain mIoU; * marks the served one")]
    show = _verb(sub, "show", "one version: manifest, scores, lineage, checksum, rounds, who served it")
    show.add_argument("version", type=int)
    diff = _verb(sub, "diff", "per-domain score changes from version A to version B")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    verbs += [show, diff]
    for name, text in (("pin", "hold every server on version N until unpinned (the learner keeps learning)"),
                       ("unpin", "servers follow the newest version again"),
                       ("rollback", "pin the parent of the served version, or version N")):
        action = _verb(sub, name, text)
        if name != "unpin":
            action.add_argument("version", type=int, nargs=None if name == "pin" else "?")
        action.add_argument("--reason", default="", help="why, for the registry")
        verbs.append(action)
    accept_after(verbs, _verb_options)


def _verb(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text)


def _group_options(p: argparse.ArgumentParser) -> None:
    add_settings(p, OperatorConfig)
    _kafka_security_arguments(p)


def _verb_options(p: argparse.ArgumentParser) -> None:
    _group_options(p)
    global_options(p)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(OperatorConfig, args, kafka_security=kafka_security(args))
    store = configured_store(cfg.store, cfg.model_dir)
    registry = open_registry(cfg.registry, cfg.model_dir)
    try:
        registry.sync(store)
        command: Callable[..., int] = COMMANDS[args.models_command]
        return command(args, cfg, store, registry)
    except (ValueError, FileNotFoundError, CorruptVersion, StoreUnavailable) as exc:  # unreachable or refused too
        print(f"weldstream models {args.models_command}: {exc}")
        return 2
    finally:
        registry.close()


def _list(args: argparse.Namespace, cfg: OperatorConfig, store: VersionStore, registry: Registry) -> int:
    versions = registry.versions()
    if not versions:
        print(f"no versions in {store.root}")
        return 0
    served, pinned = store.served(), store.pinned()
    domains = sorted({d for v in versions for d in v.manifest.scores})
    rows: list[list[object]] = [["", "version", "parent", "created (UTC)", "strategy", *domains]]
    for v in versions:
        mark = ("P" if v.version == pinned else "*") if v.version == served else ""
        rows.append([mark, v.version, v.parent_version, _when(v.created_at), v.strategy or "-",
                     *(_miou(v, d) for d in domains)])
    print(_table(rows))
    print(f"\n* served now{'; P pinned' if pinned is not None else ''}; columns per domain: validation mIoU")
    return 0


def _show(args: argparse.Namespace, cfg: OperatorConfig, store: VersionStore, registry: Registry) -> int:
    row = registry.version(args.version)
    if row is None:
        raise ValueError(f"no version {args.version} in {store.root}")
    m = row.manifest
    try:
        store.load(m.version)
        checksum = f"ok (sha256 {m.sha256[:16]}…, weights match the manifest)"
    except CorruptVersion as exc:
        checksum = f"MISMATCH: {exc}"
    state = "pinned, served" if store.pinned() == m.version else "served" if store.served() == m.version else ""
    print(f"version {m.version}{f'  [{state}]' if state else ''}")
    print(f"  created    {_when(m.created_at)} UTC")
    print(f"  strategy   {m.strategy or '-'}")
    print(f"  lineage    {' <- '.join(map(str, registry.lineage(m.version)))}")
    print(f"  checksum   {checksum}")
    print(f"  model      {m.model_config}")
    offsets = ", ".join(f"{o['topic']}[{o['partition']}]@{o['offset']}" for o in m.offsets)
    print(f"  offsets    {offsets or '-'}")
    references = m.metrics.get(REFERENCE_KEY) or {}
    print(f"  metrics    {({k: v for k, v in m.metrics.items() if k not in (REFERENCE_KEY, POLARITY_KEY)})}")
    if POLARITY_KEY in m.metrics:
        print(f"  inverts    {describe(m.metrics[POLARITY_KEY])}")
    print(f"  drift refs {', '.join(sorted(references)) or '-'}")
    print("  scores")
    for domain, s in sorted(m.scores.items()):
        print(f"    {domain:<28} mIoU {s['miou']:.4f}  Dice {s['dice']:.4f}  ({int(s['samples'])} scans)")
    for r in registry.rounds(version=m.version):
        print(f"  round      {r.trainer} {r.strategy}: {r.scans} scans, {r.steps} steps in {r.duration_s:.1f} s, "
              f"compared with version {r.compared_with}")
    for span in registry.serving(version=m.version):
        until = _when(span.until) if span.until is not None else "now"
        print(f"  served by  {span.server} from {_when(span.since)} to {until}")
    return 0


def _diff(args: argparse.Namespace, cfg: OperatorConfig, store: VersionStore, registry: Registry) -> int:
    for version in (args.a, args.b):
        if registry.version(version) is None:
            raise ValueError(f"no version {version} in {store.root}")
    a, b = registry.scores(args.a), registry.scores(args.b)
    rows: list[list[object]] = [["domain", f"mIoU v{args.a}", f"mIoU v{args.b}", "change", f"Dice v{args.a}",
                                 f"Dice v{args.b}", "change"]]
    for domain in sorted(set(a) | set(b)):
        cells = [domain]
        for metric in ("miou", "dice"):
            old, new = a.get(domain, {}).get(metric), b.get(domain, {}).get(metric)
            change = f"{new - old:+.4f}" if old is not None and new is not None else "-"
            cells += [_number(old), _number(new), change]
        rows.append(cells)
    print(_table(rows))
    return 0


def _operate(args: argparse.Namespace, cfg: OperatorConfig, store: VersionStore, registry: Registry) -> int:
    operator = Operator(cfg, store, registry, cfg.actor or getpass.getuser())
    if args.models_command == "pin":
        change = asyncio.run(operator.pin(args.version, args.reason))
    elif args.models_command == "unpin":
        change = asyncio.run(operator.unpin(args.reason))
    else:
        change = asyncio.run(operator.rollback(args.version, args.reason))
    told = f"announced on {cfg.models_topic}" if cfg.kafka else "servers follow at their next store poll"
    print(f"{change.action}: served version {change.served_before} -> {change.served_now} ({told})")
    return 0


COMMANDS: dict[str, Callable[..., int]] = {"list": _list, "show": _show, "diff": _diff, "pin": _operate,
                                           "unpin": _operate, "rollback": _operate}


def _table(rows: list[list[object]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _miou(v: VersionRow, domain: str) -> str:
    score = v.manifest.scores.get(domain)
    return f"{score['miou']:.4f}" if score else "-"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
