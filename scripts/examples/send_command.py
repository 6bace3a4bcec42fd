#!/usr/bin/env python3
"""Send one gateway command to a Titanium Cluster's control socket (REQ/REP, DESIGN.md 4.3).

It needs only pyzmq. A request is one JSON object: ``op`` (3 presence update,
4 voice state update, 8 request guild members, 31 request soundboard sounds,
43 request channel info), ``d``, and one target: ``"shard_id": n``,
``"guild_id": "snowflake"`` or ``"all": true``. The reply is ``{"ok": true,
"shard_ids": [...]}`` or ``{"ok": false, "error": "why"}``.

    # set the bot's presence on every shard
    python3 scripts/examples/send_command.py --all presence idle "Watching the shards"
    # request a guild's members on the guild's own shard
    python3 scripts/examples/send_command.py --guild 41771983423143937 members
    # or any request as JSON
    python3 scripts/examples/send_command.py --json '{"op": 3, "d": {...}, "shard_id": 0}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import zmq


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    if args.json:
        request: dict[str, Any] = json.loads(args.json)
        return request
    if args.command == "presence":
        activities = [{"name": args.text, "type": 0}] if args.text else []
        request = {
            "op": 3,
            "d": {"since": None, "activities": activities, "status": args.status, "afk": False},
        }
    elif args.command == "members":
        if args.guild is None:
            raise SystemExit("members needs --guild")
        request = {"op": 8, "d": {"guild_id": args.guild, "query": "", "limit": 0}}
    else:
        raise SystemExit("give a command (presence, members) or --json")
    if args.all:
        request["all"] = True
    elif args.shard is not None:
        request["shard_id"] = args.shard
    elif args.guild is not None:
        request["guild_id"] = args.guild
    else:
        raise SystemExit("give a target: --all, --shard N or --guild ID")
    return request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", default="tcp://127.0.0.1:5556", help="the control endpoint")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--all", action="store_true", help="every shard of the cluster")
    target.add_argument("--shard", type=int, help="one shard")
    parser.add_argument("--guild", help="the guild's shard (and the guild of members)")
    parser.add_argument("--json", help="send this request as is")
    parser.add_argument("command", nargs="?", choices=["presence", "members"])
    parser.add_argument(
        "status", nargs="?", default="online", help="presence: online, idle, dnd, invisible"
    )
    parser.add_argument("text", nargs="?", default="", help="presence: the activity name")
    args = parser.parse_args()
    request = build_request(args)

    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(args.control)
    try:
        req.send(json.dumps(request).encode())
        if not req.poll(int(args.timeout * 1000)):
            print(f"no reply from {args.control} within {args.timeout} s", file=sys.stderr)
            return 2
        reply = json.loads(req.recv())
    finally:
        req.close()
        context.term()
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
