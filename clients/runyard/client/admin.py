"""`runyard admin accounts|quota|keys|priority|drain` and `runyard whoami`.

Accounts, API keys and scheduling knobs, for admins (the server refuses these
to user keys, except `whoami`). A key's secret is printed once, when it is
created; the server keeps only its hash, so a lost secret means a new key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table
from rich.text import Text

from runyard import natsauth
from runyard.client import render
from runyard.client.commands import Context
from runyard.client.errors import ClientError
from runyard.v1 import common_pb2, resources_pb2

ROLES: dict[str, common_pb2.Role.ValueType] = {
    "user": common_pb2.ROLE_USER,
    "admin": common_pb2.ROLE_ADMIN,
    "agent": common_pb2.ROLE_AGENT,
}
ROLE_NAMES: dict[int, str] = {int(value): name for name, value in ROLES.items()}


def _quota(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_parsers(
    admin_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    whoami_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    client: list[argparse.ArgumentParser],
) -> None:
    """The admin subcommands of this module, and the top-level `whoami`."""
    p = whoami_sub.add_parser("whoami", help="the account and role of your API key", parents=client)
    p.set_defaults(func=cmd_whoami)

    accounts = admin_sub.add_parser("accounts", help="create and list accounts")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", metavar="SUBCOMMAND", required=True)
    p = accounts_sub.add_parser("create", help="create an account with its plan", parents=client)
    p.set_defaults(func=cmd_accounts_create)
    p.add_argument("account_id", metavar="ID", help="lowercase letters, digits and '-'")
    p.add_argument("--name", default="", help="display name (default: the id)")
    p.add_argument("--gpu-quota", type=_quota, default=1, help="GPUs its runs may hold at once (default 1)")
    p.add_argument("--max-queued", type=_quota, default=0, help="queued runs allowed at once (default 0: no cap)")
    p.add_argument("--run-quota", type=_quota, default=0, help="CPU-only runs at once (default 0: no cap)")
    p.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="URI_PREFIX",
        help="a storage prefix it may read and write (repeatable; default s3://ID/)",
    )
    p = accounts_sub.add_parser("list", help="every account with its plan and what it uses now", parents=client)
    p.set_defaults(func=cmd_accounts_list)
    p = accounts_sub.add_parser("set", help="set an account's policy (preemption)", parents=client)
    p.set_defaults(func=cmd_accounts_set)
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument(
        "--preemptible",
        type=_boolean,
        required=True,
        metavar="true|false",
        help="whether the scheduler may stop the account's runs to give their GPUs to others (default true)",
    )

    p = admin_sub.add_parser("quota", help="change an account's plan (limits not given stay)", parents=client)
    p.set_defaults(func=cmd_quota)
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument("--gpu-quota", type=_quota, help="GPUs its runs may hold at once")
    p.add_argument("--max-queued", type=_quota, help="queued runs allowed at once (0: no cap)")
    p.add_argument("--run-quota", type=_quota, help="CPU-only runs at once (0: no cap)")

    p = admin_sub.add_parser(
        "storage", help="grant or revoke the storage prefixes an account's manifests may use", parents=client
    )
    p.set_defaults(func=cmd_storage)
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument("--allow", action="append", default=[], metavar="URI_PREFIX", help="grant (repeatable)")
    p.add_argument("--revoke", action="append", default=[], metavar="URI_PREFIX", help="take back (repeatable)")

    keys = admin_sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    p = keys_sub.add_parser("create", help="create a key and print its secret (once)", parents=client)
    p.set_defaults(func=cmd_keys_create)
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument("--role", choices=tuple(ROLES), default="user", help="user (default), admin or agent")
    p.add_argument("--agent-id", default="", help="with --role agent (required): the only agent id it may speak for")
    p.add_argument("--name", default="", help="a note to tell keys apart (laptop, ci, gpu-node-7)")
    p.add_argument(
        "--nats-nkey-out",
        metavar="FILE",
        help="with --role agent: write the agent's NATS NKey seed to FILE (mode 0600) instead of printing it",
    )
    p = keys_sub.add_parser("list", help="list keys (never their secrets)", parents=client)
    p.set_defaults(func=cmd_keys_list)
    p.add_argument("--account", default="", help="only this account's keys")
    p = keys_sub.add_parser("revoke", help="disable a key for good", parents=client)
    p.set_defaults(func=cmd_keys_revoke)
    p.add_argument("key_id", metavar="KEY_ID", help="key-... (see `runyard admin keys list`)")

    p = admin_sub.add_parser(
        "nats-config",
        help="the nats-server `authorization` block for the control plane and every agent key",
        parents=client,
    )
    p.set_defaults(func=cmd_nats_config)
    p.add_argument(
        "--control-plane-nkey",
        metavar="FILE",
        required=True,
        help="the control plane's NKey seed file (`runyard server --nats-nkey`); made if missing",
    )
    p.add_argument("--out", metavar="FILE", help="write the block to FILE instead of printing it")

    p = admin_sub.add_parser("priority", help="set an experiment's priority (higher runs first)", parents=client)
    p.set_defaults(func=cmd_priority)
    p.add_argument("experiment_id", metavar="EXPERIMENT")
    p.add_argument("priority", metavar="N", type=int)

    p = admin_sub.add_parser("drain", help="let an agent finish its runs and give it no new one", parents=client)
    p.set_defaults(func=cmd_drain)
    p.add_argument("agent_id", metavar="AGENT")
    p.add_argument("--undrain", action="store_true", help="give it runs again")


def role_name(role: int) -> str:
    return ROLE_NAMES.get(role, "none")


def _account_dict(account: resources_pb2.Account) -> dict[str, object]:
    return render.to_dict(account)


def _key_dict(key: resources_pb2.ApiKey) -> dict[str, object]:
    return {**render.to_dict(key), "role": role_name(key.role)}


def _limit(n: int) -> str:
    return str(n) if n else "-"


def cmd_whoami(args: argparse.Namespace, ctx: Context) -> int:
    me = ctx.client().whoami()
    if ctx.json:
        render.print_json({"account_id": me.account_id, "role": role_name(me.role), "key_id": me.key_id})
    else:
        ctx.line(f"account {me.account_id}, role {role_name(me.role)} (key {me.key_id}) at {ctx.settings.endpoint}")
    return 0


def cmd_accounts_create(args: argparse.Namespace, ctx: Context) -> int:
    account = ctx.client().create_account(
        args.account_id,
        args.name,
        args.gpu_quota,
        max_queued_runs=args.max_queued,
        run_quota=args.run_quota,
        storage_prefixes=args.storage,
    )
    if ctx.json:
        render.print_json(_account_dict(account))
    else:
        ctx.line(f"created account {account.id} with a quota of {account.gpu_quota} GPUs")
        ctx.line(f"its storage: {_storage(account)}")
        ctx.line(f"give it a key with: runyard admin keys create {account.id}")
    return 0


def cmd_accounts_list(args: argparse.Namespace, ctx: Context) -> int:
    accounts = list(ctx.client().list_accounts())
    if ctx.json:
        render.print_json([_account_dict(a) for a in accounts])
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = (
        "ACCOUNT",
        "NAME",
        "GPU QUOTA",
        "GPUS IN USE",
        "QUEUED",
        "MAX QUEUED",
        "RUN QUOTA",
        "PREEMPTIBLE",
        "CREATED",
    )
    for name in columns:
        table.add_column(name, no_wrap=True)
    table.add_column("STORAGE")
    for a in accounts:
        table.add_row(
            a.id,
            a.name,
            str(a.gpu_quota),
            str(a.gpus_in_use),
            str(a.runs_queued),
            _limit(a.max_queued_runs),
            _limit(a.run_quota),
            "no" if a.not_preemptible else "yes",
            render.fmt_time(a.created_at),
            _storage(a),
        )
    ctx.out.print(table)
    return 0


def _storage(account: resources_pb2.Account) -> str:
    return ", ".join(account.storage_prefixes) or "none"


def cmd_storage(args: argparse.Namespace, ctx: Context) -> int:
    if not args.allow and not args.revoke:
        raise ClientError("give at least one --allow or --revoke URI_PREFIX")
    account = ctx.client().set_account_storage(args.account_id, args.allow, args.revoke)
    if ctx.json:
        render.print_json(_account_dict(account))
    else:
        ctx.line(f"account {account.id} may read and write: {_storage(account)}")
    return 0


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def cmd_accounts_set(args: argparse.Namespace, ctx: Context) -> int:
    account = ctx.client().set_account_preemption(args.account_id, args.preemptible)
    if ctx.json:
        render.print_json(_account_dict(account))
    else:
        may = "may not" if account.not_preemptible else "may"
        ctx.line(f"account {account.id}: the scheduler {may} preempt its runs")
    return 0


def cmd_quota(args: argparse.Namespace, ctx: Context) -> int:
    if args.gpu_quota is None and args.max_queued is None and args.run_quota is None:
        raise ClientError("give at least one of --gpu-quota, --max-queued, --run-quota")
    client = ctx.client()
    current = next((a for a in client.list_accounts() if a.id == args.account_id), None)
    if current is None:
        raise ClientError(f"account {args.account_id} not found (see `runyard admin accounts list`)")
    account = client.set_quota(
        args.account_id,
        current.gpu_quota if args.gpu_quota is None else args.gpu_quota,
        max_queued_runs=current.max_queued_runs if args.max_queued is None else args.max_queued,
        run_quota=current.run_quota if args.run_quota is None else args.run_quota,
    )
    if ctx.json:
        render.print_json(_account_dict(account))
    else:
        ctx.line(
            f"account {account.id}: GPU quota {account.gpu_quota}, max queued {_limit(account.max_queued_runs)}, "
            f"run quota {_limit(account.run_quota)}"
        )
    return 0


def cmd_keys_create(args: argparse.Namespace, ctx: Context) -> int:
    if args.agent_id and args.role != "agent":
        raise ClientError("--agent-id is for agent keys: add --role agent")
    if args.role == "agent" and not args.agent_id:
        raise ClientError("an agent key speaks for one agent: give --agent-id (the agent's --agent-id)")
    if args.nats_nkey_out and args.role != "agent":
        raise ClientError("--nats-nkey-out is for agent keys: add --role agent")
    if args.nats_nkey_out and Path(args.nats_nkey_out).exists():
        raise ClientError(f"{args.nats_nkey_out} exists already: choose another --nats-nkey-out")
    # The agent's NATS user: made here, so its seed never crosses the network; the server keeps the public key.
    seed, public = natsauth.new_user_nkey() if args.role == "agent" else ("", "")
    reply = ctx.client().create_api_key(args.account_id, ROLES[args.role], args.name, args.agent_id, public)
    if seed and args.nats_nkey_out:
        natsauth.write_seed(args.nats_nkey_out, seed)
    if ctx.json:
        out: dict[str, object] = {"key": _key_dict(reply.key), "secret": reply.secret}
        if seed and not args.nats_nkey_out:
            out["nats_nkey_seed"] = seed
        render.print_json(out)
        return 0
    scope = f" for agent {reply.key.agent_id}" if reply.key.agent_id else ""
    ctx.err.print(
        f"created {args.role} key {reply.key.id} of account {reply.key.account_id}{scope}; "
        "its secret is shown this once, keep it safe:",
        markup=False,
        highlight=False,
    )
    ctx.line(reply.secret)
    if seed:
        where = f"written to {args.nats_nkey_out}" if args.nats_nkey_out else "the next line"
        ctx.err.print(
            f"its NATS user is NKey {public} (seed: {where}; give it to `runyard agent --nats-nkey FILE`); "
            "run `runyard admin nats-config` and reload nats-server so NATS knows it",
            markup=False,
            highlight=False,
        )
        if not args.nats_nkey_out:
            ctx.line(seed)
    return 0


def cmd_nats_config(args: argparse.Namespace, ctx: Context) -> int:
    """Render the users of the operator's nats-server: the control plane and each live agent key's NKey."""
    seed_file = Path(args.control_plane_nkey).expanduser()
    if not seed_file.exists():
        natsauth.write_seed(seed_file, natsauth.new_user_nkey()[0])
        ctx.err.print(f"made the control plane's NKey seed {seed_file}", markup=False, highlight=False)
    try:
        control_plane = natsauth.public_key(natsauth.read_seed(seed_file))
    except ValueError as e:
        raise ClientError(str(e)) from None
    agents = [
        (k.agent_id, k.nats_public_key)
        for k in ctx.client().list_api_keys()
        if k.role == common_pb2.ROLE_AGENT and not k.revoked and k.agent_id and k.nats_public_key
    ]
    text = natsauth.render_authorization(control_plane, agents)
    if args.out:
        out = Path(args.out).expanduser()
        staging = out.with_name(f".{out.name}.tmp")
        staging.write_text(text, encoding="utf-8")
        staging.replace(out)
        ctx.err.print(
            f"wrote the users of the control plane and {len(agents)} agent(s) to {out}; "
            "now `nats-server --signal reload`",
            markup=False,
            highlight=False,
        )
    else:
        ctx.out.file.write(text)
    return 0


def cmd_keys_list(args: argparse.Namespace, ctx: Context) -> int:
    keys = ctx.client().list_api_keys(args.account)
    if ctx.json:
        render.print_json([_key_dict(k) for k in keys])
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("KEY", "ACCOUNT", "ROLE", "AGENT", "NAME", "STATE", "CREATED"):
        table.add_column(name, no_wrap=name != "NAME")
    for k in keys:
        state = Text("revoked", style="red") if k.revoked else Text("active", style="green")
        table.add_row(
            k.id, k.account_id, role_name(k.role), k.agent_id or "-", k.name, state, render.fmt_time(k.created_at)
        )
    ctx.out.print(table)
    return 0


def cmd_keys_revoke(args: argparse.Namespace, ctx: Context) -> int:
    key = ctx.client().revoke_api_key(args.key_id)
    if ctx.json:
        render.print_json(_key_dict(key))
    else:
        ctx.line(f"revoked key {key.id} ({role_name(key.role)} of account {key.account_id})")
    return 0


def cmd_priority(args: argparse.Namespace, ctx: Context) -> int:
    ctx.client().set_experiment_priority(args.experiment_id, args.priority)
    if ctx.json:
        render.print_json({"experiment_id": args.experiment_id, "priority": args.priority})
    else:
        ctx.line(f"experiment {args.experiment_id}: priority {args.priority}")
    return 0


def cmd_drain(args: argparse.Namespace, ctx: Context) -> int:
    agent = ctx.client().drain_agent(args.agent_id, undrain=args.undrain)
    if ctx.json:
        render.print_json(render.to_dict(agent))
    elif agent.draining:
        ctx.line(f"agent {agent.id} is draining: it finishes {len(agent.run_ids)} run(s) and takes no new one")
    else:
        ctx.line(f"agent {agent.id} takes runs again")
    return 0
