from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from authkeys.principals import caller_of


class HasScopes(BasePermission):
    """Checks the scopes a view declares: `required_scopes = {"GET": "keys:manage", ...}`.

    Unauthenticated callers fail here too, and DRF turns that into 401.
    """

    def has_permission(self, request, view) -> bool:
        caller = caller_of(request)
        if caller is None:
            return False
        needed = view.required_scopes[request.method]
        if not caller.has_scope(needed):
            raise exceptions.PermissionDenied(
                detail=f"This needs the {needed} scope.", code="insufficient_scope"
            )
        return True


class CanManageKeys(HasScopes):
    """keys:manage, or an Ethereum sign-in managing its own keys: a wallet may issue itself a
    key (with at most its own scopes) so its scripts need not sign every request."""

    def has_permission(self, request, view) -> bool:
        caller = caller_of(request)
        if caller is not None and caller.kind == "eth":
            return True
        return super().has_permission(request, view)
