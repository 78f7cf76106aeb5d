import re
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from authkeys import services
from authkeys.models import EthIdentity
from authkeys.principals import SYSTEM
from hokusai_site.errors import ApplicationError

DURATION = re.compile(r"^(\d+)([mhdw])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text)
    if match is None:
        raise CommandError(f"--expires-in takes a number and m, h, d or w (e.g. 90d); got {text!r}")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = "Issues an API key and prints it once (it is not stored and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", required=True, help="comma-separated, e.g. models:read,predict"
        )
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--user", help="username of the owning Django user")
        owner.add_argument("--address", help="Ethereum address of the owning identity")
        parser.add_argument("--rate-limit", type=int, help="requests per minute")
        parser.add_argument("--expires-in", help="e.g. 30m, 12h, 90d, 4w")
        parser.add_argument("--environment", choices=["live", "test"], default="live")

    def handle(self, *args, **options):
        owner = {}
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
            owner["owner_user_id"] = user.pk
        else:
            identity = EthIdentity.objects.filter(address__iexact=options["address"]).first()
            if identity is None:
                raise CommandError(f"no Ethereum identity with address {options['address']!r}")
            owner["owner_identity_id"] = identity.pk
        expires_at = None
        if options["expires_in"]:
            expires_at = timezone.now() + parse_duration(options["expires_in"])
        try:
            api_key, secret = services.api_key_create(
                actor=SYSTEM,
                name=options["name"],
                scopes=[s.strip() for s in options["scopes"].split(",") if s.strip()],
                environment=options["environment"],
                rate_limit_per_minute=options["rate_limit"],
                expires_at=expires_at,
                **owner,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Created API key {api_key.current_prefix} ({api_key.name}) with scopes "
            f"{', '.join(api_key.scopes)}. It is shown once, below:"
        )
        self.stdout.write(secret)
