"""A deactivated owner's keys stop working on the next request, like a revoked key."""

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save
from django.dispatch import receiver

from authkeys.models import EthIdentity
from authkeys.services import keys_changed

# What a key's facts hold of its user; a save of other fields only (e.g. last_login at every
# admin login) changes nothing a key needs.
USER_FIELDS_KEYS_USE = frozenset({"is_active", "is_staff", "username"})


@receiver(post_save, sender=get_user_model(), dispatch_uid="authkeys_user_saved")
def user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    if created or (update_fields is not None and not USER_FIELDS_KEYS_USE & update_fields):
        return
    keys_changed(owner_user=instance)


@receiver(post_save, sender=EthIdentity, dispatch_uid="authkeys_identity_saved")
def identity_saved(sender, instance, created, **kwargs) -> None:
    if not created:
        keys_changed(owner_identity=instance)
