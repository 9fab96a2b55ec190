"""The signing verbs of the CLI: ``testbed keygen`` (a lab's Ed25519 key pair) and ``testbed verify``
(check a bundle's signature and files before running it).

Holds ``add_sign_commands``, which registers both on the CLI's subparsers; each command takes the
parsed Namespace and returns an exit code (errors are raised as ``TestbedError``s: ``testbed.cli.main``
prints their one line). The work is ``testbed.signing``'s; this module only parses and prints, and
never prints a private key.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_sign_commands", "cmd_keygen", "cmd_verify"]


def cmd_keygen(args: argparse.Namespace) -> int:
    from testbed.signing import generate_key

    key, pub, shared = generate_key(Path(args.out), comment=args.comment)
    out = sys.stderr if args.json else sys.stdout
    print(f"wrote {key.path} (private key, mode 0600: it signs bundles; keep it to yourself, out of the bench "
          f"folder and anything shared)", file=out)
    print(f"wrote {pub} (public key: give it to everyone who runs your bundles, for --require-signed)", file=out)
    print(f"fingerprint {key.fingerprint}", file=out)
    if shared:
        print(f"warning: {shared}; move {key.path} somewhere only you read (e.g. ~/.config/hbc-testbed/)",
              file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps({"private_key": str(key.path), "public_key": str(pub),
                                     "fingerprint": key.fingerprint}) + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from testbed.signing import verify_bundle

    signer = verify_bundle(Path(args.bundle), trusted=[Path(p) for p in args.trusted])
    from testbed.bundle import load_manifest   # torch: after the signature, which needs none

    manifest = load_manifest(Path(args.bundle))
    files = sum(1 + len(s.get("alternates", ())) for s in manifest["shards"])
    out = sys.stderr if args.json else sys.stdout
    print(f"{args.bundle}: signed by {signer.describe()}, trusted by {signer.trusted_file}; manifest.json and "
          f"its {files} shard files verified", file=out)
    if args.json:
        sys.stdout.write(json.dumps({"bundle": str(args.bundle), "signer": signer.record(), "files": files}) + "\n")
    return 0


def add_sign_commands(sub: Any) -> None:
    """Register ``keygen`` and ``verify`` on ``sub`` (the CLI's ``add_subparsers`` object)."""
    p = sub.add_parser("keygen", help="make a lab's Ed25519 key pair for signing bundles (KEY and KEY.pub)")
    p.add_argument("--out", required=True, help="the private key file to create (its public key goes to OUT.pub); "
                                                "refused if either exists. Keep it out of shared folders")
    p.add_argument("--comment", help="the public key's comment (default: user@host and today's date)")
    p.add_argument("--json", action="store_true", help="print one JSON object (files, fingerprint) last on stdout")
    p.set_defaults(func=cmd_keygen)
    p = sub.add_parser("verify", help="check a bundle's signature against trusted public keys, and its files")
    p.add_argument("bundle", help="the bundle directory (manifest.json, manifest.sig)")
    p.add_argument("--trusted", action="append", required=True, metavar="PUBKEY",
                   help="a trusted public key file (KEY.pub, or a list of keys one a line); repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON object (bundle, signer) last on stdout")
    p.set_defaults(func=cmd_verify)
