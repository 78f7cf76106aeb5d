"""A deactivated owner's keys stop working on the next request, like a revoked key."""

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save
from django.dispatch import receiver

from authkeys.models import EthIdentity
from authkeys.services import keys_changed


@receiver(post_save, sender=get_user_model(), dispatch_uid="authkeys_user_saved")
def user_saved(sender, instance, created, **kwargs) -> None:
    if not created:
        keys_changed(owner_user=instance)


@receiver(post_save, sender=EthIdentity, dispatch_uid="authkeys_identity_saved")
def identity_saved(sender, instance, created, **kwargs) -> None:
    if not created:
        keys_changed(owner_identity=instance)
