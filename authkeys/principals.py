"""Who is calling: one shape for every way in (API key, Ethereum signature, staff session,
tasks and commands), so permissions and audit entries need not care which it was."""

from __future__ import annotations

from dataclasses import dataclass, field

from authkeys import scopes as scope_names


@dataclass(frozen=True)
class Caller:
    kind: str  # "user", "api_key", "eth" or "system"
    label: str  # username, key prefix or address: what logs and audit entries show
    scopes: frozenset[str] = field(default_factory=frozenset)
    user_id: int | None = None
    identity_id: int | None = None
    key_id: int | None = None
    is_staff: bool = False
    # Who a key belongs to (username or address); "" for every other kind of caller.
    key_owner: str = ""

    # What Django and DRF ask of request.user.
    is_authenticated = True
    is_anonymous = False
    is_active = True

    @property
    def pk(self) -> int | None:
        return self.user_id

    @property
    def identity(self) -> str:
        """Who is calling, as a person or wallet: a key's owner, else the label."""
        return self.key_owner or self.label

    def has_scope(self, scope: str) -> bool:
        return scope_names.grants(self.scopes, scope)


SYSTEM = Caller(kind="system", label="system", scopes=frozenset({scope_names.ADMIN}))


def caller_from_user(user) -> Caller:
    """A staff session holds every scope; other Django users hold none of their own."""
    return Caller(
        kind="user",
        label=user.get_username(),
        scopes=frozenset({scope_names.ADMIN}) if user.is_staff else frozenset(),
        user_id=user.pk,
        is_staff=user.is_staff,
    )


def caller_of(request) -> Caller | None:
    user = getattr(request, "user", None)
    if isinstance(user, Caller):
        return user
    if user is not None and user.is_authenticated:
        return caller_from_user(user)
    return None
