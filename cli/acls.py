"""`planshift acls list|apply|passwd`: one principal per role, least privilege (docs/SECURITY.md)."""

from __future__ import annotations

import argparse
import sys

from planshift.settings import Settings


def register(sub) -> None:
    acls = sub.add_parser("acls", help="the roles' principals and least-privilege ACLs: list, apply, set passwords")
    asub = acls.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(acls))
    show = asub.add_parser("list", help="print every role's ACLs (for PLANSHIFT_TOPIC_PREFIX's topics)")
    show.add_argument("--role", action="append", default=None, help="only this role (repeatable)")
    show.set_defaults(handler=acls_list, needs_broker=False)
    apply = asub.add_parser("apply", help="create every role's ACLs on the cluster (run as a super user)",
                            description="Creates the ACLs `planshift acls list` prints; ones that exist are left as "
                                        "they are. Needs the cluster's StandardAuthorizer and a super user's "
                                        "credentials in PLANSHIFT_SASL_*.")
    apply.add_argument("--role", action="append", default=None, help="only this role (repeatable)")
    apply.set_defaults(handler=acls_apply)
    passwd = asub.add_parser("passwd", help="create a role's SCRAM-SHA-512 user or give it a new password",
                             description="Reads the new password from stdin (one line); without it, makes a random "
                                         "one and prints it once. Returns once every broker takes it (and "
                                         "refuses the old one). The role's running processes keep their "
                                         "connections; restart them with the new PLANSHIFT_SASL_PASSWORD.")
    passwd.add_argument("role", help="a role (intake, migrate, …) or a user name")
    passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    passwd.set_defaults(handler=acls_passwd)


def _roles(names):
    from planshift.errors import OperationError
    from planshift.ops.security import ROLES

    if not names:
        return list(ROLES.values())
    unknown = [n for n in names if n not in ROLES]
    if unknown:
        raise OperationError(f"unknown role {unknown[0]!r}; roles: {', '.join(ROLES)}")
    return [ROLES[n] for n in names]


def acls_list(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.security import grants

    for role in _roles(args.role):
        print(f"# {role.name}: {role.user} — {role.purpose}")
        for grant in grants(settings, role):
            print(grant.describe())
    return 0


def acls_apply(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.security import apply_acls

    roles = _roles(args.role)
    print(f"applied {apply_acls(settings, roles)} ACLs for {', '.join(r.name for r in roles)}")
    return 0


def acls_passwd(args: argparse.Namespace, settings: Settings) -> int:
    import secrets

    from planshift.ops.security import set_password, user_of

    user = user_of(args.role)
    password = sys.stdin.readline().rstrip("\n") if args.stdin else secrets.token_urlsafe(18)
    if len(password) < 12:
        from cli.args import fail

        return fail("a password needs at least 12 characters", 2)
    brokers = set_password(settings, user, password)
    taken = f", taken by {'the broker' if brokers == 1 else f'all {brokers} brokers'}" if brokers else ""
    print(f"{user}: new password set{taken}" + ("" if args.stdin else f": {password}"))
    return 0
