"""A deactivated owner's keys stop working on the next request, like a revoked key."""

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from authkeys.models import ApiKey, EthIdentity
from authkeys.services import recache_key


def _recache_keys_of(**owner) -> None:
    key_ids = list(ApiKey.objects.filter(**owner).values_list("pk", flat=True))

    def recache_all() -> None:
        for key_id in key_ids:
            recache_key(key_id)

    transaction.on_commit(recache_all)


@receiver(post_save, sender=get_user_model(), dispatch_uid="authkeys_user_saved")
def user_saved(sender, instance, created, **kwargs) -> None:
    if not created:
        _recache_keys_of(owner_user=instance)


@receiver(post_save, sender=EthIdentity, dispatch_uid="authkeys_identity_saved")
def identity_saved(sender, instance, created, **kwargs) -> None:
    if not created:
        _recache_keys_of(owner_identity=instance)
